// Host-side check of the plugin glue without TensorRT's library or a GPU: compiled against
// TensorRT's headers with the plugin sources, stub launchers (recording their arguments and
// returning a chosen status) and a stub ::getLogger capturing messages. Driven by
// tests/plugins/test_plugin_host.py; prints "PASS <n>" or the first failure and exits 1.
#include <NvInferRuntime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/status.h"
#include "kvAttention/kvAttentionKernel.h"
#include "w4a4Gemm/w4a4GemmKernel.h"

using namespace nvinfer1;

// ---- stubs --------------------------------------------------------------------------------------
namespace {
struct CaptureLogger : ILogger {
  std::string last;
  void log(Severity, AsciiChar const* msg) noexcept override { last = msg; }
} gLogger;
int gStatus = LOWBIT_OK;     // what every stub launcher returns
int gM = -1, gN = -1, gK = -1, gT = -1, gB = -1;
void const* gCodes = nullptr;
size_t gWsBytes = 0;
int gFlags = -1;
int gChecks = 0;

#define EXPECT(cond)                                                          \
  do {                                                                        \
    ++gChecks;                                                                \
    if (!(cond)) {                                                            \
      std::printf("FAIL line %d: %s (last log: %s)\n", __LINE__, #cond,       \
                  gLogger.last.c_str());                                      \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)
}  // namespace

extern "C" ILogger* getLogger() noexcept { return &gLogger; }
extern "C" const char* lowbit_status_string(int s) { return s ? "DIVISIBILITY_STUB" : "OK"; }
extern "C" const char* lowbit_last_cuda_error(void) { return ""; }
extern "C" int lowbit_rmsnorm_quantize_int8(const void*, int, const void*, float, const float*,
                                            int M, int K, void*, float*, void*) {
  gM = M, gK = K;
  return gStatus;
}
extern "C" int lowbit_atom_quantize(const void*, int, const void*, const int*, float, int M, int K,
                                    int, int, float, void*, void*, void*, void*, void*) {
  gM = M, gK = K;
  return gStatus;
}
extern "C" int lowbit_w8a8_gemm(const void*, const void*, int, const void*, const void*, void*,
                                int M, int N, int K, int, void*) {
  gM = M, gN = N, gK = K;
  return gStatus;
}
extern "C" int lowbit_w4a4_gemm(const void*, const void*, const void*, const void*, const void*,
                                const void*, const void*, const void*, void*, int M, int N, int Kn,
                                int, int, int, int flags, void*, size_t bytes, void*) {
  gM = M, gN = N, gK = Kn, gFlags = flags, gWsBytes = bytes;
  return gStatus;
}
extern "C" size_t lowbit_w4a4_gemm_workspace_size(int M, int N, int Kn, int Ko, int G) {
  return G == 128 ? size_t(M) * size_t(Kn + Ko) + size_t(N) : 0;  // a stand-in that grows with M
}
extern "C" int lowbit_kv4_rope_append(const void*, const int*, const int*, int T, int B, const int*,
                                      const float*, const lowbitKv4Layout*, void* codes, void*,
                                      void*, void*) {
  gT = T, gB = B, gCodes = codes;
  return gStatus;
}
extern "C" size_t lowbit_kv4_attention_workspace(int T, int B, const lowbitKv4Layout*) {
  return T == B ? size_t(1000) * size_t(B) : 0;  // decode scratch only, as the kernel header says
}
extern "C" int lowbit_kv4_attention(const void*, const int*, const int*, int, int, const int*,
                                    const lowbitKv4Layout*, const void*, const void*, void*, void*,
                                    size_t bytes, void*) {
  gWsBytes = bytes;
  return gStatus;
}
extern "C" int lowbit_kv4_rope_append_attention(const void*, const int*, const int*, int T, int B,
                                                const int*, const float*, const lowbitKv4Layout*,
                                                void* codes, void*, void*, void*, void*,
                                                size_t bytes, void*) {
  gT = T, gB = B, gCodes = codes, gWsBytes = bytes;  // the plugin's one call (append + attention)
  return gStatus;
}
extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(ILoggerFinder* finder);

// ---- helpers ------------------------------------------------------------------------------------
namespace {
struct Fields {
  std::vector<int32_t> ints;
  std::vector<float> floats;
  std::vector<PluginField> f;
  Fields() { ints.reserve(32), floats.reserve(32); }
  Fields& i(char const* n, int32_t v) {
    ints.push_back(v);
    f.emplace_back(n, &ints.back(), PluginFieldType::kINT32, 1);
    return *this;
  }
  Fields& fl(char const* n, float v) {
    floats.push_back(v);
    f.emplace_back(n, &floats.back(), PluginFieldType::kFLOAT32, 1);
    return *this;
  }
  PluginFieldCollection fc() const { return {int32_t(f.size()), f.data()}; }
};

IPluginCreatorV3One* creator(char const* name) {
  int32_t n = 0;
  auto list = getCreators(n);
  for (int32_t k = 0; k < n; ++k) {
    auto* c = static_cast<IPluginCreatorV3One*>(list[k]);
    if (std::strcmp(c->getPluginName(), name) == 0) return c;
  }
  return nullptr;
}

IPluginV3* make(char const* name, Fields const& f) {
  auto fc = f.fc();
  return creator(name)->createPlugin(name, &fc, TensorRTPhase::kBUILD);
}

Dims dims(std::vector<int64_t> v) {
  Dims d{};
  d.nbDims = int32_t(v.size());
  for (size_t k = 0; k < v.size(); ++k) d.d[k] = v[k];
  return d;
}

std::vector<DynamicPluginTensorDesc> descs(std::vector<std::pair<DataType, Dims>> const& v) {
  std::vector<DynamicPluginTensorDesc> out(v.size());
  for (size_t k = 0; k < v.size(); ++k) {
    out[k].desc.type = v[k].first;
    out[k].desc.format = TensorFormat::kLINEAR;
    out[k].desc.dims = v[k].second;
    out[k].min = out[k].opt = out[k].max = v[k].second;
  }
  return out;
}

template <typename T>
T* cap(IPluginV3* p, PluginCapabilityType t) {
  return static_cast<T*>(p->getCapabilityInterface(t));
}

// Serialize, recreate from the serialized fields, serialize again: identical values.
void roundTrip(char const* name, IPluginV3* p) {
  auto* rt = cap<IPluginV3OneRuntime>(p, PluginCapabilityType::kRUNTIME);
  PluginFieldCollection const* a = rt->getFieldsToSerialize();
  EXPECT(a != nullptr && a->nbFields == creator(name)->getFieldNames()->nbFields);
  IPluginV3* q = creator(name)->createPlugin(name, a, TensorRTPhase::kRUNTIME);
  EXPECT(q != nullptr);
  PluginFieldCollection const* b =
      cap<IPluginV3OneRuntime>(q, PluginCapabilityType::kRUNTIME)->getFieldsToSerialize();
  EXPECT(b->nbFields == a->nbFields);
  for (int32_t k = 0; k < a->nbFields; ++k) {
    EXPECT(std::strcmp(a->fields[k].name, b->fields[k].name) == 0);
    EXPECT(std::memcmp(a->fields[k].data, b->fields[k].data, 4) == 0);
  }
  delete q;
}
}  // namespace

int main() {
  // Registry list: five creators, namespace lowbit, version 1.
  int32_t n = 0;
  getCreators(n);
  EXPECT(n == 5);
  for (char const* name : {"LowbitQuantInt8", "LowbitAtomQuant", "LowbitW8A8Gemm",
                           "LowbitW4A4Gemm", "LowbitKv4Attention"}) {
    EXPECT(creator(name) != nullptr);
    EXPECT(std::strcmp(creator(name)->getPluginNamespace(), "lowbit") == 0);
    EXPECT(std::strcmp(creator(name)->getPluginVersion(), "1") == 0);
  }

  // ---- field errors ----
  EXPECT(make("LowbitW8A8Gemm", Fields()) == nullptr);
  EXPECT(gLogger.last.find("required int field 'per_token' is missing") != std::string::npos);
  EXPECT(make("LowbitW8A8Gemm", Fields().i("per_token", 1).i("typo", 1)) == nullptr);
  EXPECT(gLogger.last.find("unknown field 'typo'") != std::string::npos);
  EXPECT(make("LowbitW8A8Gemm", Fields().fl("per_token", 1.f)) == nullptr);
  EXPECT(gLogger.last.find("must be an integer (kINT32), found kFLOAT32") != std::string::npos);
  EXPECT(make("LowbitQuantInt8", Fields().i("norm", 1).i("static", 0)) == nullptr);
  EXPECT(gLogger.last.find("'eps'") != std::string::npos);
  EXPECT(make("LowbitW4A4Gemm", Fields().i("group_size", 96)) == nullptr);
  EXPECT(gLogger.last.find("LowbitW4A4Gemm::createPlugin") != std::string::npos);

  // ---- QuantInt8: I/O count follows the fields ----
  {
    IPluginV3* p = make("LowbitQuantInt8", Fields().i("norm", 0).i("static", 1));
    EXPECT(p != nullptr);
    auto* b = cap<IPluginV3OneBuildV2>(p, PluginCapabilityType::kBUILD);
    EXPECT(b->getNbOutputs() == 1);
    roundTrip("LowbitQuantInt8", p);
    delete p;
    p = make("LowbitQuantInt8", Fields().i("norm", 1).i("static", 0).fl("eps", 1e-5f));
    b = cap<IPluginV3OneBuildV2>(p, PluginCapabilityType::kBUILD);
    EXPECT(b->getNbOutputs() == 2);
    auto io = descs({{DataType::kHALF, dims({-1, 4096})}, {DataType::kHALF, dims({4096})},
                     {DataType::kINT8, dims({-1, 4096})}, {DataType::kFLOAT, dims({-1})}});
    for (int32_t pos = 0; pos < 4; ++pos) EXPECT(b->supportsFormatCombination(pos, io.data(), 2, 2));
    io[0].desc.type = DataType::kBF16;
    EXPECT(!b->supportsFormatCombination(0, io.data(), 2, 2));
    io[0].desc.type = DataType::kHALF;
    EXPECT(b->configurePlugin(io.data(), 2, io.data() + 2, 2) == 0);
    io[1].desc.dims = dims({4000});
    EXPECT(b->configurePlugin(io.data(), 2, io.data() + 2, 2) == -1);
    EXPECT(gLogger.last.find("'gamma' dimension 0 must be K") != std::string::npos);
    roundTrip("LowbitQuantInt8", p);
    delete p;
  }

  // ---- W8A8: dtypes, shapes, enqueue and status mapping ----
  {
    IPluginV3* p = make("LowbitW8A8Gemm", Fields().i("per_token", 1));
    auto* b = cap<IPluginV3OneBuildV2>(p, PluginCapabilityType::kBUILD);
    auto* r = cap<IPluginV3OneRuntime>(p, PluginCapabilityType::kRUNTIME);
    DataType in[4] = {DataType::kINT8, DataType::kFLOAT, DataType::kINT8, DataType::kFLOAT};
    DataType out[1];
    EXPECT(b->getOutputDataTypes(out, 1, in, 4) == 0 && out[0] == DataType::kHALF);
    in[1] = DataType::kHALF;
    EXPECT(b->getOutputDataTypes(out, 1, in, 4) == -1);
    EXPECT(gLogger.last.find("input 1 'xs' must be float32, found float16") != std::string::npos);
    EXPECT(b->getAliasedInput(0) == -1);
    auto io = descs({{DataType::kINT8, dims({7, 4096})}, {DataType::kFLOAT, dims({7})},
                     {DataType::kINT8, dims({11008, 4096})}, {DataType::kFLOAT, dims({11008})},
                     {DataType::kHALF, dims({7, 11008})}});
    EXPECT(b->configurePlugin(io.data(), 4, io.data() + 4, 1) == 0);
    io[2].desc.dims = io[2].max = dims({11008, 4000});
    EXPECT(b->configurePlugin(io.data(), 4, io.data() + 4, 1) == -1);
    EXPECT(gLogger.last.find("'wq' dimension 1 must be K") != std::string::npos);
    PluginTensorDesc d[5];
    for (int k = 0; k < 5; ++k) d[k] = descs({{DataType::kINT8, dims({})}})[0].desc;
    d[0].dims = dims({7, 4096});
    d[2].dims = dims({11008, 4096});
    char buf[16];
    void const* ins[4] = {buf, buf, buf, buf};
    void* outs[1] = {buf};
    gStatus = LOWBIT_OK;
    EXPECT(r->enqueue(d, d + 4, ins, outs, nullptr, nullptr) == 0);
    EXPECT(gM == 7 && gN == 11008 && gK == 4096);
    gStatus = LOWBIT_ERR_DIVISIBILITY;
    EXPECT(r->enqueue(d, d + 4, ins, outs, nullptr, nullptr) == -1);
    EXPECT(gLogger.last.find("lowbit_w8a8_gemm failed: DIVISIBILITY_STUB") != std::string::npos);
    gStatus = LOWBIT_OK;
    roundTrip("LowbitW8A8Gemm", p);
    delete p;
  }

  // ---- W4A4 and AtomQuant create and round-trip ----
  {
    IPluginV3* p = make("LowbitW4A4Gemm", Fields().i("group_size", 128));
    EXPECT(p != nullptr);
    {  // enqueue: shapes from the descriptors, engine weights passed as constants
      auto* r = cap<IPluginV3OneRuntime>(p, PluginCapabilityType::kRUNTIME);
      PluginTensorDesc d[9];
      for (int k = 0; k < 9; ++k) d[k] = descs({{DataType::kINT8, dims({})}})[0].desc;
      d[0].dims = dims({3, 1984});   // x4 [M, Kn/2]
      d[2].dims = dims({3, 128});    // x8 [M, Ko]
      d[4].dims = dims({4096, 1984});  // w4 [N, Kn/2]
      char buf[16];
      void const* ins[8] = {buf, buf, buf, buf, buf, buf, buf, buf};
      void* outs[1] = {buf};
      gStatus = LOWBIT_OK;
      EXPECT(r->enqueue(d, d + 8, ins, outs, nullptr, nullptr) == 0);
      EXPECT(gM == 3 && gN == 4096 && gK == 3968 && gFlags == LOWBIT_GEMM_CONST_WEIGHTS);
      EXPECT(gWsBytes == 0);  // no workspace given: none passed on
      EXPECT(r->enqueue(d, d + 8, ins, outs, buf, nullptr) == 0);
      EXPECT(gWsBytes == size_t(3) * 4096 + 4096);  // this call's T = 3, not the profile's
    }
    {  // workspace for the profile's largest T (x4 max rows 512)
      auto* b = cap<IPluginV3OneBuildV2>(p, PluginCapabilityType::kBUILD);
      auto io = descs({{DataType::kINT8, dims({512, 1984})}, {DataType::kHALF, dims({512, 31})},
                       {DataType::kINT8, dims({512, 128})}, {DataType::kHALF, dims({512})},
                       {DataType::kINT8, dims({4096, 1984})}, {DataType::kHALF, dims({31, 4096})},
                       {DataType::kINT8, dims({4096, 128})}, {DataType::kHALF, dims({4096})},
                       {DataType::kHALF, dims({512, 4096})}});
      EXPECT(b->getWorkspaceSize(io.data(), 8, io.data() + 8, 1) == size_t(512) * 4096 + 4096);
    }
    roundTrip("LowbitW4A4Gemm", p);
    delete p;
    p = make("LowbitAtomQuant", Fields().i("norm", 1).i("reorder", 1).fl("eps", 1e-6f)
                                    .i("n_outliers", 128).i("group_size", 128).fl("clip", 0.9f));
    EXPECT(p != nullptr);
    EXPECT(cap<IPluginV3OneBuildV2>(p, PluginCapabilityType::kBUILD)->getNbOutputs() == 4);
    roundTrip("LowbitAtomQuant", p);
    delete p;
  }

  // ---- Kv4 attention: aliasing, workspace, slab offset ----
  {
    IPluginV3* p = make("LowbitKv4Attention",
                        Fields().i("layer", 3).i("num_heads", 8).i("num_kv_heads", 2)
                            .i("head_size", 128).i("tokens_per_block", 64).i("k_group_size", 128)
                            .i("v_group_size", 64).i("sliding_window", 0));
    EXPECT(p != nullptr);
    auto* b = cap<IPluginV3OneBuildV2>(p, PluginCapabilityType::kBUILD);
    auto* r = cap<IPluginV3OneRuntime>(p, PluginCapabilityType::kRUNTIME);
    EXPECT(b->getNbOutputs() == 3);
    EXPECT(b->getAliasedInput(0) == -1 && b->getAliasedInput(1) == 5 &&
           b->getAliasedInput(2) == 6);
    int64_t const L = 4, NB = 10, P = 2 * (1 + 2);
    auto io = descs({{DataType::kHALF, dims({16, (8 + 4) * 128})}, {DataType::kINT32, dims({16})},
                     {DataType::kINT32, dims({5})}, {DataType::kINT32, dims({4, 8})},
                     {DataType::kFLOAT, dims({64})},
                     {DataType::kUINT8, dims({L, NB, 2, 2, 64, 64})},
                     {DataType::kHALF, dims({L, NB, 2, 64, P})},
                     {DataType::kHALF, dims({16, 1024})},
                     {DataType::kUINT8, dims({L, NB, 2, 2, 64, 64})},
                     {DataType::kHALF, dims({L, NB, 2, 64, P})}});
    for (int32_t pos = 0; pos < 10; ++pos) EXPECT(b->supportsFormatCombination(pos, io.data(), 7, 3));
    io[8].desc.type = DataType::kINT8;  // aliased output must match its input's dtype
    EXPECT(!b->supportsFormatCombination(8, io.data(), 7, 3));
    io[8].desc.type = DataType::kUINT8;
    EXPECT(b->configurePlugin(io.data(), 7, io.data() + 7, 3) == 0);
    // decode at T = B = min(16, 4) = 4 needs the larger scratch: q(16 tokens) vs q(4) + 4000
    size_t const ws = b->getWorkspaceSize(io.data(), 7, io.data() + 7, 3);
    EXPECT(ws == std::max<size_t>(16 * 8 * 128 * 2, 8192 + 4000));
    io[6].desc.dims = dims({L, NB, 2, 64, P + 2});
    EXPECT(b->configurePlugin(io.data(), 7, io.data() + 7, 3) == -1);
    EXPECT(gLogger.last.find("'kv_params' dimension 4 must be P") != std::string::npos);
    io[6].desc.dims = dims({L, NB, 2, 64, P});
    PluginTensorDesc d[10];
    for (int k = 0; k < 10; ++k) d[k] = io[k].desc;
    std::vector<char> ws_buf(ws), pool(1);
    void const* ins[7] = {pool.data(), pool.data(), pool.data(), pool.data(), pool.data(),
                          pool.data(), pool.data()};
    void* outs[3] = {pool.data(), pool.data(), pool.data()};
    EXPECT(r->enqueue(d, d + 7, ins, outs, ws_buf.data(), nullptr) == 0);
    EXPECT(gT == 16 && gB == 4);
    EXPECT(static_cast<char const*>(gCodes) - pool.data() == 3 * NB * 2 * 2 * 64 * 64);
    EXPECT(gWsBytes == 0);  // prefill (T != B): no attention scratch
    roundTrip("LowbitKv4Attention", p);
    delete p;
  }
  std::printf("PASS %d\n", gChecks);
  return 0;
}
