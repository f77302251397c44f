// TensorRT plugin LowbitW8A8Gemm (namespace "lowbit", version "1"): SmoothQuant INT8 GEMM,
// y = xs * ws * (xq . wq^T) rounded to fp16. Contract: docs/engine-io.md; this folder's README.md.
// Kernel: lowbit_w8a8_gemm (w8a8GemmKernel.h).
#pragma once

#include "common/pluginBase.h"

namespace lowbit {
namespace plugin {

struct W8A8GemmParams {
  int32_t perToken = 0;  // field "per_token": 1: xs [T] per token; 0: xs [1] (static act_scale)
};

class W8A8GemmPlugin final : public PluginBase<W8A8GemmPlugin, W8A8GemmParams> {
 public:
  static constexpr char const* kNAME = "LowbitW8A8Gemm";

  explicit W8A8GemmPlugin(W8A8GemmParams const& p);

  static FieldTable<W8A8GemmParams> const& fieldTable();
  static W8A8GemmParams validate(W8A8GemmParams p);
  static IoSpec makeIo(W8A8GemmParams const& p);
  void checkShapes(nvinfer1::Dims const* in, int32_t nbInputs) const;

  // ---- IPluginV3OneBuild ----------------------------------------------------------------------
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                          nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;

  // ---- IPluginV3OneRuntime --------------------------------------------------------------------
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                  nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
};

class W8A8GemmPluginCreator final : public PluginCreatorBase<W8A8GemmPlugin> {};

}  // namespace plugin
}  // namespace lowbit
