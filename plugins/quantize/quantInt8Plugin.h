// TensorRT plugin LowbitQuantInt8 (namespace "lowbit", version "1"): SmoothQuant activation
// quantization, optionally fused with RMSNorm, per-token or with one static scale.
// Contract: docs/engine-io.md; this folder's README.md ("TensorRT plugin"). Kernel:
// lowbit_rmsnorm_quantize_int8 (quantizeKernel.h).
#pragma once

#include <limits>

#include "common/pluginBase.h"

namespace lowbit {
namespace plugin {

struct QuantInt8Params {
  int32_t norm = 0;       // 1: RMSNorm with gamma first
  int32_t isStatic = 0;   // field "static": 1: one calibrated scale input, no xs output
  float eps = std::numeric_limits<float>::quiet_NaN();  // required when norm = 1
};

class QuantInt8Plugin final : public PluginBase<QuantInt8Plugin, QuantInt8Params> {
 public:
  static constexpr char const* kNAME = "LowbitQuantInt8";

  explicit QuantInt8Plugin(QuantInt8Params const& p);

  static FieldTable<QuantInt8Params> const& fieldTable();
  static QuantInt8Params validate(QuantInt8Params p);
  static IoSpec makeIo(QuantInt8Params const& p);
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

class QuantInt8PluginCreator final : public PluginCreatorBase<QuantInt8Plugin> {};

}  // namespace plugin
}  // namespace lowbit
