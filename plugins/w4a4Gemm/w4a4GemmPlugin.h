// TensorRT plugin LowbitW4A4Gemm (namespace "lowbit", version "1"): Atom W4A4 mixed-precision
// group GEMM (INT4 groups + INT8 outlier channels). Activation operands are LowbitAtomQuant's
// outputs; weights are INT8-typed constant inputs holding packed nibbles. Contract:
// docs/engine-io.md; this folder's README.md. Kernel: lowbit_w4a4_gemm (w4a4GemmKernel.h).
#pragma once

#include "common/pluginBase.h"

namespace lowbit {
namespace plugin {

struct W4A4GemmParams {
  int32_t groupSize = 0;  // field "group_size": G (128 or 64)
};

class W4A4GemmPlugin final : public PluginBase<W4A4GemmPlugin, W4A4GemmParams> {
 public:
  static constexpr char const* kNAME = "LowbitW4A4Gemm";

  explicit W4A4GemmPlugin(W4A4GemmParams const& p);

  static FieldTable<W4A4GemmParams> const& fieldTable();
  static W4A4GemmParams validate(W4A4GemmParams p);
  static IoSpec makeIo(W4A4GemmParams const& p);
  void checkShapes(nvinfer1::Dims const* in, int32_t nbInputs) const;

  // ---- IPluginV3OneBuild ----------------------------------------------------------------------
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                          nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  // Scratch of the Hopper prefill kernel for the profile's largest T (the widened activations:
  // lowbit_w4a4_gemm_workspace_size).
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs,
                          int32_t nbOutputs) const noexcept override;

  // ---- IPluginV3OneRuntime --------------------------------------------------------------------
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                  nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
};

class W4A4GemmPluginCreator final : public PluginCreatorBase<W4A4GemmPlugin> {};

}  // namespace plugin
}  // namespace lowbit
