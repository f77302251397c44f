#include "common/status.h"

#include "common/cudaCheck.h"

namespace lowbit {
thread_local const char* tLastCudaError = "";
}  // namespace lowbit

extern "C" const char* lowbit_status_string(int status) {
  switch (status) {
    case LOWBIT_OK: return "ok";
    case LOWBIT_ERR_NULL_POINTER: return "null operand pointer";
    case LOWBIT_ERR_BAD_SHAPE: return "bad shape";
    case LOWBIT_ERR_DIVISIBILITY: return "divisibility rule broken";
    case LOWBIT_ERR_MISALIGNED: return "operand not 16-byte aligned";
    case LOWBIT_ERR_UNSUPPORTED: return "unsupported configuration";
    case LOWBIT_ERR_CUDA: return "CUDA runtime error";
    default: return "unknown status";
  }
}

extern "C" const char* lowbit_last_cuda_error(void) { return lowbit::tLastCudaError; }
