// The one place where the lowbit TensorRT plugin creators are listed (namespace "lowbit",
// version "1"; the ops of docs/engine-io.md). Two ways in, both served by this list:
//
//  1. Static registration (REGISTER_TENSORRT_PLUGIN): the creators register themselves when the
//     library is loaded -- ctypes.CDLL(path, RTLD_GLOBAL), dlopen, LD_PRELOAD, trtexec
//     --staticPlugins, Triton's tensorrt backend `plugins=` / LD_PRELOAD.
//  2. TensorRT's plugin-library entry points, for IPluginRegistry::loadLibrary, trtexec
//     --dynamicPlugins and engines serialized with their plugin library: extern "C" getCreators and
//     setLoggerFinder (the only symbols exported, exports.map).
//
// loadLibrary dlopens the library (running the static registrations of 1) and then registers
// what getCreators returns; it fails if any of those is registered already (NvInferRuntimeCommon.h).
// So with static registration on (the default), getCreators returns no creators -- they are in
// the registry already -- and TensorRT only learns the logger. Built with
// -DLOWBIT_PLUGINS_STATIC_REGISTRATION=OFF, nothing registers at load time and getCreators
// returns all of them (creators owned by loadLibrary, removed by deregisterLibrary).
#include <NvInferRuntime.h>

#include "common/pluginUtils.h"
#include "kvAttention/kvAttentionPlugin.h"
#include "quantize/atomQuantPlugin.h"
#include "quantize/quantInt8Plugin.h"
#include "w4a4Gemm/w4a4GemmPlugin.h"
#include "w8a8Gemm/w8a8GemmPlugin.h"

// TENSORRTAPI is empty outside TensorRT's own build; the library is compiled with hidden
// visibility, so the two entry points say so themselves (exports.map then keeps only them).
#define LOWBIT_PLUGIN_EXPORT __attribute__((visibility("default")))

#ifndef LOWBIT_PLUGINS_STATIC_REGISTRATION
#define LOWBIT_PLUGINS_STATIC_REGISTRATION 1
#endif

using lowbit::plugin::AtomQuantPluginCreator;
using lowbit::plugin::Kv4AttentionPluginCreator;
using lowbit::plugin::QuantInt8PluginCreator;
using lowbit::plugin::W4A4GemmPluginCreator;
using lowbit::plugin::W8A8GemmPluginCreator;

// THE list: one creator per op of docs/engine-io.md (tests/plugins/test_registry.py checks that
// the two agree).
#define LOWBIT_PLUGIN_CREATORS(X) \
  X(QuantInt8PluginCreator)       \
  X(AtomQuantPluginCreator)       \
  X(W8A8GemmPluginCreator)        \
  X(W4A4GemmPluginCreator)        \
  X(Kv4AttentionPluginCreator)

#if LOWBIT_PLUGINS_STATIC_REGISTRATION
#define LOWBIT_REGISTER_STATIC(Creator) REGISTER_TENSORRT_PLUGIN(Creator);
LOWBIT_PLUGIN_CREATORS(LOWBIT_REGISTER_STATIC)
#undef LOWBIT_REGISTER_STATIC
#endif

namespace {

#define LOWBIT_COUNT_ONE(Creator) +1
constexpr int32_t kNbCreators = 0 LOWBIT_PLUGIN_CREATORS(LOWBIT_COUNT_ONE);
#undef LOWBIT_COUNT_ONE

#if !LOWBIT_PLUGINS_STATIC_REGISTRATION
// Instances handed to loadLibrary; they live as long as the library stays loaded.
#define LOWBIT_DEFINE_INSTANCE(Creator) Creator g##Creator;
LOWBIT_PLUGIN_CREATORS(LOWBIT_DEFINE_INSTANCE)
#undef LOWBIT_DEFINE_INSTANCE

#define LOWBIT_LIST_INSTANCE(Creator) &g##Creator,
nvinfer1::IPluginCreatorInterface* const gCreators[] = {LOWBIT_PLUGIN_CREATORS(LOWBIT_LIST_INSTANCE)};
#undef LOWBIT_LIST_INSTANCE
static_assert(sizeof(gCreators) / sizeof(gCreators[0]) == kNbCreators, "creator list");
#else
static_assert(kNbCreators > 0, "creator list");
#endif

}  // namespace

extern "C" LOWBIT_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
#if LOWBIT_PLUGINS_STATIC_REGISTRATION
  // Registered when the library was loaded (see the top of this file): nothing left to register.
  static nvinfer1::IPluginCreatorInterface* const kNone[1] = {nullptr};
  nbCreators = 0;
  return kNone;
#else
  nbCreators = kNbCreators;
  return gCreators;
#endif
}

extern "C" LOWBIT_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  lowbit::plugin::setLoggerFinder(finder);
}
