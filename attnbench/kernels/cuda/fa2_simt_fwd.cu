// FlashAttention-2 forward on plain CUDA cores (fp32 FMAs, no tensor cores): the same
// algorithm as fa2_fwd.cu (Dao 2023, Algorithm 1), kept as the "what do tensor cores buy" point.
//
// One thread block per (64-query block, query head, batch), 256 threads as a 16 x 16 grid:
// thread (ty, tx) owns S rows 4ty..4ty+3 x columns 4tx..4tx+3 of each 64 x 64 score tile and
// O rows 4ty..4ty+3 x columns {4tx..4tx+3} + 64u. Q and K are held transposed in shared memory
// as fp32 ([d][row]) so both operands of S = Q K^T are float4 reads (broadcast for Q); P goes
// through shared memory to O += P V. The row max is reduced over the 16 threads of a row with
// xor shuffles (identical in every lane), the row sum is thread-partial until the end.
#include "fa_common.cuh"
#include "fa_dispatch.cuh"

namespace attnbench {
namespace {

constexpr int kSimtBR = 64, kSimtBC = 64, kSimtThreads = 256;

template <int D>
constexpr int simt_smem_floats() {
  return D * (kSimtBR + 4) + D * (kSimtBC + 4) + kSimtBC * (D + 4) + kSimtBR * (kSimtBC + 4);
}

// Rows [0, 64) of a (64 x D) tile -> fp32 shared memory, transposed (s[d * ld + row]).
template <typename T, int D>
__device__ __forceinline__ void load_t(float* s, int ld, const T* g, int64_t gstride, int valid,
                                       int tid) {
  for (int ci = tid; ci < 64 * D / 8; ci += kSimtThreads) {
    const int r = ci % 64, d0 = (ci / 64) * 8;
    uint4 raw = make_uint4(0, 0, 0, 0);
    if (r < valid) raw = *reinterpret_cast<const uint4*>(g + r * gstride + d0);
    const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) s[(d0 + i) * ld + r] = Pack<T>::to_float(x[i]);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kSimtThreads, 1) fa2_simt_fwd_kernel(const FaParams p) {
  constexpr int BR = kSimtBR, BC = kSimtBC, LDQ = BR + 4, LDK = BC + 4, LDV = D + 4,
                LDP = BC + 4, U = D / 64;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* sQ = reinterpret_cast<float*>(smem_raw);  // [D][LDQ]
  float* sK = sQ + D * LDQ;                         // [D][LDK]
  float* sV = sK + D * LDK;                         // [BC][LDV]
  float* sP = sV + BC * LDV;                        // [BR][LDP]

  const int m_block = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / (p.hq / p.hkv);
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const int m0 = m_block * BR, offset = p.sk - p.sq;
  const T* gq = static_cast<const T*>(p.q) + b * p.q_bs + h * p.q_hs + m0 * p.q_rs;
  const T* gk = static_cast<const T*>(p.k) + b * p.k_bs + hk * p.k_hs;
  const T* gv = static_cast<const T*>(p.v) + b * p.v_bs + hk * p.v_hs;

  int n_end = p.sk;
  if (p.causal) n_end = min(n_end, m0 + BR + offset);
  const int n_blocks = n_end > 0 ? (n_end + BC - 1) / BC : 0;
  load_t<T, D>(sQ, LDQ, gq, p.q_rs, p.sq - m0, tid);

  float acc[4][4 * U];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 4 * U; ++c) acc[r][c] = 0.f;
  float row_max[4], row_sum[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) row_max[r] = -INFINITY, row_sum[r] = 0.f;
  const float sl2 = p.scale * kLog2e;

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * BC;
    __syncthreads();  // previous tile fully consumed
    load_t<T, D>(sK, LDK, gk + n0 * p.k_rs, p.k_rs, p.sk - n0, tid);
    for (int ci = tid; ci < BC * D / 8; ci += kSimtThreads) {
      const int r = ci / (D / 8), d0 = (ci % (D / 8)) * 8;
      uint4 raw = make_uint4(0, 0, 0, 0);
      if (n0 + r < p.sk) raw = *reinterpret_cast<const uint4*>(gv + (n0 + r) * p.v_rs + d0);
      const T* x = reinterpret_cast<const T*>(&raw);
      float4* dst = reinterpret_cast<float4*>(sV + r * LDV + d0);
      dst[0] = make_float4(Pack<T>::to_float(x[0]), Pack<T>::to_float(x[1]),
                           Pack<T>::to_float(x[2]), Pack<T>::to_float(x[3]));
      dst[1] = make_float4(Pack<T>::to_float(x[4]), Pack<T>::to_float(x[5]),
                           Pack<T>::to_float(x[6]), Pack<T>::to_float(x[7]));
    }
    __syncthreads();

    float s[4][4] = {};
#pragma unroll 8
    for (int d = 0; d < D; ++d) {
      const float4 qv = *reinterpret_cast<const float4*>(sQ + d * LDQ + ty * 4);
      const float4 kv = *reinterpret_cast<const float4*>(sK + d * LDK + tx * 4);
      const float qa[4] = {qv.x, qv.y, qv.z, qv.w}, ka[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) s[r][c] = fmaf(qa[r], ka[c], s[r][c]);
    }

    const bool need_mask = n0 + BC > p.sk || (p.causal && n0 + BC - 1 > m0 + offset);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = m0 + ty * 4 + r;
      float mx = row_max[r];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int col = n0 + tx * 4 + c;
        if (need_mask && (col >= p.sk || (p.causal && col > row + offset))) s[r][c] = -INFINITY;
        s[r][c] *= sl2;
        mx = fmaxf(mx, s[r][c]);
      }
#pragma unroll
      for (int o = 1; o < 16; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float msafe = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(row_max[r] - msafe);
      row_max[r] = mx;
      float ps = 0.f;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        s[r][c] = exp2f(s[r][c] - msafe);
        ps += s[r][c];
      }
      row_sum[r] = row_sum[r] * alpha + ps;
#pragma unroll
      for (int c = 0; c < 4 * U; ++c) acc[r][c] *= alpha;
      *reinterpret_cast<float4*>(sP + (ty * 4 + r) * LDP + tx * 4) =
          make_float4(s[r][0], s[r][1], s[r][2], s[r][3]);
    }
    __syncthreads();

#pragma unroll 2
    for (int c = 0; c < BC; c += 4) {
      float pr[4][4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float4 pv = *reinterpret_cast<const float4*>(sP + (ty * 4 + r) * LDP + c);
        pr[r][0] = pv.x, pr[r][1] = pv.y, pr[r][2] = pv.z, pr[r][3] = pv.w;
      }
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const float4 vv = *reinterpret_cast<const float4*>(sV + (c + cc) * LDV + u * 64 + tx * 4);
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            acc[r][4 * u + 0] = fmaf(pr[r][cc], vv.x, acc[r][4 * u + 0]);
            acc[r][4 * u + 1] = fmaf(pr[r][cc], vv.y, acc[r][4 * u + 1]);
            acc[r][4 * u + 2] = fmaf(pr[r][cc], vv.z, acc[r][4 * u + 2]);
            acc[r][4 * u + 3] = fmaf(pr[r][cc], vv.w, acc[r][4 * u + 3]);
          }
        }
      }
    }
  }

  T* go = static_cast<T*>(p.o) + b * p.o_bs + h * p.o_hs;
  float* gl = p.lse + (static_cast<int64_t>(b) * p.hq + h) * p.sq;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    float l = row_sum[r];
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    const int row = m0 + ty * 4 + r;
    if (row >= p.sq) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      uint2 packed;
      packed.x = Pack<T>::pack(acc[r][4 * u] * inv, acc[r][4 * u + 1] * inv);
      packed.y = Pack<T>::pack(acc[r][4 * u + 2] * inv, acc[r][4 * u + 3] * inv);
      *reinterpret_cast<uint2*>(go + row * p.o_rs + u * 64 + tx * 4) = packed;
    }
    if (tx == 0) gl[row] = l > 0.f ? (row_max[r] + __log2f(l)) * kLn2 : INFINITY;
  }
}

}  // namespace

cudaError_t fa2_simt_fwd(const FaParams& p, cudaStream_t stream) {
  FA_DISPATCH(p, {
    const int smem = simt_smem_floats<D>() * static_cast<int>(sizeof(float));
    dim3 grid((p.sq + kSimtBR - 1) / kSimtBR, p.hq, p.b);
    return launch(fa2_simt_fwd_kernel<T, D>, grid, dim3(kSimtThreads), smem, stream, p);
  });
}

}  // namespace attnbench
