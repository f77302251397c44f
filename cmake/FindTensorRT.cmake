# FindTensorRT: TensorRT's C++ headers and libnvinfer, the way users install them.
#
# Searched, in order (the first hit wins):
#   TensorRT_ROOT (CMake or environment variable), TENSORRT_ROOT (environment): a tarball
#       extraction or any prefix with include/ and lib/ (lib64/, targets/x86_64-linux/lib/);
#   TRT_LIBPATH (environment): the tarball's lib/ folder (its ../include is searched too);
#   pip wheels: <site-packages>/tensorrt_libs (libnvinfer.so.N) and <site-packages>/tensorrt/include
#       when a wheel ships headers (most do not: then headers must come from one of the others);
#       site-packages is asked of TensorRT_PYTHON_EXECUTABLE, Python3_EXECUTABLE or python3;
#   Debian/Ubuntu packages (libnvinfer-dev): /usr/include/x86_64-linux-gnu,
#       /usr/lib/x86_64-linux-gnu (and the aarch64 equivalents), then CMake's default prefixes.
#
# Components: nvinfer (the library). find_package(TensorRT) requires it;
# find_package(TensorRT OPTIONAL_COMPONENTS nvinfer) succeeds with headers alone (compile checks
# where TensorRT cannot be installed).
#
# Result variables:
#   TensorRT_FOUND, TensorRT_nvinfer_FOUND
#   TensorRT_INCLUDE_DIR, TensorRT_LIBRARY (libnvinfer, may be empty without the component)
#   TensorRT_VERSION (MAJOR.MINOR.PATCH from NvInferVersion.h), TensorRT_VERSION_MAJOR/_MINOR/_PATCH
# Imported targets:
#   TensorRT::headers   INTERFACE, the include directory (and CUDA's, which NvInferRuntimeBase.h
#                       includes) as SYSTEM
#   TensorRT::nvinfer   SHARED IMPORTED libnvinfer, linking TensorRT::headers (when found)

# ---- where to look ------------------------------------------------------------------------------
set(_trt_prefixes "")
foreach(_v TensorRT_ROOT)
  if(DEFINED ${_v} AND NOT "${${_v}}" STREQUAL "")
    list(APPEND _trt_prefixes "${${_v}}")
  endif()
endforeach()
foreach(_v TensorRT_ROOT TENSORRT_ROOT)
  if(DEFINED ENV{${_v}} AND NOT "$ENV{${_v}}" STREQUAL "")
    list(APPEND _trt_prefixes "$ENV{${_v}}")
  endif()
endforeach()

set(_trt_lib_hints "")
set(_trt_inc_hints "")
if(DEFINED ENV{TRT_LIBPATH} AND NOT "$ENV{TRT_LIBPATH}" STREQUAL "")
  list(APPEND _trt_lib_hints "$ENV{TRT_LIBPATH}")
  list(APPEND _trt_inc_hints "$ENV{TRT_LIBPATH}/../include")
endif()

# pip wheels: tensorrt_libs holds libnvinfer.so.N (no unversioned link, no headers).
set(_trt_python "")
foreach(_v TensorRT_PYTHON_EXECUTABLE Python3_EXECUTABLE)
  if(NOT _trt_python AND DEFINED ${_v} AND EXISTS "${${_v}}")
    set(_trt_python "${${_v}}")
  endif()
endforeach()
if(NOT _trt_python)
  find_program(TensorRT_PYTHON_EXECUTABLE NAMES python3 python DOC "Python asked for pip wheels")
  mark_as_advanced(TensorRT_PYTHON_EXECUTABLE)
  if(TensorRT_PYTHON_EXECUTABLE)
    set(_trt_python "${TensorRT_PYTHON_EXECUTABLE}")
  endif()
endif()
if(_trt_python)
  execute_process(
    COMMAND "${_trt_python}" -c
      "import importlib.util as u, os\nfor m in ('tensorrt_libs', 'tensorrt'):\n  s = u.find_spec(m)\n  if s and s.submodule_search_locations: print(list(s.submodule_search_locations)[0])"
    OUTPUT_VARIABLE _trt_wheel_dirs
    ERROR_QUIET
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _trt_wheel_rc)
  if(_trt_wheel_rc EQUAL 0 AND _trt_wheel_dirs)
    string(REPLACE "\n" ";" _trt_wheel_dirs "${_trt_wheel_dirs}")
    foreach(_d IN LISTS _trt_wheel_dirs)
      list(APPEND _trt_lib_hints "${_d}")
      list(APPEND _trt_inc_hints "${_d}/include")
    endforeach()
  endif()
endif()

set(_trt_multiarch_inc /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu)
set(_trt_multiarch_lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu)

# ---- headers and version -------------------------------------------------------------------------
find_path(TensorRT_INCLUDE_DIR
  NAMES NvInfer.h NvInferVersion.h
  HINTS ${_trt_prefixes} ${_trt_inc_hints}
  PATH_SUFFIXES include
  PATHS ${_trt_multiarch_inc}
  DOC "TensorRT include directory (NvInfer.h)")

set(TensorRT_VERSION "")
if(TensorRT_INCLUDE_DIR AND EXISTS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h")
  file(READ "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _trt_version_h)
  foreach(_part MAJOR MINOR PATCH)
    # TensorRT >= 10.x: "#define TRT_MAJOR_ENTERPRISE 11" and NV_TENSORRT_MAJOR aliases it;
    # older headers define NV_TENSORRT_MAJOR as the number.
    set(_num "")
    if(_trt_version_h MATCHES "#define[ \t]+TRT_${_part}_ENTERPRISE[ \t]+([0-9]+)")
      set(_num "${CMAKE_MATCH_1}")
    elseif(_trt_version_h MATCHES "#define[ \t]+NV_TENSORRT_${_part}[ \t]+([0-9]+)")
      set(_num "${CMAKE_MATCH_1}")
    endif()
    set(TensorRT_VERSION_${_part} "${_num}")
  endforeach()
  if(NOT "${TensorRT_VERSION_MAJOR}" STREQUAL "" AND NOT "${TensorRT_VERSION_MINOR}" STREQUAL ""
     AND NOT "${TensorRT_VERSION_PATCH}" STREQUAL "")
    set(TensorRT_VERSION
        "${TensorRT_VERSION_MAJOR}.${TensorRT_VERSION_MINOR}.${TensorRT_VERSION_PATCH}")
  endif()
endif()

# ---- libnvinfer ----------------------------------------------------------------------------------
set(_trt_lib_names nvinfer)
if(TensorRT_VERSION_MAJOR)
  # pip wheels and runtime-only Debian packages carry only libnvinfer.so.<major>
  list(APPEND _trt_lib_names "libnvinfer.so.${TensorRT_VERSION_MAJOR}")
endif()
find_library(TensorRT_LIBRARY
  NAMES ${_trt_lib_names}
  HINTS ${_trt_prefixes} ${_trt_lib_hints}
  PATH_SUFFIXES lib lib64 targets/x86_64-linux/lib targets/aarch64-linux/lib
  PATHS ${_trt_multiarch_lib}
  DOC "libnvinfer")
if(TensorRT_LIBRARY)
  set(TensorRT_nvinfer_FOUND TRUE)
else()
  set(TensorRT_nvinfer_FOUND FALSE)
endif()
mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_LIBRARY)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT
  REQUIRED_VARS TensorRT_INCLUDE_DIR TensorRT_VERSION
  VERSION_VAR TensorRT_VERSION
  HANDLE_COMPONENTS)

# ---- imported targets ----------------------------------------------------------------------------
if(TensorRT_FOUND AND NOT TARGET TensorRT::headers)
  add_library(TensorRT::headers INTERFACE IMPORTED)
  set(_trt_inc "${TensorRT_INCLUDE_DIR}")
  # NvInferRuntimeBase.h includes <cuda_runtime_api.h>.
  if(CMAKE_CUDA_TOOLKIT_INCLUDE_DIRECTORIES)
    list(APPEND _trt_inc ${CMAKE_CUDA_TOOLKIT_INCLUDE_DIRECTORIES})
  else()
    find_package(CUDAToolkit QUIET)
    if(CUDAToolkit_FOUND)
      list(APPEND _trt_inc ${CUDAToolkit_INCLUDE_DIRS})
    endif()
  endif()
  # Imported targets' include directories are SYSTEM: TensorRT's own deprecation notes and
  # warnings do not fail -Werror builds of code that includes them.
  set_target_properties(TensorRT::headers PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_trt_inc}")
endif()
if(TensorRT_FOUND AND TensorRT_nvinfer_FOUND AND NOT TARGET TensorRT::nvinfer)
  add_library(TensorRT::nvinfer SHARED IMPORTED)
  set_target_properties(TensorRT::nvinfer PROPERTIES
    IMPORTED_LOCATION "${TensorRT_LIBRARY}"
    INTERFACE_LINK_LIBRARIES TensorRT::headers)
endif()

unset(_trt_prefixes)
unset(_trt_lib_hints)
unset(_trt_inc_hints)
unset(_trt_python)
unset(_trt_wheel_dirs)
unset(_trt_wheel_rc)
unset(_trt_version_h)
unset(_trt_inc)
