// TensorRT plugin LowbitAtomQuant (namespace "lowbit", version "1"): Atom activation quantization,
// [RMSNorm] + channel reorder + per-token INT4 groups + INT8 outliers, producing exactly the
// activation operands of LowbitW4A4Gemm. Contract: docs/engine-io.md; this folder's README.md.
// Kernel: lowbit_atom_quantize (quantizeKernel.h).
#pragma once

#include <limits>

#include "common/pluginBase.h"

namespace lowbit {
namespace plugin {

struct AtomQuantParams {
  int32_t norm = 0;        // 1: RMSNorm with gamma (already permuted) first
  int32_t reorder = 0;     // 1: perm input, h[:, j] = norm(x)[:, perm[j]]
  float eps = std::numeric_limits<float>::quiet_NaN();  // required when norm = 1
  int32_t nOutliers = 0;   // field "n_outliers": K_o, the trailing INT8 channels
  int32_t groupSize = 0;   // field "group_size": G (128 or 64)
  float clip = 0.f;        // INT4 scale = amax * clip / 7
};

class AtomQuantPlugin final : public PluginBase<AtomQuantPlugin, AtomQuantParams> {
 public:
  static constexpr char const* kNAME = "LowbitAtomQuant";

  explicit AtomQuantPlugin(AtomQuantParams const& p);

  static FieldTable<AtomQuantParams> const& fieldTable();
  static AtomQuantParams validate(AtomQuantParams p);
  static IoSpec makeIo(AtomQuantParams const& p);
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

class AtomQuantPluginCreator final : public PluginCreatorBase<AtomQuantPlugin> {};

}  // namespace plugin
}  // namespace lowbit
