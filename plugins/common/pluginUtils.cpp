// See pluginUtils.h.
#include "common/pluginUtils.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>

#include "common/status.h"

namespace lowbit {
namespace plugin {

// ------------------------------------------------------------------------------------------------
// Logging
// ------------------------------------------------------------------------------------------------

namespace {

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder = nullptr;

char const* severityName(nvinfer1::ILogger::Severity s) noexcept {
  switch (s) {
    case nvinfer1::ILogger::Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case nvinfer1::ILogger::Severity::kERROR: return "ERROR";
    case nvinfer1::ILogger::Severity::kWARNING: return "WARNING";
    case nvinfer1::ILogger::Severity::kINFO: return "INFO";
    case nvinfer1::ILogger::Severity::kVERBOSE: return "VERBOSE";
  }
  return "?";
}

}  // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
  std::lock_guard<std::mutex> lock(gLoggerMutex);
  if (gLoggerFinder == nullptr && finder != nullptr) gLoggerFinder = finder;
}

nvinfer1::ILogger* pluginLogger() noexcept {
  {
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    if (gLoggerFinder != nullptr) {
      try {
        if (nvinfer1::ILogger* l = gLoggerFinder->findLogger()) return l;
      } catch (...) {
        // findLogger is not noexcept; fall through to the global logger.
      }
    }
  }
  // Loaded with dlopen/ctypes (static registration): no finder; TensorRT's global logger is the
  // one the application gave its builder or runtime.
  return ::getLogger();
}

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept {
  try {
    std::string const text = "[lowbit plugins] " + message;
    if (nvinfer1::ILogger* l = pluginLogger()) {
      l->log(severity, text.c_str());
    } else {
      std::fprintf(stderr, "%s: %s\n", severityName(severity), text.c_str());
    }
  } catch (...) {
    std::fprintf(stderr, "[lowbit plugins] (message lost: out of memory)\n");
  }
}

// ------------------------------------------------------------------------------------------------
// Checks
// ------------------------------------------------------------------------------------------------

void throwPluginError(std::string const& message) { throw PluginError(message); }

void reportError(char const* plugin, char const* method, char const* what) noexcept {
  try {
    logMessage(nvinfer1::ILogger::Severity::kERROR,
               std::string(plugin) + "::" + method + ": " + what);
  } catch (...) {
    std::fprintf(stderr, "[lowbit plugins] %s::%s: %s\n", plugin, method, what);
  }
}

// ------------------------------------------------------------------------------------------------
// Plugin fields
// ------------------------------------------------------------------------------------------------

char const* fieldTypeName(nvinfer1::PluginFieldType type) noexcept {
  using T = nvinfer1::PluginFieldType;
  switch (type) {
    case T::kFLOAT16: return "kFLOAT16";
    case T::kFLOAT32: return "kFLOAT32";
    case T::kFLOAT64: return "kFLOAT64";
    case T::kINT8: return "kINT8";
    case T::kINT16: return "kINT16";
    case T::kINT32: return "kINT32";
    case T::kCHAR: return "kCHAR";
    case T::kDIMS: return "kDIMS";
    case T::kUNKNOWN: return "kUNKNOWN";
    case T::kBF16: return "kBF16";
    case T::kINT64: return "kINT64";
    case T::kFP8: return "kFP8";
    case T::kINT4: return "kINT4";
    default: return "(unlisted PluginFieldType)";
  }
}

namespace {

std::string knownList(std::vector<PluginFieldParser::Known> const& known) {
  std::string s;
  for (auto const& k : known) {
    if (!s.empty()) s += ", ";
    s += k.name;
    s += k.kind == FieldKind::kINT ? " (int)" : " (float)";
  }
  return s.empty() ? "(none)" : s;
}

// Reads one integer of an integer-typed field; false when the type is not an integer type.
bool readInteger(nvinfer1::PluginField const& f, int64_t& out) {
  using T = nvinfer1::PluginFieldType;
  switch (f.type) {
    case T::kINT8: out = *static_cast<int8_t const*>(f.data); return true;
    case T::kINT16: out = *static_cast<int16_t const*>(f.data); return true;
    case T::kINT32: out = *static_cast<int32_t const*>(f.data); return true;
    case T::kINT64: out = *static_cast<int64_t const*>(f.data); return true;
    default: return false;
  }
}

bool readFloat(nvinfer1::PluginField const& f, double& out) {
  using T = nvinfer1::PluginFieldType;
  switch (f.type) {
    case T::kFLOAT32: out = *static_cast<float const*>(f.data); return true;
    case T::kFLOAT64: out = *static_cast<double const*>(f.data); return true;
    default: return false;
  }
}

}  // namespace

PluginFieldParser::PluginFieldParser(char const* pluginName, std::vector<Known> known,
                                     nvinfer1::PluginFieldCollection const* fc)
    : mPlugin(pluginName), mKnown(std::move(known)) {
  if (fc == nullptr) return;  // no fields given: only the required-field checks below can fail
  LOWBIT_PLUGIN_CHECK(fc->nbFields >= 0 && (fc->nbFields == 0 || fc->fields != nullptr),
                      mPlugin << ": malformed PluginFieldCollection (nbFields = " << fc->nbFields
                              << ", fields " << (fc->fields ? "set" : "null") << ")");
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    nvinfer1::PluginField const& f = fc->fields[i];
    LOWBIT_PLUGIN_CHECK(f.name != nullptr, mPlugin << ": field " << i << " has no name");
    std::string const name = f.name;
    auto it = std::find_if(mKnown.begin(), mKnown.end(),
                           [&](Known const& k) { return name == k.name; });
    LOWBIT_PLUGIN_CHECK(it != mKnown.end(), mPlugin << ": unknown field '" << name
                                                    << "'; expected one of: " << knownList(mKnown));
    LOWBIT_PLUGIN_CHECK(mInts.count(name) == 0 && mFloats.count(name) == 0,
                        mPlugin << ": field '" << name << "' given twice");
    LOWBIT_PLUGIN_CHECK(f.length == 1 && f.data != nullptr,
                        mPlugin << ": field '" << name << "' must hold exactly 1 value, found length "
                                << f.length << (f.data ? "" : " and no data"));
    if (it->kind == FieldKind::kINT) {
      int64_t v = 0;
      LOWBIT_PLUGIN_CHECK(readInteger(f, v), mPlugin << ": field '" << name
                                                     << "' must be an integer (kINT32), found "
                                                     << fieldTypeName(f.type));
      LOWBIT_PLUGIN_CHECK(v >= std::numeric_limits<int32_t>::min() &&
                              v <= std::numeric_limits<int32_t>::max(),
                          mPlugin << ": field '" << name << "' = " << v << " does not fit int32");
      mInts[name] = static_cast<int32_t>(v);
    } else {
      double v = 0;
      LOWBIT_PLUGIN_CHECK(readFloat(f, v), mPlugin << ": field '" << name
                                                   << "' must be a float (kFLOAT32), found "
                                                   << fieldTypeName(f.type));
      mFloats[name] = static_cast<float>(v);
    }
  }
}

PluginFieldParser::Known const& PluginFieldParser::knownField(char const* name,
                                                               FieldKind kind) const {
  auto it = std::find_if(mKnown.begin(), mKnown.end(),
                         [&](Known const& k) { return std::strcmp(name, k.name) == 0; });
  LOWBIT_PLUGIN_CHECK(it != mKnown.end() && it->kind == kind,
                      mPlugin << ": internal error: field '" << name
                              << "' read with a kind it was not declared with");
  return *it;
}

bool PluginFieldParser::has(char const* name) const {
  return mInts.count(name) != 0 || mFloats.count(name) != 0;
}

int32_t PluginFieldParser::requiredInt(char const* name) const {
  knownField(name, FieldKind::kINT);
  auto it = mInts.find(name);
  LOWBIT_PLUGIN_CHECK(it != mInts.end(),
                      mPlugin << ": required int field '" << name << "' is missing");
  return it->second;
}

int32_t PluginFieldParser::optionalInt(char const* name, int32_t fallback) const {
  knownField(name, FieldKind::kINT);
  auto it = mInts.find(name);
  return it == mInts.end() ? fallback : it->second;
}

float PluginFieldParser::requiredFloat(char const* name) const {
  knownField(name, FieldKind::kFLOAT);
  auto it = mFloats.find(name);
  LOWBIT_PLUGIN_CHECK(it != mFloats.end(),
                      mPlugin << ": required float field '" << name << "' is missing");
  return it->second;
}

float PluginFieldParser::optionalFloat(char const* name, float fallback) const {
  knownField(name, FieldKind::kFLOAT);
  auto it = mFloats.find(name);
  return it == mFloats.end() ? fallback : it->second;
}

// ------------------------------------------------------------------------------------------------
// Tensor dtypes
// ------------------------------------------------------------------------------------------------

char const* dataTypeName(nvinfer1::DataType type) noexcept {
  using T = nvinfer1::DataType;
  switch (type) {
    case T::kFLOAT: return "float32";
    case T::kHALF: return "float16";
    case T::kINT8: return "int8";
    case T::kINT32: return "int32";
    case T::kBOOL: return "bool";
    case T::kUINT8: return "uint8";
    case T::kFP8: return "fp8";
    case T::kBF16: return "bfloat16";
    case T::kINT64: return "int64";
    case T::kINT4: return "int4";
    default: return "(other DataType)";
  }
}

namespace {

bool allowed(TensorSpec const& spec, nvinfer1::DataType t) {
  return std::find(spec.types.begin(), spec.types.end(), t) != spec.types.end();
}

std::string typeList(TensorSpec const& spec) {
  std::string s;
  for (auto t : spec.types) {
    if (!s.empty()) s += " or ";
    s += dataTypeName(t);
  }
  return s;
}

}  // namespace

bool supportsCombination(IoSpec const& io, int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                         int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (inOut == nullptr || nbInputs != static_cast<int32_t>(io.inputs.size()) ||
      nbOutputs != static_cast<int32_t>(io.outputs.size()) || pos < 0 ||
      pos >= nbInputs + nbOutputs) {
    return false;
  }
  nvinfer1::PluginTensorDesc const& d = inOut[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  TensorSpec const& spec = pos < nbInputs ? io.inputs[pos] : io.outputs[pos - nbInputs];
  if (!allowed(spec, d.type)) return false;
  // TensorRT asks position by position; earlier positions are already fixed, so an aliased output
  // can require exactly its input's dtype.
  if (pos >= nbInputs && spec.aliasOf >= 0) return d.type == inOut[spec.aliasOf].desc.type;
  return true;
}

void checkCounts(char const* plugin, IoSpec const& io, int32_t nbInputs, int32_t nbOutputs) {
  LOWBIT_PLUGIN_CHECK(nbInputs == static_cast<int32_t>(io.inputs.size()),
                      plugin << ": expected " << io.inputs.size()
                             << " inputs for these fields, found " << nbInputs);
  LOWBIT_PLUGIN_CHECK(nbOutputs == static_cast<int32_t>(io.outputs.size()),
                      plugin << ": expected " << io.outputs.size()
                             << " outputs for these fields, found " << nbOutputs);
}

void checkInputTypes(char const* plugin, IoSpec const& io, nvinfer1::DataType const* inputTypes,
                     int32_t nbInputs) {
  LOWBIT_PLUGIN_CHECK(nbInputs == static_cast<int32_t>(io.inputs.size()),
                      plugin << ": expected " << io.inputs.size()
                             << " inputs for these fields, found " << nbInputs);
  for (int32_t i = 0; i < nbInputs; ++i) {
    TensorSpec const& s = io.inputs[i];
    LOWBIT_PLUGIN_CHECK(allowed(s, inputTypes[i]), plugin << ": input " << i << " '" << s.name
                                                          << "' must be " << typeList(s)
                                                          << ", found "
                                                          << dataTypeName(inputTypes[i]));
  }
}

void outputTypes(char const* plugin, IoSpec const& io, nvinfer1::DataType* outTypes,
                 int32_t nbOutputs, nvinfer1::DataType const* inputTypes, int32_t nbInputs) {
  checkCounts(plugin, io, nbInputs, nbOutputs);
  checkInputTypes(plugin, io, inputTypes, nbInputs);
  for (int32_t o = 0; o < nbOutputs; ++o) {
    TensorSpec const& s = io.outputs[o];
    if (s.aliasOf >= 0) {
      outTypes[o] = inputTypes[s.aliasOf];
    } else {
      LOWBIT_PLUGIN_CHECK(s.types.size() == 1, plugin << ": internal error: output '" << s.name
                                                      << "' lists several dtypes");
      outTypes[o] = s.types.front();
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Dims
// ------------------------------------------------------------------------------------------------

std::string dimsString(nvinfer1::Dims const& d) {
  std::ostringstream os;
  os << '[';
  for (int32_t i = 0; i < d.nbDims; ++i) os << (i ? ", " : "") << d.d[i];
  os << ']';
  return os.str();
}

void checkRank(char const* plugin, char const* tensor, nvinfer1::Dims const& d, int32_t rank) {
  LOWBIT_PLUGIN_CHECK(d.nbDims == rank, plugin << ": '" << tensor << "' must have rank " << rank
                                               << ", found shape " << dimsString(d));
}

void checkDim(char const* plugin, char const* tensor, nvinfer1::Dims const& d, int32_t axis,
              int64_t expected, char const* what) {
  int64_t const found = d.d[axis];
  if (found < 0 || expected < 0) return;
  LOWBIT_PLUGIN_CHECK(found == expected, plugin << ": '" << tensor << "' dimension " << axis
                                                << " must be " << what << " = " << expected
                                                << ", found " << found << " (shape "
                                                << dimsString(d) << ")");
}

int32_t dimAsInt(char const* tensor, nvinfer1::Dims const& d, int32_t axis) {
  int64_t const v = d.d[axis];
  LOWBIT_PLUGIN_CHECK(v >= 0 && v <= std::numeric_limits<int32_t>::max(),
                      "'" << tensor << "' dimension " << axis << " = " << v
                          << " is outside [0, INT32_MAX] (the kernels take int sizes)");
  return static_cast<int32_t>(v);
}

int32_t launchResult(char const* plugin, char const* launcher, int status,
                     std::string const& context) noexcept {
  if (status == LOWBIT_OK) return 0;
  try {
    std::string msg = std::string(launcher) + " failed: " + lowbit_status_string(status);
    if (status == LOWBIT_ERR_CUDA) msg += std::string(" (") + lowbit_last_cuda_error() + ")";
    msg += "; " + context;
    reportError(plugin, "enqueue", msg.c_str());
  } catch (...) {
    reportError(plugin, "enqueue", launcher);
  }
  return -1;
}

}  // namespace plugin
}  // namespace lowbit
