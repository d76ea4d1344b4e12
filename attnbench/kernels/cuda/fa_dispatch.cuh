// dtype x head-dim dispatch shared by the host launchers (fp16/bf16 x 64/128).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "fa_params.h"

#define FA_DISPATCH(P, BODY)                                         \
  do {                                                               \
    if ((P).d != 64 && (P).d != 128) return cudaErrorInvalidValue;   \
    if ((P).bf16) {                                                  \
      using T = __nv_bfloat16;                                       \
      if ((P).d == 64) {                                             \
        constexpr int D = 64;                                        \
        BODY;                                                        \
      } else {                                                       \
        constexpr int D = 128;                                       \
        BODY;                                                        \
      }                                                              \
    } else {                                                         \
      using T = __half;                                              \
      if ((P).d == 64) {                                             \
        constexpr int D = 64;                                        \
        BODY;                                                        \
      } else {                                                       \
        constexpr int D = 128;                                       \
        BODY;                                                        \
      }                                                              \
    }                                                                \
  } while (0)

namespace attnbench {

// Raise the dynamic shared-memory limit (needed above 48 KB) and launch.
template <typename Kernel>
cudaError_t launch(Kernel kernel, dim3 grid, dim3 block, int smem, cudaStream_t stream,
                   const FaParams& p) {
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
  }
  kernel<<<grid, block, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace attnbench
