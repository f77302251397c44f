// LowbitQuantInt8: see quantInt8Plugin.h and docs/engine-io.md.
//   inputs:  x fp16 [T, K]; gamma fp16 [K] (norm = 1); scale fp32 [1] (static = 1)
//   outputs: q int8 [T, K]; xs fp32 [T] (static = 0)
#include "quantize/quantInt8Plugin.h"

#include <cmath>

#include "quantize/quantizeKernel.h"

namespace lowbit {
namespace plugin {

namespace {
using nvinfer1::DataType;
constexpr int32_t kMaxK = 32768;  // quantizeKernel.cu: one row lives in registers/shared memory
}  // namespace

QuantInt8Plugin::QuantInt8Plugin(QuantInt8Params const& p)
    : PluginBase(p) {}

FieldTable<QuantInt8Params> const& QuantInt8Plugin::fieldTable() {
  static FieldTable<QuantInt8Params> const table(
      kNAME, {
                 intField("norm", &QuantInt8Params::norm),
                 intField("static", &QuantInt8Params::isStatic),
                 floatField("eps", &QuantInt8Params::eps, Presence::kOPTIONAL),
             });
  return table;
}

QuantInt8Params QuantInt8Plugin::validate(QuantInt8Params p) {
  LOWBIT_PLUGIN_CHECK(p.norm == 0 || p.norm == 1, kNAME << ": field 'norm' must be 0 or 1, found "
                                                        << p.norm);
  LOWBIT_PLUGIN_CHECK(p.isStatic == 0 || p.isStatic == 1,
                      kNAME << ": field 'static' must be 0 or 1, found " << p.isStatic);
  if (p.norm == 1) {
    LOWBIT_PLUGIN_CHECK(std::isfinite(p.eps) && p.eps >= 0.f,
                        kNAME << ": field 'eps' (a finite float >= 0) is required when norm = 1, "
                              << "found " << p.eps);
  } else if (std::isnan(p.eps)) {
    p.eps = 0.f;  // unused without RMSNorm; serialized as 0
  }
  return p;
}

IoSpec QuantInt8Plugin::makeIo(QuantInt8Params const& p) {
  IoSpec io;
  io.inputs.push_back({"x", {DataType::kHALF}});
  if (p.norm) io.inputs.push_back({"gamma", {DataType::kHALF}});
  if (p.isStatic) io.inputs.push_back({"scale", {DataType::kFLOAT}});
  io.outputs.push_back({"q", {DataType::kINT8}});
  if (!p.isStatic) io.outputs.push_back({"xs", {DataType::kFLOAT}});
  return io;
}

void QuantInt8Plugin::checkShapes(nvinfer1::Dims const* in, int32_t nbInputs) const {
  checkCounts(kNAME, io(), nbInputs, static_cast<int32_t>(io().outputs.size()));
  checkRank(kNAME, "x", in[0], 2);
  int64_t const K = in[0].d[1];
  if (K >= 0) {
    LOWBIT_PLUGIN_CHECK(K > 0 && K % 8 == 0 && K <= kMaxK,
                        kNAME << ": x has K = " << K << " channels; the kernel needs K % 8 == 0 and "
                              << "0 < K <= " << kMaxK);
  }
  int32_t i = 1;
  if (params().norm) {
    checkRank(kNAME, "gamma", in[i], 1);
    checkDim(kNAME, "gamma", in[i], 0, K, "K (x's channels)");
    ++i;
  }
  if (params().isStatic) {
    checkRank(kNAME, "scale", in[i], 1);
    checkDim(kNAME, "scale", in[i], 0, 1, "one scale");
  }
}

int32_t QuantInt8Plugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                         nvinfer1::DimsExprs const* /*shapeInputs*/,
                                         int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
                                         int32_t nbOutputs,
                                         nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  return guard(kNAME, "getOutputShapes", -1, [&] {
    checkCounts(kNAME, io(), nbInputs, nbOutputs);
    LOWBIT_PLUGIN_CHECK(inputs[0].nbDims == 2,
                        "x must have rank 2 [T, K], found rank " << inputs[0].nbDims);
    outputs[0] = inputs[0];  // q [T, K]
    if (!params().isStatic) {
      outputs[1].nbDims = 1;  // xs [T]
      outputs[1].d[0] = inputs[0].d[0];
    }
    return 0;
  });
}

int32_t QuantInt8Plugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                 nvinfer1::PluginTensorDesc const* /*outputDesc*/,
                                 void const* const* inputs, void* const* outputs,
                                 void* /*workspace*/, cudaStream_t stream) noexcept {
  return guard(kNAME, "enqueue", -1, [&] {
    int32_t const M = dimAsInt("x", inputDesc[0].dims, 0);
    int32_t const K = dimAsInt("x", inputDesc[0].dims, 1);
    if (M == 0) return 0;  // no tokens: empty outputs
    auto const& p = params();
    void const* gamma = p.norm ? inputs[1] : nullptr;
    auto const* scale = p.isStatic ? static_cast<float const*>(inputs[1 + p.norm]) : nullptr;
    auto* xs = p.isStatic ? nullptr : static_cast<float*>(outputs[1]);
    int const st = lowbit_rmsnorm_quantize_int8(inputs[0], LOWBIT_DTYPE_FP16, gamma, p.eps, scale,
                                                M, K, outputs[0], xs, stream);
    return launchResult(kNAME, "lowbit_rmsnorm_quantize_int8", st,
                        "M = " + std::to_string(M) + ", K = " + std::to_string(K));
  });
}

}  // namespace plugin
}  // namespace lowbit
