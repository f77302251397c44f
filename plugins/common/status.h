// Status codes returned by every lowbit launcher (C ABI). Launchers never abort or throw.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lowbitStatus {
  LOWBIT_OK = 0,
  LOWBIT_ERR_NULL_POINTER = 1,      // a required operand pointer is null
  LOWBIT_ERR_BAD_SHAPE = 2,         // a size is negative, zero where it must not be, or too large
  LOWBIT_ERR_DIVISIBILITY = 3,      // a divisibility rule in the kernel header is broken
  LOWBIT_ERR_MISALIGNED = 4,        // an operand is not 16-byte aligned where required
  LOWBIT_ERR_UNSUPPORTED = 5,       // valid request this build does not implement (dtype, group)
  LOWBIT_ERR_CUDA = 6               // the CUDA runtime reported an error (launch, attribute)
} lowbitStatus;

#define LOWBIT_API __attribute__((visibility("default")))

// Static string naming a status code (never null).
LOWBIT_API const char* lowbit_status_string(int status);
// Message of the last CUDA error seen by a launcher in this thread (empty if none).
LOWBIT_API const char* lowbit_last_cuda_error(void);

#ifdef __cplusplus
}
#endif
