// LowbitKv4Attention: see kvAttentionPlugin.h and docs/engine-io.md.
//   inputs:  0 qkv fp16 [T, (nh + 2 nkv) d] (bias added), 1 positions int32 [T],
//            2 seq_offsets int32 [B+1], 3 block_table int32 [B, MB], 4 inv_freq fp32 [d/2],
//            5 kv_codes uint8 (or int8: same bytes) [L, NB, 2, nkv, tpb, d/2],
//            6 kv_params fp16 [L, NB, nkv, tpb, P], P = 2 (d/gk + d/gv)
//   outputs: 0 attn fp16 [T, nh d]; 1 kv_codes_out = input 5 (aliased); 2 kv_params_out = input 6
// enqueue: lowbit_kv4_rope_append_attention: RoPE + quantize-append (q to the workspace, K/V of the
// new tokens into layer `layer` of the pool), then the attention (T == B: decode path, else
// prefill) reading the pool; one call, so the prefill attention can start while the append drains.
#include "kvAttention/kvAttentionPlugin.h"

#include <algorithm>
#include <string>
#include <utility>

namespace lowbit {
namespace plugin {

namespace {
using nvinfer1::DataType;
enum : int32_t { kQKV = 0, kPOS, kOFFSETS, kTABLE, kINVFREQ, kCODES, kPARAMS };
enum : int32_t { kATTN = 0, kCODES_OUT, kPARAMS_OUT };
constexpr size_t kAlign = 256;

size_t alignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
bool isPow2(int32_t v) { return v > 0 && (v & (v - 1)) == 0; }
}  // namespace

Kv4AttentionPlugin::Kv4AttentionPlugin(Kv4AttentionParams const& p) : PluginBase(p) {}

FieldTable<Kv4AttentionParams> const& Kv4AttentionPlugin::fieldTable() {
  using P = Kv4AttentionParams;
  static FieldTable<P> const table(kNAME, {
                                              intField("layer", &P::layer),
                                              intField("num_heads", &P::numHeads),
                                              intField("num_kv_heads", &P::numKvHeads),
                                              intField("head_size", &P::headSize),
                                              intField("tokens_per_block", &P::tokensPerBlock),
                                              intField("k_group_size", &P::kGroupSize),
                                              intField("v_group_size", &P::vGroupSize),
                                              intField("sliding_window", &P::slidingWindow),
                                          });
  return table;
}

// The kernels' support rules (kvAttentionKernel.h), checked here so that an unsupported model
// fails when the network is built, not at the first enqueue.
Kv4AttentionParams Kv4AttentionPlugin::validate(Kv4AttentionParams p) {
  LOWBIT_PLUGIN_CHECK(p.layer >= 0, kNAME << ": field 'layer' must be >= 0, found " << p.layer);
  LOWBIT_PLUGIN_CHECK(p.numHeads > 0 && p.numKvHeads > 0 && p.numHeads % p.numKvHeads == 0,
                      kNAME << ": num_heads = " << p.numHeads << " must be a positive multiple of "
                            << "num_kv_heads = " << p.numKvHeads);
  LOWBIT_PLUGIN_CHECK(p.headSize == 64 || p.headSize == 128,
                      kNAME << ": head_size must be 64 or 128 (kernel support), found "
                            << p.headSize);
  LOWBIT_PLUGIN_CHECK(isPow2(p.tokensPerBlock) && p.tokensPerBlock >= 8,
                      kNAME << ": tokens_per_block must be a power of two >= 8, found "
                            << p.tokensPerBlock);
  for (auto [name, g] : {std::pair<char const*, int32_t>{"k_group_size", p.kGroupSize},
                         std::pair<char const*, int32_t>{"v_group_size", p.vGroupSize}}) {
    LOWBIT_PLUGIN_CHECK(g > 0 && g % 8 == 0 && p.headSize % g == 0,
                        kNAME << ": " << name << " must be a multiple of 8 dividing head_size = "
                              << p.headSize << ", found " << g);
  }
  LOWBIT_PLUGIN_CHECK(p.slidingWindow >= 0, kNAME << ": field 'sliding_window' must be >= 0 "
                                                  << "(0 = none), found " << p.slidingWindow);
  return p;
}

IoSpec Kv4AttentionPlugin::makeIo(Kv4AttentionParams const& /*p*/) {
  IoSpec io;
  io.inputs = {{"qkv", {DataType::kHALF}},
               {"positions", {DataType::kINT32}},
               {"seq_offsets", {DataType::kINT32}},
               {"block_table", {DataType::kINT32}},
               {"inv_freq", {DataType::kFLOAT}},
               // uint8 per the contract; int8 holds the same bytes and avoids TensorRT's limits
               // on uint8 network I/O (see README).
               {"kv_codes", {DataType::kUINT8, DataType::kINT8}},
               {"kv_params", {DataType::kHALF}}};
  io.outputs = {{"attn", {DataType::kHALF}},
                {"kv_codes_out", {DataType::kUINT8, DataType::kINT8}, kCODES},
                {"kv_params_out", {DataType::kHALF}, kPARAMS}};
  return io;
}

void Kv4AttentionPlugin::checkShapes(nvinfer1::Dims const* in, int32_t nbInputs) const {
  checkCounts(kNAME, io(), nbInputs, 3);
  auto const& p = params();
  int64_t const d = p.headSize;
  int64_t const nkv = p.numKvHeads;
  int64_t const P = 2 * (d / p.kGroupSize + d / p.vGroupSize);
  checkRank(kNAME, "qkv", in[kQKV], 2);
  checkRank(kNAME, "positions", in[kPOS], 1);
  checkRank(kNAME, "seq_offsets", in[kOFFSETS], 1);
  checkRank(kNAME, "block_table", in[kTABLE], 2);
  checkRank(kNAME, "inv_freq", in[kINVFREQ], 1);
  checkRank(kNAME, "kv_codes", in[kCODES], 6);
  checkRank(kNAME, "kv_params", in[kPARAMS], 5);
  int64_t const T = in[kQKV].d[0];
  checkDim(kNAME, "qkv", in[kQKV], 1, (p.numHeads + 2 * nkv) * d, "(num_heads + 2 num_kv_heads) d");
  checkDim(kNAME, "positions", in[kPOS], 0, T, "T (qkv's rows)");
  int64_t const B1 = in[kOFFSETS].d[0];
  if (B1 >= 0) {
    LOWBIT_PLUGIN_CHECK(B1 >= 1, kNAME << ": seq_offsets [B+1] needs at least one entry");
  }
  checkDim(kNAME, "block_table", in[kTABLE], 0, B1 >= 0 ? B1 - 1 : -1, "B (seq_offsets has B+1)");
  checkDim(kNAME, "inv_freq", in[kINVFREQ], 0, d / 2, "head_size / 2");
  // kv_codes [L, NB, 2, nkv, tpb, d/2]
  nvinfer1::Dims const& c = in[kCODES];
  if (c.d[0] >= 0) {
    LOWBIT_PLUGIN_CHECK(p.layer < c.d[0], kNAME << ": layer = " << p.layer
                                                << " is outside the pool's L = " << c.d[0]
                                                << " layers (kv_codes shape " << dimsString(c)
                                                << ")");
  }
  checkDim(kNAME, "kv_codes", c, 2, 2, "2 (K, V)");
  checkDim(kNAME, "kv_codes", c, 3, nkv, "num_kv_heads");
  checkDim(kNAME, "kv_codes", c, 4, p.tokensPerBlock, "tokens_per_block");
  checkDim(kNAME, "kv_codes", c, 5, d / 2, "head_size / 2 (two codes per byte)");
  // kv_params [L, NB, nkv, tpb, P]
  nvinfer1::Dims const& s = in[kPARAMS];
  checkDim(kNAME, "kv_params", s, 0, c.d[0], "L (kv_codes' layers)");
  checkDim(kNAME, "kv_params", s, 1, c.d[1], "NB (kv_codes' blocks)");
  checkDim(kNAME, "kv_params", s, 2, nkv, "num_kv_heads");
  checkDim(kNAME, "kv_params", s, 3, p.tokensPerBlock, "tokens_per_block");
  checkDim(kNAME, "kv_params", s, 4, P, "P = 2 (d/k_group_size + d/v_group_size)");
}

int32_t Kv4AttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                            nvinfer1::DimsExprs const* /*shapeInputs*/,
                                            int32_t /*nbShapeInputs*/,
                                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                            nvinfer1::IExprBuilder& exprBuilder) noexcept {
  return guard(kNAME, "getOutputShapes", -1, [&] {
    checkCounts(kNAME, io(), nbInputs, nbOutputs);
    LOWBIT_PLUGIN_CHECK(inputs[kQKV].nbDims == 2,
                        "qkv must have rank 2 [T, (nh + 2 nkv) d], found rank "
                            << inputs[kQKV].nbDims);
    outputs[kATTN].nbDims = 2;  // attn [T, nh d]
    outputs[kATTN].d[0] = inputs[kQKV].d[0];
    outputs[kATTN].d[1] = exprBuilder.constant(int64_t{params().numHeads} * params().headSize);
    outputs[kCODES_OUT] = inputs[kCODES];    // aliased: same tensor
    outputs[kPARAMS_OUT] = inputs[kPARAMS];  // aliased: same tensor
    return 0;
  });
}

lowbitKv4Layout Kv4AttentionPlugin::layout(int32_t numBlocks, int32_t maxBlocksPerSeq) const {
  auto const& p = params();
  lowbitKv4Layout l{};
  l.num_heads = p.numHeads;
  l.num_kv_heads = p.numKvHeads;
  l.head_size = p.headSize;
  l.tokens_per_block = p.tokensPerBlock;
  l.k_group_size = p.kGroupSize;
  l.v_group_size = p.vGroupSize;
  l.sliding_window = p.slidingWindow;
  l.num_blocks = numBlocks;
  l.max_blocks_per_seq = maxBlocksPerSeq;
  return l;
}

size_t Kv4AttentionPlugin::workspaceBytes(int32_t T, int32_t B, lowbitKv4Layout const& l) const {
  size_t const qBytes = size_t(T) * size_t(l.num_heads) * size_t(l.head_size) * 2;  // fp16
  return alignUp(qBytes) + lowbit_kv4_attention_workspace(T, B, &l);
}

size_t Kv4AttentionPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs,
                                            int32_t nbInputs,
                                            nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                                            int32_t nbOutputs) const noexcept {
  return guard(kNAME, "getWorkspaceSize", size_t{0}, [&] {
    checkCounts(kNAME, io(), nbInputs, nbOutputs);
    // The largest shapes of the profile. The decode path (T == B) runs for any T = B <= min(Tmax,
    // Bmax), the prefill path for (Tmax, Bmax); the attention scratch grows with T and B (its
    // header: it depends only on its arguments), so these two cover every shape of the profile.
    int32_t const Tmax = dimAsInt("qkv", inputs[kQKV].max, 0);
    int32_t const Bmax = std::max(dimAsInt("seq_offsets", inputs[kOFFSETS].max, 0) - 1, 0);
    auto const l = layout(dimAsInt("kv_codes", inputs[kCODES].max, 1),
                          dimAsInt("block_table", inputs[kTABLE].max, 1));
    int32_t const m = std::min(Tmax, Bmax);
    return std::max(workspaceBytes(Tmax, Bmax, l), workspaceBytes(m, m, l));
  });
}

int32_t Kv4AttentionPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                    nvinfer1::PluginTensorDesc const* /*outputDesc*/,
                                    void const* const* inputs, void* const* outputs,
                                    void* workspace, cudaStream_t stream) noexcept {
  return guard(kNAME, "enqueue", -1, [&] {
    auto const& p = params();
    int32_t const T = dimAsInt("qkv", inputDesc[kQKV].dims, 0);
    int32_t const B = dimAsInt("seq_offsets", inputDesc[kOFFSETS].dims, 0) - 1;
    int32_t const NB = dimAsInt("kv_codes", inputDesc[kCODES].dims, 1);
    int32_t const MB = dimAsInt("block_table", inputDesc[kTABLE].dims, 1);
    if (T == 0 || B <= 0) return 0;  // nothing to append or attend
    auto const l = layout(NB, MB);

    // This layer's slab of the pool. Written through the outputs: TensorRT aliases them to inputs
    // 5 and 6 (the same memory, or a copy it made of the input before this plugin runs).
    size_t const d = size_t(p.headSize);
    size_t const slots = size_t(NB) * size_t(p.numKvHeads) * size_t(p.tokensPerBlock);
    size_t const P = 2 * (d / size_t(p.kGroupSize) + d / size_t(p.vGroupSize));
    auto* codes = static_cast<char*>(outputs[kCODES_OUT]) + size_t(p.layer) * slots * 2 * (d / 2);
    auto* kvParams = static_cast<char*>(outputs[kPARAMS_OUT]) + size_t(p.layer) * slots * P * 2;

    auto* q = static_cast<char*>(workspace);
    size_t const qBytes = alignUp(size_t(T) * size_t(p.numHeads) * d * 2);
    size_t const attnBytes = lowbit_kv4_attention_workspace(T, B, &l);
    void* attnWorkspace = attnBytes ? q + qBytes : nullptr;

    auto const* positions = static_cast<int const*>(inputs[kPOS]);
    auto const* offsets = static_cast<int const*>(inputs[kOFFSETS]);
    auto const* table = static_cast<int const*>(inputs[kTABLE]);
    std::string const ctx = "T = " + std::to_string(T) + ", B = " + std::to_string(B) +
                            ", NB = " + std::to_string(NB) + ", MB = " + std::to_string(MB) +
                            ", layer = " + std::to_string(p.layer);
    int const st = lowbit_kv4_rope_append_attention(
        inputs[kQKV], positions, offsets, T, B, table, static_cast<float const*>(inputs[kINVFREQ]),
        &l, codes, kvParams, q, outputs[kATTN], attnWorkspace, attnBytes, stream);
    return launchResult(kNAME, "lowbit_kv4_rope_append_attention", st, ctx);
  });
}

}  // namespace plugin
}  // namespace lowbit
