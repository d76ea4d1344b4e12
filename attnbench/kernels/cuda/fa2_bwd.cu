// FlashAttention-2 backward on tensor cores (Dao 2023, Algorithm 2), race-free and deterministic.
//
// With P = exp(S * scale - lse) recomputed from the forward's log-sum-exp and
// D_i = rowsum(dO_i * O_i) (dot_do_o), the gradients are
//   dV = P^T dO,   dP = dO V^T,   dS = P * (dP - D),   dK = scale * dS^T Q,   dQ = scale * dS K.
// Instead of the paper's fp32 atomic adds for dQ, three kernels run:
//   1. dot_do_o: D (B, Hq, Sq) fp32.
//   2. fa2_bwd_dkdv: one block per (key block of 128, kv head, batch); 8 warps, each owning 16
//      keys; the block loops over every query head of its GQA group and every query block
//      (64 rows; causal: only those at or below the diagonal), streaming Q, dO (cp.async, two
//      stages), lse and D. Each warp computes S^T = K_w Q^T directly, so P^T and dS^T are
//      already the A operands of dV += P^T dO and dK += dS^T Q: dK, dV accumulate in registers
//      and are written once, summed over the GQA group in a fixed order.
//   3. fa2_bwd_dq: one block per (query block of 128, query head, batch), 8 warps x 16 rows,
//      looping over key blocks like the forward and accumulating dQ in registers.
// Every output element has exactly one writer: no atomics, bitwise reproducible. The price is
// recomputing S and dP in the dQ kernel (7 instead of 5 matmuls of the tile size).
#include "fa_common.cuh"
#include "fa_dispatch.cuh"

namespace attnbench {
namespace {

constexpr int kBwdWarps = 8;
constexpr int kKvBC = 16 * kBwdWarps;  // keys per dK/dV block
constexpr int kKvBR = 64;              // query rows per step of the dK/dV block
constexpr int kDqBR = 16 * kBwdWarps;  // query rows per dQ block
constexpr int kDqBC = 64;              // keys per step of the dQ block

template <typename T, int D>
__global__ void __launch_bounds__(256) dot_do_o_kernel(const FaParams p) {
  constexpr int TPR = D / 8, RPB = 256 / TPR;
  const int64_t total = static_cast<int64_t>(p.b) * p.hq * p.sq;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * RPB + threadIdx.x / TPR;
  const int sub = threadIdx.x % TPR;
  float acc = 0.f;
  if (row < total) {
    const int s = static_cast<int>(row % p.sq), h = static_cast<int>((row / p.sq) % p.hq);
    const int64_t b = row / (static_cast<int64_t>(p.sq) * p.hq);
    const uint4 x = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.dout) + b * p.do_bs +
                                                    s * p.do_rs + h * p.do_hs + sub * 8);
    const uint4 y = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.o) + b * p.o_bs +
                                                    s * p.o_rs + h * p.o_hs + sub * 8);
    const T* xs = reinterpret_cast<const T*>(&x);
    const T* ys = reinterpret_cast<const T*>(&y);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc = fmaf(Pack<T>::to_float(xs[i]), Pack<T>::to_float(ys[i]), acc);
  }
#pragma unroll
  for (int o = 1; o < TPR; o <<= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (sub == 0 && row < total) p.dvec[row] = acc;
}

template <typename T, int D>
__global__ void __launch_bounds__(kBwdWarps * 32, 1) fa2_bwd_dkdv_kernel(const FaParams p) {
  constexpr int NT = kBwdWarps * 32, BC = kKvBC, BR = kKvBR, LD = D + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // BC x LD (later dK staging)
  T* sV = sK + BC * LD;                    // BC x LD (later dV staging)
  T* sQ = sV + BC * LD;                    // 2 x BR x LD
  T* sdO = sQ + 2 * BR * LD;               // 2 x BR x LD
  float* sLse = reinterpret_cast<float*>(sdO + 2 * BR * LD);  // 2 x BR, times log2 e
  float* sDv = sLse + 2 * BR;                                 // 2 x BR

  const int n_block = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int G = p.hq / p.hkv;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int n0 = n_block * BC, offset = p.sk - p.sq;
  const int g = lane >> 2, t = lane & 3;

  const int m_start = p.causal ? max(0, n0 - offset) : 0;  // first query that sees key n0
  const int mb_start = m_start / BR;
  const int nqb = m_start < p.sq ? (p.sq + BR - 1) / BR - mb_start : 0;
  const int total = G * nqb;

  load_tile_async<T, BC, D, NT>(sK, static_cast<const T*>(p.k) + b * p.k_bs + hk * p.k_hs +
                                        n0 * p.k_rs, p.k_rs, p.sk - n0, tid);
  load_tile_async<T, BC, D, NT>(sV, static_cast<const T*>(p.v) + b * p.v_bs + hk * p.v_hs +
                                        n0 * p.v_rs, p.v_rs, p.sk - n0, tid);

  auto load_step = [&](int it, int st) {
    const int h = hk * G + it / nqb, m0 = (mb_start + it % nqb) * BR;
    load_tile_async<T, BR, D, NT>(sQ + st * BR * LD, static_cast<const T*>(p.q) + b * p.q_bs +
                                      h * p.q_hs + m0 * p.q_rs, p.q_rs, p.sq - m0, tid);
    load_tile_async<T, BR, D, NT>(sdO + st * BR * LD, static_cast<const T*>(p.dout) +
                                      b * p.do_bs + h * p.do_hs + m0 * p.do_rs, p.do_rs,
                                  p.sq - m0, tid);
    if (tid < BR) {
      const int64_t base = (static_cast<int64_t>(b) * p.hq + h) * p.sq + m0;
      const bool ok = m0 + tid < p.sq;
      sLse[st * BR + tid] = ok ? p.lse[base + tid] * kLog2e : INFINITY;
      sDv[st * BR + tid] = ok ? p.dvec[base + tid] : 0.f;
    }
  };
  if (total > 0) load_step(0, 0);
  cp_async_commit();

  float acc_dk[D / 8][4], acc_dv[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[j][e] = acc_dv[j][e] = 0.f;
  const float sl2 = p.scale * kLog2e;
  const int key0 = n0 + warp * 16 + g;  // this thread's keys: key0, key0 + 8

  for (int it = 0; it < total; ++it) {
    cp_async_wait<0>();
    __syncthreads();
    if (it + 1 < total) load_step(it + 1, (it + 1) & 1);
    cp_async_commit();
    const int st = it & 1;
    const T* cQ = sQ + st * BR * LD;
    const T* cdO = sdO + st * BR * LD;
    const float* cLse = sLse + st * BR;
    const float* cDv = sDv + st * BR;
    const int m0 = (mb_start + it % nqb) * BR;

    // S^T = K_w Q^T  (16 keys x BR queries)
    float pt[BR / 8][4];
#pragma unroll
    for (int j = 0; j < BR / 8; ++j) pt[j][0] = pt[j][1] = pt[j][2] = pt[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4];
      ldsm_x4(ka, a_addr(sK, LD, warp * 16, kk * 16, lane));
#pragma unroll
      for (int j2 = 0; j2 < BR / 16; ++j2) {
        uint32_t qb[4];
        ldsm_x4(qb, bn_addr(cQ, LD, j2 * 16, kk * 16, lane));
        mma16816<T>(pt[2 * j2], ka, qb[0], qb[1]);
        mma16816<T>(pt[2 * j2 + 1], ka, qb[2], qb[3]);
      }
    }
    // P^T = exp(S^T * scale - lse[query])
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
      }
    }
    // dV += P^T dO
#pragma unroll
    for (int kk = 0; kk < BR / 16; ++kk) {
      uint32_t pa[4];
      c_to_a<T, BR / 8>(pa, pt, kk);
#pragma unroll
      for (int j2 = 0; j2 < D / 16; ++j2) {
        uint32_t ob[4];
        ldsm_x4_t(ob, bk_addr(cdO, LD, kk * 16, j2 * 16, lane));
        mma16816<T>(acc_dv[2 * j2], pa, ob[0], ob[1]);
        mma16816<T>(acc_dv[2 * j2 + 1], pa, ob[2], ob[3]);
      }
    }
    // dP^T = V_w dO^T
    float ds[BR / 8][4];
#pragma unroll
    for (int j = 0; j < BR / 8; ++j) ds[j][0] = ds[j][1] = ds[j][2] = ds[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t va[4];
      ldsm_x4(va, a_addr(sV, LD, warp * 16, kk * 16, lane));
#pragma unroll
      for (int j2 = 0; j2 < BR / 16; ++j2) {
        uint32_t ob[4];
        ldsm_x4(ob, bn_addr(cdO, LD, j2 * 16, kk * 16, lane));
        mma16816<T>(ds[2 * j2], va, ob[0], ob[1]);
        mma16816<T>(ds[2 * j2 + 1], va, ob[2], ob[3]);
      }
    }
    // dS^T = P^T * (dP^T - D[query])
#pragma unroll
    for (int j = 0; j < BR / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) ds[j][e] = pt[j][e] * (ds[j][e] - cDv[j * 8 + 2 * t + (e & 1)]);
    // dK += dS^T Q
#pragma unroll
    for (int kk = 0; kk < BR / 16; ++kk) {
      uint32_t da[4];
      c_to_a<T, BR / 8>(da, ds, kk);
#pragma unroll
      for (int j2 = 0; j2 < D / 16; ++j2) {
        uint32_t qb[4];
        ldsm_x4_t(qb, bk_addr(cQ, LD, kk * 16, j2 * 16, lane));
        mma16816<T>(acc_dk[2 * j2], da, qb[0], qb[1]);
        mma16816<T>(acc_dk[2 * j2 + 1], da, qb[2], qb[3]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // no block iterated: other threads' copies may still land in this warp's rows
  // each warp stages its own 16 rows of sK / sV (only this warp ever read them)
  frag_to_smem<T, D / 8, LD>(sK, warp * 16, acc_dk, p.scale, p.scale, lane);
  frag_to_smem<T, D / 8, LD>(sV, warp * 16, acc_dv, 1.f, 1.f, lane);
  __syncwarp();
  const int64_t rs = static_cast<int64_t>(p.hkv) * D;
  const int64_t off = b * p.sk * rs + (n0 + warp * 16) * rs + hk * D;
  const int valid = p.sk - n0 - warp * 16;
  store_rows16<T, D>(static_cast<T*>(p.dk) + off, rs, sK + warp * 16 * LD, valid, lane);
  store_rows16<T, D>(static_cast<T*>(p.dv) + off, rs, sV + warp * 16 * LD, valid, lane);
}

template <typename T, int D>
__global__ void __launch_bounds__(kBwdWarps * 32, 1) fa2_bwd_dq_kernel(const FaParams p) {
  constexpr int NT = kBwdWarps * 32, BR = kDqBR, BC = kDqBC, LD = D + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // BR x LD (later dQ staging)
  T* sdO = sQ + BR * LD;                   // BR x LD
  T* sK = sdO + BR * LD;                   // 2 x BC x LD
  T* sV = sK + 2 * BC * LD;                // 2 x BC x LD

  const int m_block = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / (p.hq / p.hkv);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int m0 = m_block * BR, offset = p.sk - p.sq;
  const int t = lane & 3;
  const T* gk = static_cast<const T*>(p.k) + b * p.k_bs + hk * p.k_hs;
  const T* gv = static_cast<const T*>(p.v) + b * p.v_bs + hk * p.v_hs;

  int n_end = p.sk;
  if (p.causal) n_end = min(n_end, m0 + BR + offset);
  const int n_blocks = n_end > 0 ? (n_end + BC - 1) / BC : 0;

  load_tile_async<T, BR, D, NT>(sQ, static_cast<const T*>(p.q) + b * p.q_bs + h * p.q_hs +
                                        m0 * p.q_rs, p.q_rs, p.sq - m0, tid);
  load_tile_async<T, BR, D, NT>(sdO, static_cast<const T*>(p.dout) + b * p.do_bs + h * p.do_hs +
                                         m0 * p.do_rs, p.do_rs, p.sq - m0, tid);
  if (n_blocks > 0) {
    load_tile_async<T, BC, D, NT>(sK, gk, p.k_rs, p.sk, tid);
    load_tile_async<T, BC, D, NT>(sV, gv, p.v_rs, p.sk, tid);
  }
  cp_async_commit();

  const int row0 = m0 + warp * 16 + (lane >> 2);
  float lse2[2], dvec[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    const int64_t i = (static_cast<int64_t>(b) * p.hq + h) * p.sq + row;
    lse2[r] = row < p.sq ? p.lse[i] * kLog2e : INFINITY;
    dvec[r] = row < p.sq ? p.dvec[i] : 0.f;
  }
  float acc_dq[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) acc_dq[j][0] = acc_dq[j][1] = acc_dq[j][2] = acc_dq[j][3] = 0.f;
  const float sl2 = p.scale * kLog2e;

  for (int nb = 0; nb < n_blocks; ++nb) {
    cp_async_wait<0>();
    __syncthreads();
    if (nb + 1 < n_blocks) {
      const int n1 = (nb + 1) * BC, st = (nb + 1) & 1;
      load_tile_async<T, BC, D, NT>(sK + st * BC * LD, gk + n1 * p.k_rs, p.k_rs, p.sk - n1, tid);
      load_tile_async<T, BC, D, NT>(sV + st * BC * LD, gv + n1 * p.v_rs, p.v_rs, p.sk - n1, tid);
    }
    cp_async_commit();
    const T* cK = sK + (nb & 1) * BC * LD;
    const T* cV = sV + (nb & 1) * BC * LD;
    const int n0 = nb * BC;

    // S = Q_w K^T, dP = dO_w V^T
    float ps[BC / 8][4], ds[BC / 8][4];
#pragma unroll
    for (int j = 0; j < BC / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) ps[j][e] = ds[j][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[4], oa[4];
      ldsm_x4(qa, a_addr(sQ, LD, warp * 16, kk * 16, lane));
      ldsm_x4(oa, a_addr(sdO, LD, warp * 16, kk * 16, lane));
#pragma unroll
      for (int j2 = 0; j2 < BC / 16; ++j2) {
        uint32_t kb[4], vb[4];
        ldsm_x4(kb, bn_addr(cK, LD, j2 * 16, kk * 16, lane));
        ldsm_x4(vb, bn_addr(cV, LD, j2 * 16, kk * 16, lane));
        mma16816<T>(ps[2 * j2], qa, kb[0], kb[1]);
        mma16816<T>(ps[2 * j2 + 1], qa, kb[2], kb[3]);
        mma16816<T>(ds[2 * j2], oa, vb[0], vb[1]);
        mma16816<T>(ds[2 * j2 + 1], oa, vb[2], vb[3]);
      }
    }
    // P = exp(S * scale - lse), dS = P * (dP - D)
    const bool need_mask = n0 + BC > p.sk || (p.causal && n0 + BC - 1 > m0 + offset);
#pragma unroll
    for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        float v = exp2f(fmaf(ps[j][e], sl2, -lse2[r]));
        if (need_mask && !visible(row0 + 8 * r, n0 + j * 8 + 2 * t + (e & 1), p)) v = 0.f;
        ds[j][e] = v * (ds[j][e] - dvec[r]);
      }
    }
    // dQ += dS K
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t da[4];
      c_to_a<T, BC / 8>(da, ds, kk);
#pragma unroll
      for (int j2 = 0; j2 < D / 16; ++j2) {
        uint32_t kb[4];
        ldsm_x4_t(kb, bk_addr(cK, LD, kk * 16, j2 * 16, lane));
        mma16816<T>(acc_dq[2 * j2], da, kb[0], kb[1]);
        mma16816<T>(acc_dq[2 * j2 + 1], da, kb[2], kb[3]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // no block iterated: other threads' copies may still land in this warp's rows
  frag_to_smem<T, D / 8, LD>(sQ, warp * 16, acc_dq, p.scale, p.scale, lane);
  __syncwarp();
  const int64_t rs = static_cast<int64_t>(p.hq) * D;
  T* gdq = static_cast<T*>(p.dq) + b * p.sq * rs + (m0 + warp * 16) * rs + h * D;
  store_rows16<T, D>(gdq, rs, sQ + warp * 16 * LD, p.sq - m0 - warp * 16, lane);
}

}  // namespace

cudaError_t dot_do_o(const FaParams& p, cudaStream_t stream) {
  FA_DISPATCH(p, {
    constexpr int RPB = 256 / (D / 8);
    const int64_t rows = static_cast<int64_t>(p.b) * p.hq * p.sq;
    dim3 grid(static_cast<unsigned>((rows + RPB - 1) / RPB));
    return launch(dot_do_o_kernel<T, D>, grid, dim3(256), 0, stream, p);
  });
}

cudaError_t fa2_bwd(const FaParams& p, cudaStream_t stream) {
  cudaError_t e = dot_do_o(p, stream);
  if (e != cudaSuccess) return e;
  FA_DISPATCH(p, {
    constexpr int LD = D + 8;
    const int smem_kv = (2 * kKvBC + 4 * kKvBR) * LD * static_cast<int>(sizeof(T)) +
                        4 * kKvBR * static_cast<int>(sizeof(float));
    dim3 grid_kv((p.sk + kKvBC - 1) / kKvBC, p.hkv, p.b);
    e = launch(fa2_bwd_dkdv_kernel<T, D>, grid_kv, dim3(kBwdWarps * 32), smem_kv, stream, p);
    if (e != cudaSuccess) return e;
    const int smem_q = (2 * kDqBR + 4 * kDqBC) * LD * static_cast<int>(sizeof(T));
    dim3 grid_q((p.sq + kDqBR - 1) / kDqBR, p.hq, p.b);
    return launch(fa2_bwd_dq_kernel<T, D>, grid_q, dim3(kBwdWarps * 32), smem_q, stream, p);
  });
}

}  // namespace attnbench
