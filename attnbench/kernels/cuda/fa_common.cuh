// Shared device helpers for the attnbench CUDA FlashAttention kernels (no torch headers).
//
// Tensor-core building blocks (sm_80+): mma.sync.m16n8k16 (fp16/bf16 in, fp32 accumulate),
// ldmatrix (plain and .trans), cp.async 16-byte copies with zero-fill, and a tile loader for
// (rows x D) tiles of the (B, S, H, D) layout into shared memory rows padded by 16 bytes
// (row stride D + 8 elements: the 8 rows an ldmatrix phase reads fall in 8 distinct 16-byte
// bank groups, so ldmatrix and the fragment stores are bank-conflict free).
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), g = lane / 4, t = lane % 4:
//   A 16x16 (row): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B 16x8  (col): b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8.., n g)
//   C 16x8  fp32 : c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1)
// so the C fragments of two adjacent n-tiles of S, packed to 16 bits, are the A fragment of P
// for the next product (P V) without touching shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fa_params.h"

namespace attnbench {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- element types ------------------------------------------------------------------------
template <typename T>
struct Pack;

template <>
struct Pack<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};

template <>
struct Pack<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) {
    return __float2bfloat16_rn(x);
  }
};

// D (fp32, 16x8) += A (16x16) * B (16x8)
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4],
                                                 uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- shared memory loads -------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, r[i] receives it.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// Row-major tile at `s` (row stride ld elements). Lane addresses for:
//  * an A operand 16x16 at (r0, c0)                     -> ldsm_x4 gives a[0..3]
//  * a B operand "rows are n, contiguous k" (K in Q K^T) -> ldsm_x4 at (n0, k0) gives b0,b1 of
//    n-tile n0 in r[0], r[1] and of n-tile n0+8 in r[2], r[3]
//  * a B operand "rows are k, contiguous n" (V in P V)   -> ldsm_x4_t at (k0, n0) gives the same
template <typename T>
__device__ __forceinline__ const T* a_addr(const T* s, int ld, int r0, int c0, int lane) {
  return s + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8;
}
template <typename T>
__device__ __forceinline__ const T* bn_addr(const T* s, int ld, int n0, int k0, int lane) {
  return s + (n0 + (lane >> 4) * 8 + (lane & 7)) * ld + k0 + ((lane >> 3) & 1) * 8;
}
template <typename T>
__device__ __forceinline__ const T* bk_addr(const T* s, int ld, int k0, int n0, int lane) {
  return s + (k0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * ld + n0 + (lane >> 4) * 8;
}
// A operand 16x16 whose storage is transposed (rows of storage are k, contiguous m):
// ldsm_x4_t at (k0, m0) gives a[0..3].
template <typename T>
__device__ __forceinline__ const T* at_addr(const T* s, int ld, int k0, int m0, int lane) {
  return s + (k0 + (lane >> 4) * 8 + (lane & 7)) * ld + m0 + ((lane >> 3) & 1) * 8;
}

// ---- cp.async ------------------------------------------------------------------------------
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
               "l"(gmem), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Copy rows [0, rows) of a (rows x D) tile (global row stride `gstride` elements) into shared
// memory with row stride D + 8; rows >= valid are zero-filled (never read from global).
template <typename T, int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile_async(T* s, const T* g, int64_t gstride, int valid,
                                                int tid) {
  constexpr int CPR = D / 8;  // 16-byte chunks per row
  constexpr int LD = D + 8;
#pragma unroll
  for (int c = tid; c < ROWS * CPR; c += NT) {
    const int r = c / CPR, col = (c % CPR) * 8;
    const bool ok = r < valid;
    cp_async16(s + r * LD + col, ok ? g + r * gstride + col : g, ok);
  }
}

// Store a warp's 16 rows of a padded shared tile to global (16-byte stores), rows < valid only.
template <typename T, int D>
__device__ __forceinline__ void store_rows16(T* g, int64_t gstride, const T* s, int valid,
                                             int lane) {
  constexpr int CPR = D / 8;
  constexpr int LD = D + 8;
#pragma unroll
  for (int c = lane; c < 16 * CPR; c += 32) {
    const int r = c / CPR, col = (c % CPR) * 8;
    if (r < valid) {
      *reinterpret_cast<uint4*>(g + r * gstride + col) =
          *reinterpret_cast<const uint4*>(s + r * LD + col);
    }
  }
}

// Write a warp's C fragments (16 rows x NT8*8 cols, fp32) times `mul[row half]` into a padded
// shared tile of T at rows r0.. (32-bit stores; conflict free with the D + 8 stride).
template <typename T, int NT8, int LD>
__device__ __forceinline__ void frag_to_smem(T* s, int r0, const float (&acc)[NT8][4],
                                             float mul0, float mul1, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < NT8; ++j) {
    *reinterpret_cast<uint32_t*>(s + (r0 + g) * LD + j * 8 + 2 * t) =
        Pack<T>::pack(acc[j][0] * mul0, acc[j][1] * mul0);
    *reinterpret_cast<uint32_t*>(s + (r0 + g + 8) * LD + j * 8 + 2 * t) =
        Pack<T>::pack(acc[j][2] * mul1, acc[j][3] * mul1);
  }
}

// A fragment of the k-th 16-column slice of a C-fragment array (two adjacent n-tiles).
template <typename T, int NT8>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c)[NT8][4], int k) {
  a[0] = Pack<T>::pack(c[2 * k][0], c[2 * k][1]);
  a[1] = Pack<T>::pack(c[2 * k][2], c[2 * k][3]);
  a[2] = Pack<T>::pack(c[2 * k + 1][0], c[2 * k + 1][1]);
  a[3] = Pack<T>::pack(c[2 * k + 1][2], c[2 * k + 1][3]);
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Key `j` is visible to query `i` (bottom-right causal: j <= i + sk - sq).
__device__ __forceinline__ bool visible(int i, int j, const FaParams& p) {
  return j < p.sk && i < p.sq && (!p.causal || j <= i + p.sk - p.sq);
}

}  // namespace attnbench
