// Thin torch binding of the attnbench CUDA FlashAttention kernels (the only file with torch
// headers). Tensors are attnbench's (B, S, H, D); lse is fp32 (B, Hq, Sq).
//   fwd(q, k, v, causal, scale, kernel) -> (out, lse)        kernel: "fa2" | "fa2_simt" | "fa1"
//   bwd(dout, q, k, v, out, lse, causal, scale, kernel) -> (dq, dk, dv)   ("fa2" | "fa1")
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <string>

#include "fa_params.h"

namespace {

using attnbench::FaParams;

// 16-byte aligned rows with a unit last-dim stride, or a contiguous copy.
at::Tensor aligned(const at::Tensor& x) {
  bool ok = x.stride(-1) == 1 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  for (int i = 0; i < 3; ++i) ok = ok && x.stride(i) % 8 == 0;
  return ok ? x : x.clone(at::MemoryFormat::Contiguous);
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), "q, k, v must be CUDA tensors");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be (B, S, H, D)");
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
              "dtype must be fp16 or bf16");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "q, k, v must share a dtype");
  const int64_t d = q.size(3);
  TORCH_CHECK(d == 64 || d == 128, "unsupported: head dim ", d, " not compiled (has 64, 128)");
  TORCH_CHECK(k.size(3) == d && v.size(3) == d, "q, k, v head dims differ");
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0), "batch sizes differ");
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v shapes differ");
  TORCH_CHECK(q.size(2) % k.size(2) == 0, "heads_kv must divide heads_q");
  TORCH_CHECK(q.numel() > 0 && k.numel() > 0, "empty q or k");
}

FaParams make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& o, const at::Tensor& lse, bool causal, double scale) {
  FaParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.o = o.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.q_bs = q.stride(0), p.q_rs = q.stride(1), p.q_hs = q.stride(2);
  p.k_bs = k.stride(0), p.k_rs = k.stride(1), p.k_hs = k.stride(2);
  p.v_bs = v.stride(0), p.v_rs = v.stride(1), p.v_hs = v.stride(2);
  p.o_bs = o.stride(0), p.o_rs = o.stride(1), p.o_hs = o.stride(2);
  p.b = static_cast<int>(q.size(0));
  p.sq = static_cast<int>(q.size(1));
  p.hq = static_cast<int>(q.size(2));
  p.d = static_cast<int>(q.size(3));
  p.sk = static_cast<int>(k.size(1));
  p.hkv = static_cast<int>(k.size(2));
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  p.bf16 = q.scalar_type() == at::kBFloat16;
  return p;
}

void check_cuda(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, what, " failed: ", cudaGetErrorString(e));
}

std::vector<at::Tensor> fwd(at::Tensor q, at::Tensor k, at::Tensor v, bool causal, double scale,
                            const std::string& kernel) {
  check_inputs(q, k, v);
  q = aligned(q), k = aligned(k), v = aligned(v);
  const c10::cuda::CUDAGuard guard(q.device());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  auto out = at::empty_like(q, q.options().memory_format(at::MemoryFormat::Contiguous));
  auto lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  FaParams p = make_params(q, k, v, out, lse, causal, scale);
  if (kernel == "fa2") {
    check_cuda(attnbench::fa2_fwd(p, stream), "fa2_fwd");
  } else if (kernel == "fa2_simt") {
    check_cuda(attnbench::fa2_simt_fwd(p, stream), "fa2_simt_fwd");
  } else if (kernel == "fa1") {
    // Algorithm 1, step 2: O = 0, l = 0, m = -inf in HBM
    auto o_acc = at::zeros(q.sizes(), q.options().dtype(at::kFloat));
    auto m_acc = at::full({q.size(0), q.size(2), q.size(1)}, -INFINITY,
                          q.options().dtype(at::kFloat));
    auto l_acc = at::zeros_like(m_acc);
    p.o_acc = o_acc.data_ptr<float>();
    p.m_acc = m_acc.data_ptr<float>();
    p.l_acc = l_acc.data_ptr<float>();
    check_cuda(attnbench::fa1_fwd(p, stream), "fa1_fwd");
  } else {
    TORCH_CHECK(false, "unknown kernel ", kernel);
  }
  return {out, lse};
}

std::vector<at::Tensor> bwd(at::Tensor dout, at::Tensor q, at::Tensor k, at::Tensor v,
                            at::Tensor out, at::Tensor lse, bool causal, double scale,
                            const std::string& kernel) {
  check_inputs(q, k, v);
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(), "dout/out shape != q shape");
  TORCH_CHECK(dout.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
              "dout/out dtype != q dtype");
  q = aligned(q), k = aligned(k), v = aligned(v), out = aligned(out), dout = aligned(dout);
  lse = lse.to(at::kFloat).contiguous();
  const c10::cuda::CUDAGuard guard(q.device());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  FaParams p = make_params(q, k, v, out, lse, causal, scale);
  p.dout = dout.data_ptr();
  p.do_bs = dout.stride(0), p.do_rs = dout.stride(1), p.do_hs = dout.stride(2);
  auto dvec = at::empty_like(lse);
  p.dvec = dvec.data_ptr<float>();
  const auto cont = at::MemoryFormat::Contiguous;
  if (kernel == "fa2") {
    auto dq = at::empty_like(q, q.options().memory_format(cont));
    auto dk = at::empty_like(k, k.options().memory_format(cont));
    auto dv = at::empty_like(v, v.options().memory_format(cont));
    p.dq = dq.data_ptr(), p.dk = dk.data_ptr(), p.dv = dv.data_ptr();
    check_cuda(attnbench::fa2_bwd(p, stream), "fa2_bwd");
    return {dq, dk, dv};
  }
  TORCH_CHECK(kernel == "fa1", "no backward for kernel ", kernel);
  const auto f32 = q.options().dtype(at::kFloat);
  auto dq_acc = at::zeros(q.sizes(), f32);
  auto dk_acc = at::empty({k.size(0), k.size(1), q.size(2), k.size(3)}, f32);
  auto dv_acc = at::empty_like(dk_acc);
  p.dq_acc = dq_acc.data_ptr<float>();
  p.dk_acc = dk_acc.data_ptr<float>();
  p.dv_acc = dv_acc.data_ptr<float>();
  check_cuda(attnbench::fa1_bwd(p, stream), "fa1_bwd");
  const int64_t g = q.size(2) / k.size(2);
  auto group_sum = [&](const at::Tensor& x) {  // (B, Sk, Hq, D) -> (B, Sk, Hkv, D), fixed order
    if (g == 1) return x.to(q.scalar_type());
    return x.view({k.size(0), k.size(1), k.size(2), g, k.size(3)}).sum(3).to(q.scalar_type());
  };
  return {dq_acc.to(q.scalar_type()), group_sum(dk_acc), group_sum(dv_acc)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "attnbench CUDA FlashAttention-1/-2 (fp16/bf16, head dim 64/128)";
  m.def("fwd", &fwd, "attention forward -> (out, lse)");
  m.def("bwd", &bwd, "attention backward -> (dq, dk, dv)");
}
