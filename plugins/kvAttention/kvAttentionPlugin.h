// TensorRT plugin LowbitKv4Attention (namespace "lowbit", version "1"): RoPE + INT4
// quantize-append of the new tokens' K/V into a paged cache pool, then attention over the pool.
// The pool (kv_codes, kv_params) is an input aliased to an output and updated in place
// (IPluginV3OneBuildV2::getAliasedInput): the builder must enable
// PreviewFeature::kALIASED_PLUGIN_IO_10_03. Contract: docs/engine-io.md; this folder's README.md.
// Kernels: lowbit_kv4_rope_append, lowbit_kv4_attention (kvAttentionKernel.h).
#pragma once

#include "common/pluginBase.h"
#include "kvAttention/kvAttentionKernel.h"

namespace lowbit {
namespace plugin {

struct Kv4AttentionParams {
  int32_t layer = 0;            // which layer's slab of the [L, ...] pool is read and written
  int32_t numHeads = 0;         // nh
  int32_t numKvHeads = 0;       // nkv
  int32_t headSize = 0;         // d
  int32_t tokensPerBlock = 0;   // tpb
  int32_t kGroupSize = 0;       // gk
  int32_t vGroupSize = 0;       // gv
  int32_t slidingWindow = 0;    // 0 = none
};

class Kv4AttentionPlugin final : public PluginBase<Kv4AttentionPlugin, Kv4AttentionParams> {
 public:
  static constexpr char const* kNAME = "LowbitKv4Attention";

  explicit Kv4AttentionPlugin(Kv4AttentionParams const& p);

  static FieldTable<Kv4AttentionParams> const& fieldTable();
  static Kv4AttentionParams validate(Kv4AttentionParams p);
  static IoSpec makeIo(Kv4AttentionParams const& p);
  void checkShapes(nvinfer1::Dims const* in, int32_t nbInputs) const;

  // ---- IPluginV3OneBuild ----------------------------------------------------------------------
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                          nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs,
                          int32_t nbOutputs) const noexcept override;
  // (IPluginV3OneBuildV2::getAliasedInput comes from the IoSpec: outputs 1, 2 -> inputs 5, 6.)

  // ---- IPluginV3OneRuntime --------------------------------------------------------------------
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                  nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

 private:
  lowbitKv4Layout layout(int32_t numBlocks, int32_t maxBlocksPerSeq) const;
  // Workspace bytes for T tokens of B sequences: q (fp16 [T, nh, d], 256-byte padded) followed by
  // the attention kernel's scratch.
  size_t workspaceBytes(int32_t T, int32_t B, lowbitKv4Layout const& l) const;
};

class Kv4AttentionPluginCreator final : public PluginCreatorBase<Kv4AttentionPlugin> {};

}  // namespace plugin
}  // namespace lowbit
