// LowbitAtomQuant: see atomQuantPlugin.h and docs/engine-io.md.
//   inputs:  x fp16 [T, K] (original channel order); gamma fp16 [K] (norm = 1, already permuted);
//            perm int32 [K] (reorder = 1)
//   outputs: x4 int8 [T, K_n/2] (packed int4, low nibble first), xs4 fp16 [T, K_n/G],
//            x8 int8 [T, K_o], xs8 fp16 [T]            with K_n = K - K_o
#include "quantize/atomQuantPlugin.h"

#include <cmath>

#include "quantize/quantizeKernel.h"

namespace lowbit {
namespace plugin {

namespace {
using nvinfer1::DataType;
constexpr int32_t kMaxK = 32768;  // quantizeKernel.cu: one row lives in registers/shared memory
}  // namespace

AtomQuantPlugin::AtomQuantPlugin(AtomQuantParams const& p) : PluginBase(p) {}

FieldTable<AtomQuantParams> const& AtomQuantPlugin::fieldTable() {
  static FieldTable<AtomQuantParams> const table(
      kNAME, {
                 intField("norm", &AtomQuantParams::norm),
                 intField("reorder", &AtomQuantParams::reorder),
                 floatField("eps", &AtomQuantParams::eps, Presence::kOPTIONAL),
                 intField("n_outliers", &AtomQuantParams::nOutliers),
                 intField("group_size", &AtomQuantParams::groupSize),
                 floatField("clip", &AtomQuantParams::clip),
             });
  return table;
}

AtomQuantParams AtomQuantPlugin::validate(AtomQuantParams p) {
  LOWBIT_PLUGIN_CHECK(p.norm == 0 || p.norm == 1, kNAME << ": field 'norm' must be 0 or 1, found "
                                                        << p.norm);
  LOWBIT_PLUGIN_CHECK(p.reorder == 0 || p.reorder == 1,
                      kNAME << ": field 'reorder' must be 0 or 1, found " << p.reorder);
  if (p.norm == 1) {
    LOWBIT_PLUGIN_CHECK(std::isfinite(p.eps) && p.eps >= 0.f,
                        kNAME << ": field 'eps' (a finite float >= 0) is required when norm = 1, "
                              << "found " << p.eps);
  } else if (std::isnan(p.eps)) {
    p.eps = 0.f;  // unused without RMSNorm; serialized as 0
  }
  LOWBIT_PLUGIN_CHECK(p.nOutliers >= 0 && p.nOutliers % 16 == 0,
                      kNAME << ": field 'n_outliers' (K_o) must be a multiple of 16 >= 0, found "
                            << p.nOutliers);
  LOWBIT_PLUGIN_CHECK(p.groupSize == 128 || p.groupSize == 64,
                      kNAME << ": field 'group_size' must be 128 or 64, found " << p.groupSize);
  LOWBIT_PLUGIN_CHECK(std::isfinite(p.clip) && p.clip > 0.f,
                      kNAME << ": field 'clip' must be a finite float > 0, found " << p.clip);
  return p;
}

IoSpec AtomQuantPlugin::makeIo(AtomQuantParams const& p) {
  IoSpec io;
  io.inputs.push_back({"x", {DataType::kHALF}});
  if (p.norm) io.inputs.push_back({"gamma", {DataType::kHALF}});
  if (p.reorder) io.inputs.push_back({"perm", {DataType::kINT32}});
  io.outputs = {{"x4", {DataType::kINT8}},
                {"xs4", {DataType::kHALF}},
                {"x8", {DataType::kINT8}},
                {"xs8", {DataType::kHALF}}};
  return io;
}

void AtomQuantPlugin::checkShapes(nvinfer1::Dims const* in, int32_t nbInputs) const {
  checkCounts(kNAME, io(), nbInputs, static_cast<int32_t>(io().outputs.size()));
  auto const& p = params();
  checkRank(kNAME, "x", in[0], 2);
  int64_t const K = in[0].d[1];
  if (K >= 0) {
    int64_t const Kn = K - p.nOutliers;
    LOWBIT_PLUGIN_CHECK(K % 8 == 0 && K <= kMaxK,
                        kNAME << ": x has K = " << K << " channels; the kernel needs K % 8 == 0 and "
                              << "K <= " << kMaxK);
    LOWBIT_PLUGIN_CHECK(Kn > 0 && Kn % 128 == 0,
                        kNAME << ": K_n = K - n_outliers = " << K << " - " << p.nOutliers << " = "
                              << Kn << " must be a positive multiple of 128");
  }
  int32_t i = 1;
  if (p.norm) {
    checkRank(kNAME, "gamma", in[i], 1);
    checkDim(kNAME, "gamma", in[i], 0, K, "K (x's channels)");
    ++i;
  }
  if (p.reorder) {
    checkRank(kNAME, "perm", in[i], 1);
    checkDim(kNAME, "perm", in[i], 0, K, "K (x's channels)");
  }
}

int32_t AtomQuantPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                         nvinfer1::DimsExprs const* /*shapeInputs*/,
                                         int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
                                         int32_t nbOutputs,
                                         nvinfer1::IExprBuilder& exprBuilder) noexcept {
  return guard(kNAME, "getOutputShapes", -1, [&] {
    checkCounts(kNAME, io(), nbInputs, nbOutputs);
    LOWBIT_PLUGIN_CHECK(inputs[0].nbDims == 2,
                        "x must have rank 2 [T, K], found rank " << inputs[0].nbDims);
    using Op = nvinfer1::DimensionOperation;
    auto const& p = params();
    nvinfer1::IDimensionExpr const* T = inputs[0].d[0];
    nvinfer1::IDimensionExpr const* Kn =
        exprBuilder.operation(Op::kSUB, *inputs[0].d[1], *exprBuilder.constant(p.nOutliers));
    outputs[0].nbDims = 2;  // x4 [T, K_n / 2]
    outputs[0].d[0] = T;
    outputs[0].d[1] = exprBuilder.operation(Op::kFLOOR_DIV, *Kn, *exprBuilder.constant(2));
    outputs[1].nbDims = 2;  // xs4 [T, K_n / G]
    outputs[1].d[0] = T;
    outputs[1].d[1] = exprBuilder.operation(Op::kFLOOR_DIV, *Kn, *exprBuilder.constant(p.groupSize));
    outputs[2].nbDims = 2;  // x8 [T, K_o]
    outputs[2].d[0] = T;
    outputs[2].d[1] = exprBuilder.constant(p.nOutliers);
    outputs[3].nbDims = 1;  // xs8 [T]
    outputs[3].d[0] = T;
    return 0;
  });
}

int32_t AtomQuantPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                 nvinfer1::PluginTensorDesc const* /*outputDesc*/,
                                 void const* const* inputs, void* const* outputs,
                                 void* /*workspace*/, cudaStream_t stream) noexcept {
  return guard(kNAME, "enqueue", -1, [&] {
    int32_t const M = dimAsInt("x", inputDesc[0].dims, 0);
    int32_t const K = dimAsInt("x", inputDesc[0].dims, 1);
    if (M == 0) return 0;  // no tokens: empty outputs
    auto const& p = params();
    void const* gamma = p.norm ? inputs[1] : nullptr;
    auto const* perm = p.reorder ? static_cast<int const*>(inputs[1 + p.norm]) : nullptr;
    int const st = lowbit_atom_quantize(inputs[0], LOWBIT_DTYPE_FP16, gamma, perm, p.eps, M, K,
                                        p.nOutliers, p.groupSize, p.clip, outputs[0], outputs[1],
                                        outputs[2], outputs[3], stream);
    return launchResult(kNAME, "lowbit_atom_quantize", st,
                        "M = " + std::to_string(M) + ", K = " + std::to_string(K) +
                            ", K_o = " + std::to_string(p.nOutliers) +
                            ", G = " + std::to_string(p.groupSize));
  });
}

}  // namespace plugin
}  // namespace lowbit
