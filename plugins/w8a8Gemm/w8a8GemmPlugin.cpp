// LowbitW8A8Gemm: see w8a8GemmPlugin.h and docs/engine-io.md.
//   inputs:  xq int8 [T, K]; xs fp32 [T] (per_token = 1) or [1] (static act_scale);
//            wq int8 [N, K] (constant); ws fp32 [N] (constant, per_channel_scale)
//   output:  y fp16 [T, N]
#include "w8a8Gemm/w8a8GemmPlugin.h"

#include "w8a8Gemm/w8a8GemmKernel.h"

namespace lowbit {
namespace plugin {

namespace {
using nvinfer1::DataType;
enum : int32_t { kXQ = 0, kXS = 1, kWQ = 2, kWS = 3 };
constexpr int kAutoConfig = -1;  // the launcher picks the tile configuration from M, N, K
}  // namespace

W8A8GemmPlugin::W8A8GemmPlugin(W8A8GemmParams const& p) : PluginBase(p) {}

FieldTable<W8A8GemmParams> const& W8A8GemmPlugin::fieldTable() {
  static FieldTable<W8A8GemmParams> const table(
      kNAME, {intField("per_token", &W8A8GemmParams::perToken)});
  return table;
}

W8A8GemmParams W8A8GemmPlugin::validate(W8A8GemmParams p) {
  LOWBIT_PLUGIN_CHECK(p.perToken == 0 || p.perToken == 1,
                      kNAME << ": field 'per_token' must be 0 or 1, found " << p.perToken);
  return p;
}

IoSpec W8A8GemmPlugin::makeIo(W8A8GemmParams const& /*p*/) {
  IoSpec io;
  io.inputs = {{"xq", {DataType::kINT8}},
               {"xs", {DataType::kFLOAT}},
               {"wq", {DataType::kINT8}},
               {"ws", {DataType::kFLOAT}}};
  io.outputs = {{"y", {DataType::kHALF}}};
  return io;
}

void W8A8GemmPlugin::checkShapes(nvinfer1::Dims const* in, int32_t nbInputs) const {
  checkCounts(kNAME, io(), nbInputs, 1);
  checkRank(kNAME, "xq", in[kXQ], 2);
  checkRank(kNAME, "xs", in[kXS], 1);
  checkRank(kNAME, "wq", in[kWQ], 2);
  checkRank(kNAME, "ws", in[kWS], 1);
  int64_t const T = in[kXQ].d[0];
  int64_t const K = in[kXQ].d[1];
  int64_t const N = in[kWQ].d[0];
  checkDim(kNAME, "wq", in[kWQ], 1, K, "K (xq's columns)");
  if (params().perToken) {
    checkDim(kNAME, "xs", in[kXS], 0, T, "T (one scale per token)");
  } else {
    checkDim(kNAME, "xs", in[kXS], 0, 1, "1 (static act_scale)");
  }
  checkDim(kNAME, "ws", in[kWS], 0, N, "N (wq's rows)");
  if (K >= 0) {
    LOWBIT_PLUGIN_CHECK(K > 0 && K % 16 == 0,
                        kNAME << ": K = " << K << " must be a positive multiple of 16");
  }
  if (N >= 0) {
    LOWBIT_PLUGIN_CHECK(N >= 8 && N % 8 == 0,
                        kNAME << ": N = " << N << " (wq's rows) must be a multiple of 8, >= 8");
  }
}

int32_t W8A8GemmPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                        nvinfer1::DimsExprs const* /*shapeInputs*/,
                                        int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
                                        int32_t nbOutputs,
                                        nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  return guard(kNAME, "getOutputShapes", -1, [&] {
    checkCounts(kNAME, io(), nbInputs, nbOutputs);
    LOWBIT_PLUGIN_CHECK(inputs[kXQ].nbDims == 2 && inputs[kWQ].nbDims == 2,
                        "xq [T, K] and wq [N, K] must have rank 2, found ranks "
                            << inputs[kXQ].nbDims << " and " << inputs[kWQ].nbDims);
    outputs[0].nbDims = 2;  // y [T, N]
    outputs[0].d[0] = inputs[kXQ].d[0];
    outputs[0].d[1] = inputs[kWQ].d[0];
    return 0;
  });
}

int32_t W8A8GemmPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                nvinfer1::PluginTensorDesc const* /*outputDesc*/,
                                void const* const* inputs, void* const* outputs,
                                void* /*workspace*/, cudaStream_t stream) noexcept {
  return guard(kNAME, "enqueue", -1, [&] {
    int32_t const M = dimAsInt("xq", inputDesc[kXQ].dims, 0);
    int32_t const K = dimAsInt("xq", inputDesc[kXQ].dims, 1);
    int32_t const N = dimAsInt("wq", inputDesc[kWQ].dims, 0);
    if (M == 0) return 0;  // no tokens: empty output
    int const st = lowbit_w8a8_gemm(inputs[kXQ], inputs[kXS], params().perToken, inputs[kWQ],
                                    inputs[kWS], outputs[0], M, N, K, kAutoConfig, stream);
    return launchResult(kNAME, "lowbit_w8a8_gemm", st,
                        "M = " + std::to_string(M) + ", N = " + std::to_string(N) +
                            ", K = " + std::to_string(K));
  });
}

}  // namespace plugin
}  // namespace lowbit
