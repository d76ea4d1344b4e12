"""The local kernel of the distributed strategies: a registered backend's block API (see
:class:`attnbench.backends.base.Backend`), the autograd wrapper of the non-distributed run, and
the fp32 recomputation backward for backends that declare no block backward.

Every strategy splits attention into blocks (a query shard against a key/value shard). A block
forward returns ``out_b`` (input dtype) and ``lse_b = log sum_j exp(s_ij)`` (fp32, (B, H, Sq)).
Partial results of the same query rows are merged in fp32 by :mod:`attnbench.distributed.merge`
(``out = (e^lse out + e^lse_b out_b) / (e^lse + e^lse_b)``, ``lse = log(e^lse + e^lse_b)``
without overflow; one fused pass on the GPU). The block backward needs the *global* ``out`` and
``lse`` (the softmax of one block is normalised by all keys): with
``P_b = exp(scale q k_b^T - lse)`` and ``delta = rowsum(dout * out)``::

    dV_b = P_b^T dout     dP_b = dout V_b^T     dS_b = P_b * (dP_b - delta)
    dQ  += scale dS_b K_b       dK_b = scale dS_b^T Q

Backends with a block API (``caps.block``; a name means the same backend as in single-device
runs):

===================  =============================================  ===========================
backend              block forward                                  block backward
===================  =============================================  ===========================
``naive``            reference attention in the input dtype          fp32 recomputation (above)
``sdpa_flash``       ``aten._scaled_dot_product_flash_attention``   the matching aten op
                     (``_for_cpu`` on CPU), GQA by repeating k/v    (kv-head groups summed)
``sdpa_efficient``   ``aten._scaled_dot_product_efficient_..``      the matching aten op
``flash_attn_func``  flash-attn's ``_flash_attn_forward``           ``_flash_attn_backward``
``triton_fa2``       ``flash_attn_forward`` (attnbench's kernel)    ``flash_attn_backward``
===================  =============================================  ===========================

The fp32 recomputation materialises the block's (Sq, Sk) scores one kv-head group at a time; it
is exact maths, not a kernel.

The merge weights every partial ``out_b`` by ``e^(lse_b - lse)``, so a block lse that is only as
precise as the input dtype costs the merged out a relative error of the lse's rounding *per
partial*, which the non-distributed run never pays (its out does not depend on its lse). The
``naive`` backend's block forward once returned ``logsumexp`` of bf16 scores rounded to bf16 (up
to 0.03 at lse ~ 8): it now reduces the same scores' lse in fp32, as the block API promises.
"""

from __future__ import annotations

import torch

from ..backends.base import REGISTRY, Backend
from ..problems.attention.reference import visible_mask
from ..problems.base import Case


# ---- fp32 recomputation backward ------------------------------------------------------------
def recompute_backward(dout, q, k, v, out, lse, causal, scale, budget_bytes: int | None = None):
    """Block gradients in fp32 from the saved global ``out``/``lse`` (formulas in the module
    docstring), one chunk of kv heads at a time so the (Sq, Sk) scores fit ``budget_bytes``.
    Returns fp32 dq (B, Sq, Hq, D), dk, dv (B, Sk, Hkv, D)."""
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    g = hq // hkv
    if budget_bytes is None:
        budget_bytes = (2 << 30) if q.is_cuda else (256 << 20)
    per_head = b * g * sq * sk * 4 * 3
    step = max(1, min(hkv, budget_bytes // max(per_head, 1)))
    f32 = torch.float32
    dq = torch.empty(b, sq, hq, d, dtype=f32, device=q.device)
    dk = torch.empty(b, sk, hkv, d, dtype=f32, device=q.device)
    dv = torch.empty(b, sk, hkv, d, dtype=f32, device=q.device)
    mask = visible_mask(sq, sk, causal, device=q.device)
    for h0 in range(0, hkv, step):
        hk = slice(h0, min(hkv, h0 + step))
        hs = slice(h0 * g, hk.stop * g)
        qc, doc, oc = (t[:, :, hs].to(f32) for t in (q, dout, out))
        kc = k[:, :, hk].to(f32).repeat_interleave(g, dim=2)
        vc = v[:, :, hk].to(f32).repeat_interleave(g, dim=2)
        s = torch.einsum("bqhd,bkhd->bhqk", qc * scale, kc)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        lc = lse[:, hs].to(f32)
        p = torch.exp(s - lc.masked_fill(torch.isinf(lc), float("inf"))[..., None])
        del s
        dvc = torch.einsum("bhqk,bqhd->bkhd", p, doc)
        dp = torch.einsum("bqhd,bkhd->bhqk", doc, vc)
        delta = (doc * oc).sum(-1).transpose(1, 2)  # (B, H, Sq)
        ds = p * (dp - delta[..., None])
        del p, dp
        dq[:, :, hs] = torch.einsum("bhqk,bkhd->bqhd", ds, kc) * scale
        dkc = torch.einsum("bhqk,bqhd->bkhd", ds, qc) * scale
        n = hk.stop - hk.start
        dk[:, :, hk] = dkc.unflatten(2, (n, g)).sum(3)
        dv[:, :, hk] = dvc.unflatten(2, (n, g)).sum(3)
    return dq, dk, dv


# ---- the local kernel: a registered backend's block API ---------------------------------------
class LocalKernel:
    """A registered backend as the strategies use it: its block forward, and its block backward
    or (``caps.block_backward`` False) the fp32 recomputation."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.name = backend.name

    def why_unsupported(self, case: Case, device: str) -> str | None:
        return self.backend.why_block_unsupported(case, device)

    def forward(self, q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backend.block_forward(q, k, v, causal, scale)

    def backward(self, dout, q, k, v, out, lse, causal: bool, scale: float):
        """(dq, dk, dv) of one block given the global ``out`` and ``lse`` of its query rows."""
        if self.backend.caps.block_backward:
            return self.backend.block_backward(dout, q, k, v, out, lse, causal, scale)
        return recompute_backward(dout, q, k, v, out, lse, causal, scale)


def get_local_kernel(name: str) -> LocalKernel:
    """The registered backend called ``name`` as a local kernel (it must declare a block API)."""
    known = ", ".join(n for n, b in REGISTRY.items() if b.caps.block)
    if name not in REGISTRY:
        raise KeyError(f"unknown local backend {name!r}; backends with a block API: {known}")
    if not REGISTRY[name].caps.block:
        raise KeyError(
            f"local backend {name!r} has no block API (caps.block is False; the strategies need "
            f"a block forward returning the log-sum-exp); backends with one: {known}"
        )
    return LocalKernel(REGISTRY[name])


class LocalAttnFunc(torch.autograd.Function):
    """The non-distributed run: one block over the whole sequence, with the kernel's own
    backward (the baseline every strategy is compared with, and world size 1)."""

    @staticmethod
    def forward(ctx, q, k, v, kernel: LocalKernel, causal: bool, scale: float):
        out, lse = kernel.forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.kernel, ctx.causal, ctx.scale = kernel, causal, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.kernel.backward(dout, q, k, v, out, lse, ctx.causal, ctx.scale)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def local_attention(q, k, v, kernel: LocalKernel, causal: bool, scale: float):
    return LocalAttnFunc.apply(q, k, v, kernel, causal, scale)
