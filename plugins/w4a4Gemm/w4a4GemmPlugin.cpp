// LowbitW4A4Gemm: see w4a4GemmPlugin.h and docs/engine-io.md.
//   inputs:  x4 int8 [T, K_n/2], xs4 fp16 [T, K_n/G], x8 int8 [T, K_o], xs8 fp16 [T]
//            (LowbitAtomQuant's outputs); constants w4 int8 [N, K_n/2] (packed int4),
//            ws4t fp16 [K_n/G, N] (transposed), w8 int8 [N, K_o], ws8 fp16 [N]
//   output:  y fp16 [T, N]
// K_n is read from x4 (2 * its columns), K_o from x8; K_o = 0 (no outliers) is allowed.
#include "w4a4Gemm/w4a4GemmPlugin.h"

#include "w4a4Gemm/w4a4GemmKernel.h"

namespace lowbit {
namespace plugin {

namespace {
using nvinfer1::DataType;
enum : int32_t { kX4 = 0, kXS4, kX8, kXS8, kW4, kWS4T, kW8, kWS8 };
constexpr int kAutoConfig = -1;  // the launcher picks the tile configuration from M, N, K
}  // namespace

W4A4GemmPlugin::W4A4GemmPlugin(W4A4GemmParams const& p) : PluginBase(p) {}

FieldTable<W4A4GemmParams> const& W4A4GemmPlugin::fieldTable() {
  static FieldTable<W4A4GemmParams> const table(
      kNAME, {intField("group_size", &W4A4GemmParams::groupSize)});
  return table;
}

W4A4GemmParams W4A4GemmPlugin::validate(W4A4GemmParams p) {
  LOWBIT_PLUGIN_CHECK(p.groupSize == 128 || p.groupSize == 64,
                      kNAME << ": field 'group_size' must be 128 or 64, found " << p.groupSize);
  return p;
}

IoSpec W4A4GemmPlugin::makeIo(W4A4GemmParams const& /*p*/) {
  IoSpec io;
  io.inputs = {{"x4", {DataType::kINT8}}, {"xs4", {DataType::kHALF}},
               {"x8", {DataType::kINT8}}, {"xs8", {DataType::kHALF}},
               {"w4", {DataType::kINT8}}, {"ws4t", {DataType::kHALF}},
               {"w8", {DataType::kINT8}}, {"ws8", {DataType::kHALF}}};
  io.outputs = {{"y", {DataType::kHALF}}};
  return io;
}

void W4A4GemmPlugin::checkShapes(nvinfer1::Dims const* in, int32_t nbInputs) const {
  checkCounts(kNAME, io(), nbInputs, 1);
  static char const* const kNames[] = {"x4", "xs4", "x8", "xs8", "w4", "ws4t", "w8", "ws8"};
  static int32_t const kRanks[] = {2, 2, 2, 1, 2, 2, 2, 1};
  for (int32_t i = 0; i < nbInputs; ++i) checkRank(kNAME, kNames[i], in[i], kRanks[i]);
  int32_t const G = params().groupSize;
  int64_t const T = in[kX4].d[0];
  int64_t const halfKn = in[kX4].d[1];
  int64_t const Kn = halfKn >= 0 ? 2 * halfKn : -1;
  int64_t const Ko = in[kX8].d[1];
  int64_t const N = in[kW4].d[0];
  if (Kn >= 0) {
    LOWBIT_PLUGIN_CHECK(Kn > 0 && Kn % 128 == 0,
                        kNAME << ": K_n = 2 * x4 columns = " << Kn
                              << " must be a positive multiple of 128");
  }
  if (Ko >= 0) {
    LOWBIT_PLUGIN_CHECK(Ko % 16 == 0,
                        kNAME << ": K_o = x8 columns = " << Ko << " must be a multiple of 16");
  }
  if (N >= 0) {
    LOWBIT_PLUGIN_CHECK(N >= 8 && N % 8 == 0,
                        kNAME << ": N = " << N << " (w4's rows) must be a multiple of 8, >= 8");
  }
  int64_t const groups = Kn >= 0 ? Kn / G : -1;
  checkDim(kNAME, "xs4", in[kXS4], 0, T, "T (x4's rows)");
  checkDim(kNAME, "xs4", in[kXS4], 1, groups, "K_n / group_size");
  checkDim(kNAME, "x8", in[kX8], 0, T, "T (x4's rows)");
  checkDim(kNAME, "xs8", in[kXS8], 0, T, "T (x4's rows)");
  checkDim(kNAME, "w4", in[kW4], 1, halfKn, "K_n / 2 (x4's columns)");
  checkDim(kNAME, "ws4t", in[kWS4T], 0, groups, "K_n / group_size (transposed scales)");
  checkDim(kNAME, "ws4t", in[kWS4T], 1, N, "N (w4's rows)");
  checkDim(kNAME, "w8", in[kW8], 0, N, "N (w4's rows)");
  checkDim(kNAME, "w8", in[kW8], 1, Ko, "K_o (x8's columns)");
  checkDim(kNAME, "ws8", in[kWS8], 0, N, "N (w4's rows)");
}

int32_t W4A4GemmPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                        nvinfer1::DimsExprs const* /*shapeInputs*/,
                                        int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
                                        int32_t nbOutputs,
                                        nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  return guard(kNAME, "getOutputShapes", -1, [&] {
    checkCounts(kNAME, io(), nbInputs, nbOutputs);
    LOWBIT_PLUGIN_CHECK(inputs[kX4].nbDims == 2 && inputs[kW4].nbDims == 2,
                        "x4 [T, K_n/2] and w4 [N, K_n/2] must have rank 2, found ranks "
                            << inputs[kX4].nbDims << " and " << inputs[kW4].nbDims);
    outputs[0].nbDims = 2;  // y [T, N]
    outputs[0].d[0] = inputs[kX4].d[0];
    outputs[0].d[1] = inputs[kW4].d[0];
    return 0;
  });
}

size_t W4A4GemmPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs,
                                        int32_t nbInputs,
                                        nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                                        int32_t nbOutputs) const noexcept {
  return guard(kNAME, "getWorkspaceSize", size_t{0}, [&] {
    checkCounts(kNAME, io(), nbInputs, nbOutputs);
    // grows with T (its header), so the profile's largest T covers every shape of the profile
    int32_t const Tmax = dimAsInt("x4", inputs[kX4].max, 0);
    return lowbit_w4a4_gemm_workspace_size(Tmax, dimAsInt("w4", inputs[kW4].max, 0),
                                           2 * dimAsInt("x4", inputs[kX4].max, 1),
                                           dimAsInt("x8", inputs[kX8].max, 1), params().groupSize);
  });
}

int32_t W4A4GemmPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                nvinfer1::PluginTensorDesc const* /*outputDesc*/,
                                void const* const* inputs, void* const* outputs,
                                void* workspace, cudaStream_t stream) noexcept {
  return guard(kNAME, "enqueue", -1, [&] {
    int32_t const M = dimAsInt("x4", inputDesc[kX4].dims, 0);
    int32_t const Kn = 2 * dimAsInt("x4", inputDesc[kX4].dims, 1);
    int32_t const Ko = dimAsInt("x8", inputDesc[kX8].dims, 1);
    int32_t const N = dimAsInt("w4", inputDesc[kW4].dims, 0);
    if (M == 0) return 0;  // no tokens: empty output
    int32_t const G = params().groupSize;
    // With K_o = 0 the outlier operands are empty tensors (possibly null); the launcher ignores them.
    // TensorRT's workspace holds getWorkspaceSize's bytes (the profile's largest T) >= this T's.
    size_t const wsBytes = workspace ? lowbit_w4a4_gemm_workspace_size(M, N, Kn, Ko, G) : 0;
    int const st = lowbit_w4a4_gemm(inputs[kX4], inputs[kXS4], inputs[kX8], inputs[kXS8],
                                    inputs[kW4], inputs[kWS4T], inputs[kW8], inputs[kWS8],
                                    outputs[0], M, N, Kn, Ko, G, kAutoConfig,
                                    LOWBIT_GEMM_CONST_WEIGHTS,  // engine constants
                                    workspace, wsBytes, stream);
    return launchResult(kNAME, "lowbit_w4a4_gemm", st,
                        "M = " + std::to_string(M) + ", N = " + std::to_string(N) +
                            ", K_n = " + std::to_string(Kn) + ", K_o = " + std::to_string(Ko) +
                            ", G = " + std::to_string(G));
  });
}

}  // namespace plugin
}  // namespace lowbit
