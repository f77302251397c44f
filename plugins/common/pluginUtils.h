// TensorRT plugin helpers shared by every lowbit plugin (IPluginV3 glue only; nothing scheme- or
// model-specific here):
//   - logging through the ILogger TensorRT hands the library (setLoggerFinder), else TensorRT's
//     global logger, else stderr;
//   - LOWBIT_PLUGIN_CHECK (throws PluginError) and guard(), which catches at every noexcept edge
//     and reports through the logger;
//   - PluginFieldParser: plugin fields by name, type-checked, with messages naming expected vs found;
//   - FieldTable: one table per plugin that drives getFieldNames, parsing and getFieldsToSerialize;
//   - TensorSpec: the allowed dtypes of each input/output, the one typed dispatch used by
//     supportsFormatCombination, getOutputDataTypes, configurePlugin and onShapeChange;
//   - small Dims checks that accept -1 (unknown at build time) as a wildcard.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lowbit {
namespace plugin {

constexpr char const* kPLUGIN_NAMESPACE = "lowbit";
constexpr char const* kPLUGIN_VERSION = "1";

// ------------------------------------------------------------------------------------------------
// Logging
// ------------------------------------------------------------------------------------------------

// Remembers the finder TensorRT passes to the library's extern "C" setLoggerFinder (first non-null
// wins, as TensorRT's own plugin libraries do). Thread-safe.
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

// The logger to report to: the finder's, else TensorRT's global logger (::getLogger), else null
// (messages then go to stderr).
nvinfer1::ILogger* pluginLogger() noexcept;

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

// ------------------------------------------------------------------------------------------------
// Checks: validate -> throw; catch at every noexcept edge
// ------------------------------------------------------------------------------------------------

class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throwPluginError(std::string const& message);

// LOWBIT_PLUGIN_CHECK(K % 8 == 0, "K = " << K << " must be a multiple of 8");
#define LOWBIT_PLUGIN_CHECK(cond, streamed)                        \
  do {                                                             \
    if (!(cond)) {                                                 \
      std::ostringstream lowbitCheckStream_;                       \
      lowbitCheckStream_ << streamed;                              \
      ::lowbit::plugin::throwPluginError(lowbitCheckStream_.str()); \
    }                                                              \
  } while (0)

// Logs "<plugin>::<method>: <what>" at kERROR.
void reportError(char const* plugin, char const* method, char const* what) noexcept;

// Runs fn() and returns its result; an exception is reported (plugin and method named) and
// onError returned instead. Every noexcept entry point that can fail goes through this.
template <typename R, typename F>
R guard(char const* plugin, char const* method, R onError, F&& fn) noexcept {
  try {
    return fn();
  } catch (std::exception const& e) {
    reportError(plugin, method, e.what());
  } catch (...) {
    reportError(plugin, method, "unknown exception");
  }
  return onError;
}

// ------------------------------------------------------------------------------------------------
// Plugin fields
// ------------------------------------------------------------------------------------------------

enum class FieldKind { kINT, kFLOAT };

char const* fieldTypeName(nvinfer1::PluginFieldType type) noexcept;

// Parses a PluginFieldCollection against a list of known fields. Ints arrive as kINT32 from the
// ONNX parser and from deserialization; kINT8/16/64 are accepted when the value fits int32.
// Floats: kFLOAT32 or kFLOAT64. Every field must have length 1. Unknown or repeated names, wrong
// types and missing required fields throw PluginError naming the plugin, the field, what was
// expected and what was found.
class PluginFieldParser {
 public:
  struct Known {
    char const* name;
    FieldKind kind;
  };

  PluginFieldParser(char const* pluginName, std::vector<Known> known,
                    nvinfer1::PluginFieldCollection const* fc);

  bool has(char const* name) const;
  int32_t requiredInt(char const* name) const;
  int32_t optionalInt(char const* name, int32_t fallback) const;
  float requiredFloat(char const* name) const;
  float optionalFloat(char const* name, float fallback) const;

 private:
  Known const& knownField(char const* name, FieldKind kind) const;

  std::string mPlugin;
  std::vector<Known> mKnown;
  std::map<std::string, int32_t> mInts;
  std::map<std::string, float> mFloats;
};

enum class Presence { kREQUIRED, kOPTIONAL };

// One plugin field bound to a member of the plugin's parameter struct.
template <typename Params>
struct FieldDef {
  char const* name;
  FieldKind kind;
  int32_t Params::*intMember;
  float Params::*floatMember;
  Presence presence;  // kOPTIONAL: the Params{} default stays when the field is absent
};

template <typename Params>
constexpr FieldDef<Params> intField(char const* name, int32_t Params::*member,
                                    Presence presence = Presence::kREQUIRED) {
  return FieldDef<Params>{name, FieldKind::kINT, member, nullptr, presence};
}

template <typename Params>
constexpr FieldDef<Params> floatField(char const* name, float Params::*member,
                                      Presence presence = Presence::kREQUIRED) {
  return FieldDef<Params>{name, FieldKind::kFLOAT, nullptr, member, presence};
}

// The single list of a plugin's fields: the creator's getFieldNames, parsing in createPlugin and
// getFieldsToSerialize all read it, so they cannot drift apart.
template <typename Params>
class FieldTable {
 public:
  FieldTable(char const* pluginName, std::vector<FieldDef<Params>> defs)
      : mPlugin(pluginName), mDefs(std::move(defs)) {
    for (auto const& d : mDefs) {
      auto type = d.kind == FieldKind::kINT ? nvinfer1::PluginFieldType::kINT32
                                            : nvinfer1::PluginFieldType::kFLOAT32;
      mNames.emplace_back(d.name, nullptr, type, 1);
    }
    mNameCollection.nbFields = static_cast<int32_t>(mNames.size());
    mNameCollection.fields = mNames.data();
  }

  nvinfer1::PluginFieldCollection const* fieldNames() const noexcept { return &mNameCollection; }

  Params parse(nvinfer1::PluginFieldCollection const* fc) const {
    std::vector<PluginFieldParser::Known> known;
    for (auto const& d : mDefs) known.push_back({d.name, d.kind});
    PluginFieldParser parser(mPlugin, known, fc);
    Params p{};
    for (auto const& d : mDefs) {
      bool const required = d.presence == Presence::kREQUIRED;
      if (d.kind == FieldKind::kINT) {
        p.*(d.intMember) = required ? parser.requiredInt(d.name)
                                    : parser.optionalInt(d.name, p.*(d.intMember));
      } else {
        p.*(d.floatMember) = required ? parser.requiredFloat(d.name)
                                      : parser.optionalFloat(d.name, p.*(d.floatMember));
      }
    }
    return p;
  }

  // Fills storage with one field per definition, pointing into p (which must outlive the use of
  // the returned collection: the plugin object owns both).
  nvinfer1::PluginFieldCollection const* serialize(Params const& p,
                                                   std::vector<nvinfer1::PluginField>& storage,
                                                   nvinfer1::PluginFieldCollection& fc) const {
    storage.clear();
    for (auto const& d : mDefs) {
      if (d.kind == FieldKind::kINT) {
        storage.emplace_back(d.name, &(p.*(d.intMember)), nvinfer1::PluginFieldType::kINT32, 1);
      } else {
        storage.emplace_back(d.name, &(p.*(d.floatMember)), nvinfer1::PluginFieldType::kFLOAT32,
                             1);
      }
    }
    fc.nbFields = static_cast<int32_t>(storage.size());
    fc.fields = storage.data();
    return &fc;
  }

  // "name=value ..." for getMetadataString and messages.
  std::string describe(Params const& p) const {
    std::ostringstream os;
    for (auto const& d : mDefs) {
      if (&d != &mDefs.front()) os << ' ';
      os << d.name << '=';
      if (d.kind == FieldKind::kINT) {
        os << p.*(d.intMember);
      } else {
        os << p.*(d.floatMember);
      }
    }
    return os.str();
  }

 private:
  char const* mPlugin;
  std::vector<FieldDef<Params>> mDefs;
  std::vector<nvinfer1::PluginField> mNames;
  nvinfer1::PluginFieldCollection mNameCollection{};
};

// ------------------------------------------------------------------------------------------------
// Tensor dtypes: one typed dispatch table per plugin
// ------------------------------------------------------------------------------------------------

char const* dataTypeName(nvinfer1::DataType type) noexcept;

// An input or output: its name (as in docs/engine-io.md) and the dtypes it may have (linear
// format only). aliasOf >= 0 marks an output that aliases that input (same dtype and shape).
struct TensorSpec {
  char const* name;
  std::vector<nvinfer1::DataType> types;
  int32_t aliasOf = -1;
};

struct IoSpec {
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
};

// supportsFormatCombination for a spec: linear format, a listed dtype, aliased outputs matching
// their input's dtype.
bool supportsCombination(IoSpec const& io, int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                         int32_t nbInputs, int32_t nbOutputs) noexcept;

// Throws unless nbInputs/nbOutputs match the spec and every input dtype is allowed.
void checkInputTypes(char const* plugin, IoSpec const& io, nvinfer1::DataType const* inputTypes,
                     int32_t nbInputs);
void checkCounts(char const* plugin, IoSpec const& io, int32_t nbInputs, int32_t nbOutputs);

// getOutputDataTypes for a spec: aliased outputs take their input's dtype, others the single
// dtype listed.
void outputTypes(char const* plugin, IoSpec const& io, nvinfer1::DataType* outTypes,
                 int32_t nbOutputs, nvinfer1::DataType const* inputTypes, int32_t nbInputs);

// ------------------------------------------------------------------------------------------------
// Dims checks (-1 = not known yet, accepted)
// ------------------------------------------------------------------------------------------------

std::string dimsString(nvinfer1::Dims const& d);

// Throws unless d has `rank` dimensions.
void checkRank(char const* plugin, char const* tensor, nvinfer1::Dims const& d, int32_t rank);

// Throws unless d.d[axis] == expected (either being -1 passes).
void checkDim(char const* plugin, char const* tensor, nvinfer1::Dims const& d, int32_t axis,
              int64_t expected, char const* what);

// d.d[axis] as int, throwing when it exceeds INT32_MAX (the launchers take int sizes).
int32_t dimAsInt(char const* tensor, nvinfer1::Dims const& d, int32_t axis);

// Maps a launcher's status to an enqueue result: 0 on LOWBIT_OK; otherwise logs
// "<plugin>::enqueue: <launcher> failed: <status string> [<cuda error>] (<context>)" and returns -1.
int32_t launchResult(char const* plugin, char const* launcher, int status,
                     std::string const& context) noexcept;

}  // namespace plugin
}  // namespace lowbit
