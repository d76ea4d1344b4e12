// FlashAttention-1 on tensor cores (Dao et al. 2022, "FlashAttention"), with the paper's loop
// order: one thread block per (query head, batch); OUTER loop over key/value blocks K_j, V_j
// (loaded to shared memory once), INNER loop over query blocks Q_i, whose running O_i, l_i, m_i
// live in HBM (fp32) and are read and rewritten at every outer step.
//
// Forward (Algorithm 1), per inner step (i, j), 4 warps x 16 query rows, BR = BC = 64:
//   S = Q_i K_j^T;  m_new = max(m_i, rowmax(S) * scale * log2 e);  P = exp2(S * sc - m_new)
//   l_new = exp2(m_i - m_new) l_i + rowsum(P)
//   O_i  <- (l_i exp2(m_i - m_new) O_i + P V_j) / l_new         (O stays normalised)
// (the same update as the paper's with m~ = rowmax(S) folded into P). After the outer loop the
// block converts O to the output dtype and lse = (m + log2 l) ln 2 (+inf where l = 0).
//
// Backward (Algorithm 4), same loop order, 4 warps x 16 keys: K_j, V_j and dK_j, dV_j (registers)
// stay on chip for the whole inner loop over Q_i, dO_i (cp.async, two stages). P is recomputed
// from the forward's lse (P = diag(l)^-1 exp(S - m) of the paper, with lse = m + log l) and
// D_i = rowsum(dO_i * O_i) is precomputed (dot_do_o) instead of re-derived at every step.
//   dV_j += P^T dO_i;  dP = dO_i V_j^T;  dS = P * (dP - D_i);  dK_j += scale dS^T Q_i
//   dQ_i += scale dS K_j   (fp32 in HBM: dS goes through shared memory, then warp w updates
//                           query rows 16w..16w+15; the same thread owns the same dQ elements
//                           at every outer step, so there are no races and no atomics)
// dK, dV are written per query head (fp32) and summed over a GQA group by the caller.
#include "fa_common.cuh"
#include "fa_dispatch.cuh"

namespace attnbench {
namespace {

constexpr int kFa1Warps = 4, kFa1BR = 64, kFa1BC = 64;

template <typename T, int D>
__global__ void __launch_bounds__(kFa1Warps * 32, 1) fa1_fwd_kernel(const FaParams p) {
  constexpr int NT = kFa1Warps * 32, BR = kFa1BR, BC = kFa1BC, LD = D + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // BC x LD
  T* sV = sK + BC * LD;                    // BC x LD
  T* sQ = sV + BC * LD;                    // 2 x BR x LD

  const int h = blockIdx.x, b = blockIdx.y, hk = h / (p.hq / p.hkv);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, t = lane & 3;
  const int offset = p.sk - p.sq;
  const T* gq = static_cast<const T*>(p.q) + b * p.q_bs + h * p.q_hs;
  const T* gk = static_cast<const T*>(p.k) + b * p.k_bs + hk * p.k_hs;
  const T* gv = static_cast<const T*>(p.v) + b * p.v_bs + hk * p.v_hs;
  const int64_t acc_rs = static_cast<int64_t>(p.hq) * D;  // o_acc row stride
  float* o_acc = p.o_acc + static_cast<int64_t>(b) * p.sq * acc_rs + h * D;
  float* m_acc = p.m_acc + (static_cast<int64_t>(b) * p.hq + h) * p.sq;
  float* l_acc = p.l_acc + (static_cast<int64_t>(b) * p.hq + h) * p.sq;
  const float sl2 = p.scale * kLog2e;
  const int n_kblocks = (p.sk + BC - 1) / BC;

  for (int nb = 0; nb < n_kblocks; ++nb) {  // outer loop: K_j, V_j
    const int n0 = nb * BC;
    const int m_start = p.causal ? max(0, n0 - offset) : 0;
    if (m_start >= p.sq) break;  // causal: no query sees this key block (nor any later one)
    const int mb_start = m_start / BR, nqb = (p.sq + BR - 1) / BR - mb_start;
    __syncthreads();  // all warps are done with the previous K_j, V_j
    load_tile_async<T, BC, D, NT>(sK, gk + n0 * p.k_rs, p.k_rs, p.sk - n0, tid);
    load_tile_async<T, BC, D, NT>(sV, gv + n0 * p.v_rs, p.v_rs, p.sk - n0, tid);
    load_tile_async<T, BR, D, NT>(sQ, gq + mb_start * BR * p.q_rs, p.q_rs,
                                  p.sq - mb_start * BR, tid);
    cp_async_commit();

    for (int it = 0; it < nqb; ++it) {  // inner loop: Q_i, O_i, l_i, m_i
      cp_async_wait<0>();
      __syncthreads();
      if (it + 1 < nqb) {
        const int m1 = (mb_start + it + 1) * BR;
        load_tile_async<T, BR, D, NT>(sQ + ((it + 1) & 1) * BR * LD, gq + m1 * p.q_rs, p.q_rs,
                                      p.sq - m1, tid);
      }
      cp_async_commit();
      const T* cQ = sQ + (it & 1) * BR * LD;
      const int m0 = (mb_start + it) * BR;
      const int row0 = m0 + warp * 16 + (lane >> 2);

      float s[BC / 8][4];
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t qa[4];
        ldsm_x4(qa, a_addr(cQ, LD, warp * 16, kk * 16, lane));
#pragma unroll
        for (int j2 = 0; j2 < BC / 16; ++j2) {
          uint32_t kb[4];
          ldsm_x4(kb, bn_addr(sK, LD, j2 * 16, kk * 16, lane));
          mma16816<T>(s[2 * j2], qa, kb[0], kb[1]);
          mma16816<T>(s[2 * j2 + 1], qa, kb[2], kb[3]);
        }
      }
      const bool need_mask = n0 + BC > p.sk || (p.causal && n0 + BC - 1 > m0 + offset);
      float m_old[2], l_old[2], m_new[2], msafe[2], alpha[2], rsum[2] = {0.f, 0.f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        m_old[r] = row < p.sq ? m_acc[row] : -INFINITY;
        l_old[r] = row < p.sq ? l_acc[row] : 0.f;
        m_new[r] = m_old[r];
      }
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          if (need_mask && !visible(row0 + 8 * r, n0 + j * 8 + 2 * t + (e & 1), p)) {
            s[j][e] = -INFINITY;
          }
          s[j][e] *= sl2;
          m_new[r] = fmaxf(m_new[r], s[j][e]);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        m_new[r] = quad_max(m_new[r]);
        msafe[r] = m_new[r] == -INFINITY ? 0.f : m_new[r];
        alpha[r] = exp2f(m_old[r] - msafe[r]);
      }
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] = exp2f(s[j][e] - msafe[e >> 1]);
          rsum[e >> 1] += s[j][e];
        }
      }
      float l_new[2], keep[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        l_new[r] = l_old[r] * alpha[r] + quad_sum(rsum[r]);
        keep[r] = l_old[r] * alpha[r];
      }
      // acc = l_i exp2(m_i - m_new) O_i  (O_i read from HBM)
      float acc[D / 8][4];
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = row0 + 8 * r;
          float2 o = make_float2(0.f, 0.f);
          if (row < p.sq) o = *reinterpret_cast<const float2*>(o_acc + row * acc_rs + j * 8 + 2 * t);
          acc[j][2 * r] = o.x * keep[r];
          acc[j][2 * r + 1] = o.y * keep[r];
        }
      }
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t pa[4];
        c_to_a<T, BC / 8>(pa, s, kk);
#pragma unroll
        for (int j2 = 0; j2 < D / 16; ++j2) {
          uint32_t vb[4];
          ldsm_x4_t(vb, bk_addr(sV, LD, kk * 16, j2 * 16, lane));
          mma16816<T>(acc[2 * j2], pa, vb[0], vb[1]);
          mma16816<T>(acc[2 * j2 + 1], pa, vb[2], vb[3]);
        }
      }
      // write O_i, m_i, l_i back to HBM
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        if (row >= p.sq) continue;
        const float inv = l_new[r] > 0.f ? 1.f / l_new[r] : 0.f;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          *reinterpret_cast<float2*>(o_acc + row * acc_rs + j * 8 + 2 * t) =
              make_float2(acc[j][2 * r] * inv, acc[j][2 * r + 1] * inv);
        }
        if (t == 0) {
          m_acc[row] = m_new[r];
          l_acc[row] = l_new[r];
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every O_i, l_i, m_i of this head is final
  T* go = static_cast<T*>(p.o) + b * p.o_bs + h * p.o_hs;
  for (int c = tid; c < p.sq * (D / 4); c += NT) {
    const int row = c / (D / 4), d = (c % (D / 4)) * 4;
    const float4 o = *reinterpret_cast<const float4*>(o_acc + row * acc_rs + d);
    uint2 packed;
    packed.x = Pack<T>::pack(o.x, o.y);
    packed.y = Pack<T>::pack(o.z, o.w);
    *reinterpret_cast<uint2*>(go + row * p.o_rs + d) = packed;
  }
  float* gl = p.lse + (static_cast<int64_t>(b) * p.hq + h) * p.sq;
  for (int row = tid; row < p.sq; row += NT) {
    const float l = l_acc[row];
    gl[row] = l > 0.f ? (m_acc[row] + __log2f(l)) * kLn2 : INFINITY;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kFa1Warps * 32, 1) fa1_bwd_kernel(const FaParams p) {
  constexpr int NT = kFa1Warps * 32, BR = kFa1BR, BC = kFa1BC, LD = D + 8, LDS = BR + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // BC x LD
  T* sV = sK + BC * LD;                    // BC x LD
  T* sQ = sV + BC * LD;                    // 2 x BR x LD
  T* sdO = sQ + 2 * BR * LD;               // 2 x BR x LD
  T* sdS = sdO + 2 * BR * LD;              // BC x LDS: dS^T (keys x queries)
  float* sLse = reinterpret_cast<float*>(sdS + BC * LDS);  // 2 x BR, times log2 e
  float* sDv = sLse + 2 * BR;                                // 2 x BR

  const int h = blockIdx.x, b = blockIdx.y, hk = h / (p.hq / p.hkv);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int offset = p.sk - p.sq;
  const T* gq = static_cast<const T*>(p.q) + b * p.q_bs + h * p.q_hs;
  const T* gdo = static_cast<const T*>(p.dout) + b * p.do_bs + h * p.do_hs;
  const T* gk = static_cast<const T*>(p.k) + b * p.k_bs + hk * p.k_hs;
  const T* gv = static_cast<const T*>(p.v) + b * p.v_bs + hk * p.v_hs;
  const int64_t rowq = (static_cast<int64_t>(b) * p.hq + h) * p.sq;  // lse / dvec row base
  const int64_t acc_rs = static_cast<int64_t>(p.hq) * D;
  float* dq_acc = p.dq_acc + static_cast<int64_t>(b) * p.sq * acc_rs + h * D;
  float* dk_acc = p.dk_acc + static_cast<int64_t>(b) * p.sk * acc_rs + h * D;
  float* dv_acc = p.dv_acc + static_cast<int64_t>(b) * p.sk * acc_rs + h * D;
  const float sl2 = p.scale * kLog2e;
  const int n_kblocks = (p.sk + BC - 1) / BC;

  auto load_q = [&](int mb, int st) {
    const int m0 = mb * BR;
    load_tile_async<T, BR, D, NT>(sQ + st * BR * LD, gq + m0 * p.q_rs, p.q_rs, p.sq - m0, tid);
    load_tile_async<T, BR, D, NT>(sdO + st * BR * LD, gdo + m0 * p.do_rs, p.do_rs, p.sq - m0,
                                  tid);
    if (tid < BR) {
      const bool ok = m0 + tid < p.sq;
      sLse[st * BR + tid] = ok ? p.lse[rowq + m0 + tid] * kLog2e : INFINITY;
      sDv[st * BR + tid] = ok ? p.dvec[rowq + m0 + tid] : 0.f;
    }
  };

  for (int nb = 0; nb < n_kblocks; ++nb) {  // outer loop: K_j, V_j, dK_j, dV_j
    const int n0 = nb * BC;
    const int m_start = p.causal ? max(0, n0 - offset) : 0;
    const int mb_start = m_start / BR;
    const int nqb = m_start < p.sq ? (p.sq + BR - 1) / BR - mb_start : 0;
    __syncthreads();  // all warps are done with the previous K_j, V_j, stages and dS
    load_tile_async<T, BC, D, NT>(sK, gk + n0 * p.k_rs, p.k_rs, p.sk - n0, tid);
    load_tile_async<T, BC, D, NT>(sV, gv + n0 * p.v_rs, p.v_rs, p.sk - n0, tid);
    if (nqb > 0) load_q(mb_start, 0);
    cp_async_commit();
    float acc_dk[D / 8][4], acc_dv[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_dk[j][e] = acc_dv[j][e] = 0.f;
    const int key0 = n0 + warp * 16 + g;

    for (int it = 0; it < nqb; ++it) {  // inner loop: Q_i, dO_i, dQ_i
      cp_async_wait<0>();
      __syncthreads();
      if (it + 1 < nqb) load_q(mb_start + it + 1, (it + 1) & 1);
      cp_async_commit();
      const int st = it & 1, m0 = (mb_start + it) * BR;
      const T* cQ = sQ + st * BR * LD;
      const T* cdO = sdO + st * BR * LD;
      const float* cLse = sLse + st * BR;
      const float* cDv = sDv + st * BR;

      float pt[BR / 8][4], ds[BR / 8][4];
#pragma unroll
      for (int j = 0; j < BR / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) pt[j][e] = ds[j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {  // S^T = K_j Q_i^T, dP^T = V_j dO_i^T
        uint32_t ka[4], va[4];
        ldsm_x4(ka, a_addr(sK, LD, warp * 16, kk * 16, lane));
        ldsm_x4(va, a_addr(sV, LD, warp * 16, kk * 16, lane));
#pragma unroll
        for (int j2 = 0; j2 < BR / 16; ++j2) {
          uint32_t qb[4], ob[4];
          ldsm_x4(qb, bn_addr(cQ, LD, j2 * 16, kk * 16, lane));
          ldsm_x4(ob, bn_addr(cdO, LD, j2 * 16, kk * 16, lane));
          mma16816<T>(pt[2 * j2], ka, qb[0], qb[1]);
          mma16816<T>(pt[2 * j2 + 1], ka, qb[2], qb[3]);
          mma16816<T>(ds[2 * j2], va, ob[0], ob[1]);
          mma16816<T>(ds[2 * j2 + 1], va, ob[2], ob[3]);
        }
      }
      const bool need_mask =
          m0 + BR > p.sq || n0 + BC > p.sk || (p.causal && n0 + BC - 1 > m0 + offset);
#pragma unroll
      for (int j = 0; j < BR / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qc = j * 8 + 2 * t + (e & 1);
          float v = exp2f(fmaf(pt[j][e], sl2, -cLse[qc]));
          if (need_mask && !visible(m0 + qc, key0 + (e >> 1) * 8, p)) v = 0.f;
          pt[j][e] = v;
          ds[j][e] = v * (ds[j][e] - cDv[qc]);
        }
      }
#pragma unroll
      for (int kk = 0; kk < BR / 16; ++kk) {  // dV_j += P^T dO_i, dK_j += dS^T Q_i
        uint32_t pa[4], da[4];
        c_to_a<T, BR / 8>(pa, pt, kk);
        c_to_a<T, BR / 8>(da, ds, kk);
#pragma unroll
        for (int j2 = 0; j2 < D / 16; ++j2) {
          uint32_t ob[4], qb[4];
          ldsm_x4_t(ob, bk_addr(cdO, LD, kk * 16, j2 * 16, lane));
          ldsm_x4_t(qb, bk_addr(cQ, LD, kk * 16, j2 * 16, lane));
          mma16816<T>(acc_dv[2 * j2], pa, ob[0], ob[1]);
          mma16816<T>(acc_dv[2 * j2 + 1], pa, ob[2], ob[3]);
          mma16816<T>(acc_dk[2 * j2], da, qb[0], qb[1]);
          mma16816<T>(acc_dk[2 * j2 + 1], da, qb[2], qb[3]);
        }
      }
      // dS^T -> shared memory (keys x queries), then dQ_i += scale dS K_j by query rows
#pragma unroll
      for (int j = 0; j < BR / 8; ++j) {
        *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g) * LDS + j * 8 + 2 * t) =
            Pack<T>::pack(ds[j][0], ds[j][1]);
        *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g + 8) * LDS + j * 8 + 2 * t) =
            Pack<T>::pack(ds[j][2], ds[j][3]);
      }
      __syncthreads();
      uint32_t dsa[BC / 16][4];
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk)
        ldsm_x4_t(dsa[kk], at_addr(static_cast<const T*>(sdS), LDS, kk * 16, warp * 16, lane));
      const int qrow0 = m0 + warp * 16 + g;
#pragma unroll
      for (int j2 = 0; j2 < D / 16; ++j2) {
        float dq[2][4] = {};
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
          uint32_t kb[4];
          ldsm_x4_t(kb, bk_addr(static_cast<const T*>(sK), LD, kk * 16, j2 * 16, lane));
          mma16816<T>(dq[0], dsa[kk], kb[0], kb[1]);
          mma16816<T>(dq[1], dsa[kk], kb[2], kb[3]);
        }
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int row = qrow0 + 8 * r;
            if (row < p.sq) {
              float2* dst = reinterpret_cast<float2*>(dq_acc + row * acc_rs + j2 * 16 + jj * 8 +
                                                      2 * t);
              float2 cur = *dst;
              cur.x += dq[jj][2 * r] * p.scale;
              cur.y += dq[jj][2 * r + 1] * p.scale;
              *dst = cur;
            }
          }
        }
      }
    }
    // dK_j, dV_j of this query head -> HBM (fp32)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = key0 + 8 * r;
      if (key >= p.sk) continue;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<float2*>(dk_acc + key * acc_rs + j * 8 + 2 * t) =
            make_float2(acc_dk[j][2 * r] * p.scale, acc_dk[j][2 * r + 1] * p.scale);
        *reinterpret_cast<float2*>(dv_acc + key * acc_rs + j * 8 + 2 * t) =
            make_float2(acc_dv[j][2 * r], acc_dv[j][2 * r + 1]);
      }
    }
  }
  cp_async_wait<0>();
}

}  // namespace

cudaError_t fa1_fwd(const FaParams& p, cudaStream_t stream) {
  FA_DISPATCH(p, {
    constexpr int LD = D + 8;
    const int smem = (2 * kFa1BC + 2 * kFa1BR) * LD * static_cast<int>(sizeof(T));
    return launch(fa1_fwd_kernel<T, D>, dim3(p.hq, p.b), dim3(kFa1Warps * 32), smem, stream, p);
  });
}

cudaError_t fa1_bwd(const FaParams& p, cudaStream_t stream) {
  cudaError_t e = dot_do_o(p, stream);
  if (e != cudaSuccess) return e;
  FA_DISPATCH(p, {
    constexpr int LD = D + 8;
    const int smem = ((2 * kFa1BC + 4 * kFa1BR) * LD + kFa1BC * (kFa1BR + 8)) *
                         static_cast<int>(sizeof(T)) +
                     4 * kFa1BR * static_cast<int>(sizeof(float));
    return launch(fa1_bwd_kernel<T, D>, dim3(p.hq, p.b), dim3(kFa1Warps * 32), smem, stream, p);
  });
}

}  // namespace attnbench
