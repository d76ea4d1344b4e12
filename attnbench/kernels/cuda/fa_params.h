// Kernel parameters and host launchers of the attnbench CUDA FlashAttention kernels.
// Plain C++ (no torch headers): the .cu files compile with nvcc alone; fa_binding.cpp is the
// only file that sees torch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace attnbench {

// All tensors are (B, S, H, D) with a unit last-dim stride; strides are in elements.
// lse and dvec are fp32 (B, Hq, Sq) contiguous.
struct FaParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;
  int64_t q_bs, q_rs, q_hs;
  int64_t k_bs, k_rs, k_hs;
  int64_t v_bs, v_rs, v_hs;
  int64_t o_bs, o_rs, o_hs;
  int b, hq, hkv, sq, sk, d;
  float scale;
  bool causal;
  bool bf16;

  // backward
  const void* dout;
  int64_t do_bs, do_rs, do_hs;
  float* dvec;  // rowsum(dO * O), (B, Hq, Sq)
  void* dq;     // FA2: dtype (B, Sq, Hq, D) contiguous
  void* dk;     // FA2: dtype (B, Sk, Hkv, D) contiguous
  void* dv;

  // FA1 fp32 HBM state (Algorithm 1 / 4 of the FA1 paper)
  float* o_acc;   // (B, Sq, Hq, D) contiguous: running, normalised O (init 0)
  float* m_acc;   // (B, Hq, Sq): running max, log2 units of the scaled scores (init -inf)
  float* l_acc;   // (B, Hq, Sq): running row sum (init 0)
  float* dq_acc;  // (B, Sq, Hq, D): scale * dQ accumulated over the outer loop (init 0)
  float* dk_acc;  // (B, Sk, Hq, D): per query head; the caller sums a GQA group
  float* dv_acc;
};

cudaError_t fa2_fwd(const FaParams& p, cudaStream_t stream);
cudaError_t fa2_simt_fwd(const FaParams& p, cudaStream_t stream);
cudaError_t fa2_bwd(const FaParams& p, cudaStream_t stream);
cudaError_t fa1_fwd(const FaParams& p, cudaStream_t stream);
cudaError_t fa1_bwd(const FaParams& p, cudaStream_t stream);
cudaError_t dot_do_o(const FaParams& p, cudaStream_t stream);

}  // namespace attnbench
