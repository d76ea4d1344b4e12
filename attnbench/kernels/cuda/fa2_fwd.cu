// FlashAttention-2 forward on tensor cores (Dao 2023, "FlashAttention-2", Algorithm 1).
//
// One thread block per (query block of BR = 128 rows, query head, batch); 8 warps, each owning
// 16 query rows, so the output needs no inter-warp reduction. The block walks the key/value
// blocks (BC = 64 keys) with the online softmax in registers:
//   S = Q K_j^T (mma.sync m16n8k16, fp32 accumulate),  m' = max(m, rowmax(S) * scale * log2 e)
//   P = exp2(S * scale * log2 e - m'),  l = l * exp2(m - m') + rowsum(P)
//   O = O * exp2(m - m') + P V_j        (P stays in registers: C fragments -> A fragments)
// and writes O / l and lse = (m + log2 l) * ln 2 once at the end. K_{j+1}, V_{j+1} stream in by
// cp.async into the second shared-memory stage while block j is computed. Causal (bottom-right,
// key j visible to query i iff j <= i + Sk - Sq): key blocks past the block's last visible key
// are never loaded; only blocks crossing the diagonal or the sequence ends are masked
// element-wise. Rows without a visible key give O = 0, lse = +inf.
#include "fa_common.cuh"
#include "fa_dispatch.cuh"

namespace attnbench {
namespace {

constexpr int kFwdWarps = 8;
constexpr int kFwdBR = 16 * kFwdWarps;
constexpr int kFwdBC = 64;

template <typename T, int D>
__global__ void __launch_bounds__(kFwdWarps * 32, 1) fa2_fwd_kernel(const FaParams p) {
  constexpr int NT = kFwdWarps * 32, BR = kFwdBR, BC = kFwdBC, LD = D + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // BR x LD, later the output staging tile
  T* sK = sQ + BR * LD;                    // 2 stages x BC x LD
  T* sV = sK + 2 * BC * LD;                // 2 stages x BC x LD

  const int m_block = gridDim.x - 1 - blockIdx.x;  // longest (causal) blocks first
  const int h = blockIdx.y, b = blockIdx.z, hk = h / (p.hq / p.hkv);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int m0 = m_block * BR, offset = p.sk - p.sq;

  const T* gq = static_cast<const T*>(p.q) + b * p.q_bs + h * p.q_hs + m0 * p.q_rs;
  const T* gk = static_cast<const T*>(p.k) + b * p.k_bs + hk * p.k_hs;
  const T* gv = static_cast<const T*>(p.v) + b * p.v_bs + hk * p.v_hs;

  int n_end = p.sk;  // keys >= n_end are invisible to every row of this block
  if (p.causal) n_end = min(n_end, m0 + BR + offset);
  const int n_blocks = n_end > 0 ? (n_end + BC - 1) / BC : 0;

  load_tile_async<T, BR, D, NT>(sQ, gq, p.q_rs, p.sq - m0, tid);
  if (n_blocks > 0) {
    load_tile_async<T, BC, D, NT>(sK, gk, p.k_rs, p.sk, tid);
    load_tile_async<T, BC, D, NT>(sV, gv, p.v_rs, p.sk, tid);
  }
  cp_async_commit();

  float acc_o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) acc_o[j][0] = acc_o[j][1] = acc_o[j][2] = acc_o[j][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  uint32_t qf[D / 16][4];
  const float sl2 = p.scale * kLog2e;
  const int row0 = m0 + warp * 16 + (lane >> 2);  // this thread's rows: row0, row0 + 8

  for (int nb = 0; nb < n_blocks; ++nb) {
    cp_async_wait<0>();
    __syncthreads();  // block nb landed; every warp is done with stage (nb + 1) & 1
    if (nb == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) ldsm_x4(qf[kk], a_addr(sQ, LD, warp * 16, kk * 16, lane));
    }
    if (nb + 1 < n_blocks) {
      const int n1 = (nb + 1) * BC, st = (nb + 1) & 1;
      load_tile_async<T, BC, D, NT>(sK + st * BC * LD, gk + n1 * p.k_rs, p.k_rs, p.sk - n1, tid);
      load_tile_async<T, BC, D, NT>(sV + st * BC * LD, gv + n1 * p.v_rs, p.v_rs, p.sk - n1, tid);
    }
    cp_async_commit();
    const T* cK = sK + (nb & 1) * BC * LD;
    const T* cV = sV + (nb & 1) * BC * LD;
    const int n0 = nb * BC;

    float s[BC / 8][4];
#pragma unroll
    for (int j = 0; j < BC / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int j2 = 0; j2 < BC / 16; ++j2) {
        uint32_t kf[4];
        ldsm_x4(kf, bn_addr(cK, LD, j2 * 16, kk * 16, lane));
        mma16816<T>(s[2 * j2], qf[kk], kf[0], kf[1]);
        mma16816<T>(s[2 * j2 + 1], qf[kk], kf[2], kf[3]);
      }
    }

    const bool need_mask = n0 + BC > p.sk || (p.causal && n0 + BC - 1 > m0 + offset);
    if (need_mask) {
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n0 + j * 8 + 2 * (lane & 3) + (e & 1);
          const int row = row0 + (e >> 1) * 8;
          if (col >= p.sk || (p.causal && col > row + offset)) s[j][e] = -INFINITY;
        }
      }
    }

    // online softmax (log2 domain, scale folded in)
    float mnew[2] = {row_max[0], row_max[1]};
#pragma unroll
    for (int j = 0; j < BC / 8; ++j) {
      mnew[0] = fmaxf(mnew[0], fmaxf(s[j][0] * sl2, s[j][1] * sl2));
      mnew[1] = fmaxf(mnew[1], fmaxf(s[j][2] * sl2, s[j][3] * sl2));
    }
    float msafe[2], alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mnew[r] = quad_max(mnew[r]);
      msafe[r] = mnew[r] == -INFINITY ? 0.f : mnew[r];  // a row with nothing visible yet
      alpha[r] = exp2f(row_max[r] - msafe[r]);
      row_max[r] = mnew[r];
      row_sum[r] *= alpha[r];
    }
#pragma unroll
    for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = exp2f(fmaf(s[j][e], sl2, -msafe[e >> 1]));
        row_sum[e >> 1] += s[j][e];  // thread-partial; the quad sum is taken once at the end
      }
    }
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      acc_o[j][0] *= alpha[0];
      acc_o[j][1] *= alpha[0];
      acc_o[j][2] *= alpha[1];
      acc_o[j][3] *= alpha[1];
    }

    // O += P V
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t pa[4];
      c_to_a<T, BC / 8>(pa, s, kk);
#pragma unroll
      for (int j2 = 0; j2 < D / 16; ++j2) {
        uint32_t vf[4];
        ldsm_x4_t(vf, bk_addr(cV, LD, kk * 16, j2 * 16, lane));
        mma16816<T>(acc_o[2 * j2], pa, vf[0], vf[1]);
        mma16816<T>(acc_o[2 * j2 + 1], pa, vf[2], vf[3]);
      }
    }
  }
  cp_async_wait<0>();  // (n_blocks == 0: the Q copy may still be in flight)
  __syncthreads();  // other threads' Q copies land in this warp's rows of sQ, reused below for O

  float inv[2], lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(row_sum[r]);
    inv[r] = l > 0.f ? 1.f / l : 0.f;
    lse[r] = l > 0.f ? (row_max[r] + __log2f(l)) * kLn2 : INFINITY;
  }
  // each warp stages its own 16 rows of sQ (only this warp ever read them)
  __syncwarp();
  frag_to_smem<T, D / 8, LD>(sQ, warp * 16, acc_o, inv[0], inv[1], lane);
  __syncwarp();
  T* go = static_cast<T*>(p.o) + b * p.o_bs + h * p.o_hs + (m0 + warp * 16) * p.o_rs;
  store_rows16<T, D>(go, p.o_rs, sQ + warp * 16 * LD, p.sq - m0 - warp * 16, lane);
  if ((lane & 3) == 0) {
    float* gl = p.lse + (static_cast<int64_t>(b) * p.hq + h) * p.sq;
    if (row0 < p.sq) gl[row0] = lse[0];
    if (row0 + 8 < p.sq) gl[row0 + 8] = lse[1];
  }
}

}  // namespace

cudaError_t fa2_fwd(const FaParams& p, cudaStream_t stream) {
  FA_DISPATCH(p, {
    constexpr int LD = D + 8;
    const int smem = (kFwdBR + 4 * kFwdBC) * LD * static_cast<int>(sizeof(T));
    dim3 grid((p.sq + kFwdBR - 1) / kFwdBR, p.hq, p.b);
    return launch(fa2_fwd_kernel<T, D>, grid, dim3(kFwdWarps * 32), smem, stream, p);
  });
}

}  // namespace attnbench
