// CRTP bases for the lowbit IPluginV3 plugins and their creators: the parts every plugin shares
// (capabilities, identity, dtype negotiation from the IoSpec table, field (de)serialization from
// the FieldTable, error guards). A plugin provides, as members of Derived:
//   static constexpr char const* kNAME;                    the op / plugin name
//   static FieldTable<Params> const& fieldTable();         its fields
//   static Params validate(Params p);                      throws on bad field values
//   static IoSpec makeIo(Params const& p);                 its inputs/outputs and their dtypes
//   void checkShapes(nvinfer1::Dims const* in, int32_t nbInputs) const;  (-1 dims = unknown)
//   getOutputShapes, enqueue, and getWorkspaceSize where it needs scratch (guarded themselves).
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "common/pluginUtils.h"

namespace lowbit {
namespace plugin {

template <typename Derived, typename Params>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuildV2,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  // Validates the fields (throws PluginError) and derives the I/O table from them.
  explicit PluginBase(Params const& params)
      : mParams(Derived::validate(params)), mIo(Derived::makeIo(mParams)) {}
  PluginBase(PluginBase const& other)
      : nvinfer1::IPluginV3(other),
        nvinfer1::IPluginV3OneCore(other),
        nvinfer1::IPluginV3OneBuildV2(other),
        nvinfer1::IPluginV3OneRuntime(other),
        mParams(other.mParams),
        mIo(other.mIo) {}  // the serialization scratch is rebuilt on demand, never shared
  PluginBase& operator=(PluginBase const&) = delete;
  ~PluginBase() noexcept override = default;

  Params const& params() const noexcept { return mParams; }
  IoSpec const& io() const noexcept { return mIo; }

  // ---- IPluginV3 ------------------------------------------------------------------------------
  nvinfer1::IPluginCapability* getCapabilityInterface(
      nvinfer1::PluginCapabilityType type) noexcept override {
    switch (type) {
      case nvinfer1::PluginCapabilityType::kCORE:
        return static_cast<nvinfer1::IPluginV3OneCore*>(this);
      case nvinfer1::PluginCapabilityType::kBUILD:
        return static_cast<nvinfer1::IPluginV3OneBuildV2*>(this);
      case nvinfer1::PluginCapabilityType::kRUNTIME:
        return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }

  nvinfer1::IPluginV3* clone() noexcept override {
    return guard(Derived::kNAME, "clone", static_cast<nvinfer1::IPluginV3*>(nullptr),
                 [&]() -> nvinfer1::IPluginV3* {
                   return new Derived(static_cast<Derived const&>(*this));
                 });
  }

  // ---- IPluginV3OneCore -----------------------------------------------------------------------
  char const* getPluginName() const noexcept override { return Derived::kNAME; }
  char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
  char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }

  // ---- IPluginV3OneBuild / V2 -----------------------------------------------------------------
  int32_t getNbOutputs() const noexcept override {
    return static_cast<int32_t>(mIo.outputs.size());
  }

  int32_t getOutputDataTypes(nvinfer1::DataType* outTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    return guard(Derived::kNAME, "getOutputDataTypes", -1, [&] {
      outputTypes(Derived::kNAME, mIo, outTypes, nbOutputs, inputTypes, nbInputs);
      return 0;
    });
  }

  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                 int32_t nbInputs, int32_t nbOutputs) noexcept override {
    return supportsCombination(mIo, pos, inOut, nbInputs, nbOutputs);
  }

  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
    return guard(Derived::kNAME, "configurePlugin", -1, [&] {
      checkCounts(Derived::kNAME, mIo, nbInputs, nbOutputs);
      LOWBIT_PLUGIN_CHECK(in != nullptr && out != nullptr, "null tensor descriptions");
      std::vector<nvinfer1::DataType> types;
      std::vector<nvinfer1::Dims> dims;
      for (int32_t i = 0; i < nbInputs; ++i) {
        types.push_back(in[i].desc.type);
        dims.push_back(in[i].desc.dims);  // -1 where the profile leaves the extent open
      }
      checkInputTypes(Derived::kNAME, mIo, types.data(), nbInputs);
      derived().checkShapes(dims.data(), nbInputs);
      // The largest shapes of the profile must pass as well (they size the workspace).
      dims.clear();
      for (int32_t i = 0; i < nbInputs; ++i) dims.push_back(in[i].max);
      derived().checkShapes(dims.data(), nbInputs);
      return 0;
    });
  }

  int32_t getAliasedInput(int32_t outputIndex) noexcept override {
    if (outputIndex < 0 || outputIndex >= static_cast<int32_t>(mIo.outputs.size())) return -1;
    return mIo.outputs[outputIndex].aliasOf;
  }

  char const* getMetadataString() noexcept override {
    return guard(Derived::kNAME, "getMetadataString", static_cast<char const*>(nullptr), [&] {
      mMetadata = Derived::fieldTable().describe(mParams);
      return mMetadata.c_str();
    });
  }

  // ---- IPluginV3OneRuntime --------------------------------------------------------------------
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                        nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override {
    return guard(Derived::kNAME, "onShapeChange", -1, [&] {
      checkCounts(Derived::kNAME, mIo, nbInputs, nbOutputs);
      LOWBIT_PLUGIN_CHECK(in != nullptr && out != nullptr, "null tensor descriptions");
      std::vector<nvinfer1::DataType> types;
      std::vector<nvinfer1::Dims> dims;
      for (int32_t i = 0; i < nbInputs; ++i) {
        types.push_back(in[i].type);
        dims.push_back(in[i].dims);
      }
      checkInputTypes(Derived::kNAME, mIo, types.data(), nbInputs);
      derived().checkShapes(dims.data(), nbInputs);
      return 0;
    });
  }

  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
      override {
    return clone();  // no per-context resources
  }

  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    return guard(Derived::kNAME, "getFieldsToSerialize",
                 static_cast<nvinfer1::PluginFieldCollection const*>(nullptr),
                 [&] { return Derived::fieldTable().serialize(mParams, mSerialFields, mSerial); });
  }

 protected:
  Derived const& derived() const noexcept { return static_cast<Derived const&>(*this); }

 private:
  Params mParams;
  IoSpec mIo;
  std::vector<nvinfer1::PluginField> mSerialFields;
  nvinfer1::PluginFieldCollection mSerial{};
  std::string mMetadata;
};

// Creator of plugin P: identity, the field list, createPlugin = parse + validate + construct.
template <typename P>
class PluginCreatorBase : public nvinfer1::IPluginCreatorV3One {
 public:
  char const* getPluginName() const noexcept override { return P::kNAME; }
  char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
  char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }

  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override {
    return guard(P::kNAME, "getFieldNames",
                 static_cast<nvinfer1::PluginFieldCollection const*>(nullptr),
                 [] { return P::fieldTable().fieldNames(); });
  }

  // Same path for the build phase (fields from the ONNX node) and the runtime phase (fields from
  // getFieldsToSerialize): the plugin holds no other state.
  nvinfer1::IPluginV3* createPlugin(char const* /*name*/, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase /*phase*/) noexcept override {
    return guard(P::kNAME, "createPlugin", static_cast<nvinfer1::IPluginV3*>(nullptr),
                 [&]() -> nvinfer1::IPluginV3* { return new P(P::fieldTable().parse(fc)); });
  }
};

}  // namespace plugin
}  // namespace lowbit
