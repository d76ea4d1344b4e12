"""Local attention kernels for the distributed strategies: one block forward that returns the
log-sum-exp, one block backward given ``(dout, out, lse)``, and the stable merge of partial
results.

Every strategy splits attention into blocks (a query shard against a key/value shard). A block
forward returns ``out_b`` (input dtype) and ``lse_b = log sum_j exp(s_ij)`` (fp32, (B, H, Sq)).
Partial results of the same query rows are merged in fp32 by :mod:`attnbench.distributed.merge`
(``out = (e^lse out + e^lse_b out_b) / (e^lse + e^lse_b)``, ``lse = log(e^lse + e^lse_b)``
without overflow; one fused pass on the GPU). The block backward needs the *global* ``out`` and ``lse`` (the
softmax of one block is normalised by all keys): with ``P_b = exp(scale q k_b^T - lse)`` and
``delta = rowsum(dout * out)``::

    dV_b = P_b^T dout     dP_b = dout V_b^T     dS_b = P_b * (dP_b - delta)
    dQ  += scale dS_b K_b       dK_b = scale dS_b^T Q

Kernels (``LOCAL_KERNELS`` and every registered backend with ``caps.lse``):

==============  ==============================================  ================================
name            block forward                                   block backward
==============  ==============================================  ================================
``ref``         :func:`attnbench.reference.attention_ref` fp32  fp32 recomputation (above)
``sdpa_flash``  ``aten._scaled_dot_product_flash_attention``    the matching aten backward op
                (``_for_cpu`` on CPU), GQA by repeating k/v     (kv-head groups summed)
``sdpa_eff..``  ``aten._scaled_dot_product_efficient_attention``  the matching aten backward op
                (CUDA only), GQA by repeating k/v               (lse padded to 32 rows)
``flash_attn``  flash-attn's ``_flash_attn_forward``            ``_flash_attn_backward``
any backend     ``Backend.prepare`` + ``forward`` (no grad)      ``lse_backward`` if the backend
with lse        e.g. ``naive``, ``triton_fa2``                  has one, else fp32 recomputation
==============  ==============================================  ================================

The fp32 recomputation materialises the block's (Sq, Sk) scores one kv-head group at a time; it
is exact maths, not a kernel, and is what a backend without a block-backward API gets.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..backends.base import REGISTRY, Backend, Prepared
from ..case import Case
from ..inputs import Inputs
from ..reference import attention_ref, visible_mask


class LocalKernel:
    """A block forward with lse and a block backward. Layout (B, S, H, D); lse fp32 (B, H, S)."""

    name: str = ""
    description: str = ""
    block_backward: str = "fp32 recomputation"

    def why_unsupported(self, case: Case, device: str) -> str | None:
        return None

    def forward(self, q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def backward(self, dout, q, k, v, out, lse, causal: bool, scale: float):
        """(dq, dk, dv) of one block given the global ``out`` and ``lse`` of its query rows."""
        return recompute_backward(dout, q, k, v, out, lse, causal, scale)


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


# ---- kernels --------------------------------------------------------------------------------
class RefKernel(LocalKernel):
    name = "ref"
    description = "attention_ref in fp32 (fp64 for fp32 inputs), output cast to the input dtype"

    def forward(self, q, k, v, causal, scale):
        with torch.no_grad():
            out, lse = attention_ref(q, k, v, causal=causal, softmax_scale=scale, upcast=True)
        return out.to(q.dtype), lse


class BackendKernel(LocalKernel):
    """Any registered backend that returns the lse. Its forward runs through ``prepare`` and
    ``forward`` under ``no_grad``; the backward is the backend's ``lse_backward(dout, q, k, v,
    out, lse, causal=, softmax_scale=)`` when it has one, else the fp32 recomputation."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.name = backend.name
        self.description = backend.description
        if hasattr(backend, "lse_backward"):
            self.block_backward = f"{backend.name}.lse_backward"

    def _case(self, q, k, causal, scale) -> Case:
        b, sq, hq, d = q.shape
        dtype = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[q.dtype]
        return Case(
            batch=b,
            heads_q=hq,
            heads_kv=k.shape[2],
            seqlen_q=sq,
            seqlen_k=k.shape[1],
            head_dim=d,
            dtype=dtype,
            causal=causal,
            softmax_scale=scale,
        )

    def why_unsupported(self, case, device):
        if not self.backend.caps.lse:
            return (
                f"local backend {self.name!r} returns no log-sum-exp (caps.lse is False); the "
                "distributed strategies need it to merge partial results"
            )
        for causal in {case.causal, False}:
            why = self.backend.why_unsupported(replace(case, causal=causal), device, "fwd")
            if why:
                return f"{self.name}: {why}"
        return None

    def forward(self, q, k, v, causal, scale):
        case = self._case(q, k, causal, scale)
        inp = Inputs(q=q, k=k, v=v, dout=None)
        with torch.no_grad():
            if type(self.backend).prepare is Backend.prepare:
                # the default prepare only clones fresh leaves: skip the copies in a ring step
                p = Prepared((q, k, v), {"inputs": inp})
            else:
                p = self.backend.prepare(inp, case)
            out, lse = self.backend.forward(p, case)
        if lse is None:
            raise RuntimeError(f"{self.name} returned no lse")
        return out.detach(), lse.detach().float()

    def backward(self, dout, q, k, v, out, lse, causal, scale):
        if hasattr(self.backend, "lse_backward"):
            return self.backend.lse_backward(
                dout, q, k, v, out, lse, causal=causal, softmax_scale=scale
            )
        return recompute_backward(dout, q, k, v, out, lse, causal, scale)


def _repeat_kv(k, v, g):
    if g == 1:
        return k, v
    return k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)


def _sum_groups(dk, dv, g):
    if g == 1:
        return dk, dv
    return dk.unflatten(2, (-1, g)).sum(3), dv.unflatten(2, (-1, g)).sum(3)


class _SdpaKernel(LocalKernel):
    """SDPA kernels through the aten ops that return the lse, (B, H, S, D) views inside, GQA by
    repeating k/v (and summing the kv-head groups of dk/dv). ``is_causal`` is top-left aligned,
    which equals bottom-right for the square causal blocks the strategies use (non-square causal
    blocks are refused)."""

    def why_unsupported(self, case, device):
        if device == "cuda" and case.dtype not in ("fp16", "bf16"):
            return f"{self.name}: dtype {case.dtype} (the CUDA kernel takes fp16, bf16)"
        if device == "cuda" and case.head_dim > 256:
            return f"{self.name}: head dim {case.head_dim} > 256"
        return None

    def _fwd(self, qt, kt, vt, causal, scale):
        raise NotImplementedError

    def _bwd(self, dot, qt, kt, vt, ot, lse, causal, scale):
        raise NotImplementedError

    def forward(self, q, k, v, causal, scale):
        if causal and q.shape[1] != k.shape[1]:
            raise ValueError(f"{self.name} local kernel: causal blocks must be square")
        k, v = _repeat_kv(k, v, q.shape[2] // k.shape[2])
        out, lse = self._fwd(*(t.transpose(1, 2) for t in (q, k, v)), causal, scale)
        return out.transpose(1, 2), lse[..., : q.shape[1]].float()

    def backward(self, dout, q, k, v, out, lse, causal, scale):
        g = q.shape[2] // k.shape[2]
        k, v = _repeat_kv(k, v, g)
        qt, kt, vt, ot, dot = (
            t.transpose(1, 2) for t in (q, k, v, out.to(q.dtype), dout.to(q.dtype))
        )
        dq, dk, dv = self._bwd(dot, qt, kt, vt, ot, lse.float().contiguous(), causal, scale)
        dk, dv = _sum_groups(dk.transpose(1, 2), dv.transpose(1, 2), g)
        return dq.transpose(1, 2), dk, dv


class SdpaFlashKernel(_SdpaKernel):
    name = "sdpa_flash"
    description = "aten _scaled_dot_product_flash_attention (+ backward op); GQA by repeating k/v"
    block_backward = "aten flash backward op"

    def _fwd(self, qt, kt, vt, causal, scale):
        if qt.is_cuda:
            res = torch.ops.aten._scaled_dot_product_flash_attention(
                qt, kt, vt, 0.0, causal, False, scale=scale
            )
        else:
            res = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qt, kt, vt, 0.0, causal, scale=scale
            )
        return res[0], res[1]

    def _bwd(self, dot, qt, kt, vt, ot, lse, causal, scale):
        if not qt.is_cuda:
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                dot, qt, kt, vt, ot, lse, 0.0, causal, scale=scale
            )
        # dense inputs: no cu_seqlens (None = undefined, as the forward returns them); dropout 0,
        # so the philox seed/offset are never read
        seed = torch.empty(2, dtype=torch.uint64, device=qt.device)
        offset = torch.empty((), dtype=torch.uint64, device=qt.device)
        sq, sk = qt.shape[2], kt.shape[2]
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dot, qt, kt, vt, ot, lse, None, None, sq, sk, 0.0, causal, seed, offset, scale=scale
        )


class SdpaEfficientKernel(_SdpaKernel):
    """The memory-efficient (xformers/cutlass) kernel. Its lse comes padded to a multiple of 32
    rows; the backward gets it padded the same way."""

    name = "sdpa_efficient"
    description = (
        "aten _scaled_dot_product_efficient_attention (+ backward op); GQA by repeating k/v"
    )
    block_backward = "aten efficient backward op"

    def why_unsupported(self, case, device):
        if device != "cuda":
            return "sdpa_efficient: CUDA only (aten's memory-efficient kernel has no CPU version)"
        if case.dtype not in ("fp16", "bf16", "fp32"):
            return f"sdpa_efficient: dtype {case.dtype}"
        return None

    def _fwd(self, qt, kt, vt, causal, scale):
        res = torch.ops.aten._scaled_dot_product_efficient_attention(
            qt, kt, vt, None, True, 0.0, causal, scale=scale
        )
        return res[0], res[1]

    def _bwd(self, dot, qt, kt, vt, ot, lse, causal, scale):
        sq = qt.shape[2]
        pad = -sq % 32
        if pad:
            lse = torch.nn.functional.pad(lse, (0, pad))
        # dropout 0: the philox seed/offset are never read
        seed = torch.zeros((), dtype=torch.int64, device=qt.device)
        offset = torch.zeros((), dtype=torch.int64, device=qt.device)
        dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            dot,
            qt,
            kt,
            vt,
            None,
            ot,
            lse,
            seed,
            offset,
            0.0,
            [True, True, True, False],
            causal,
            scale=scale,
        )
        return dq, dk, dv


class FlashAttnKernel(LocalKernel):
    """flash-attn 2's block API (``flash_attn.flash_attn_interface``), as ring-flash-attention
    uses it, called positionally in the layout of the installed version (2.6 took a
    ``window_size`` tuple, 2.7+ takes ``window_size_left``/``_right``)."""

    name = "flash_attn"
    description = "flash-attn 2 _flash_attn_forward / _flash_attn_backward"
    block_backward = "flash-attn _flash_attn_backward"

    def _iface(self):
        from flash_attn import flash_attn_interface

        return flash_attn_interface

    def why_unsupported(self, case, device):
        if device != "cuda":
            return "flash_attn runs on cuda only"
        try:
            self._iface()
        except Exception as e:
            return f"flash-attn not importable: {type(e).__name__}: {e}"
        if case.dtype not in ("fp16", "bf16"):
            return f"flash_attn: dtype {case.dtype} (takes fp16, bf16)"
        if case.head_dim % 8 or case.head_dim > 256:
            return f"flash_attn: head dim {case.head_dim}"
        return None

    def _window(self):
        """flash-attn >= 2.7 takes window_size_left/_right, 2.6 a window_size tuple. The 2.7+
        functions are torch custom ops, so the layout is chosen by version, not by inspect."""
        import flash_attn

        major, minor = (int(x) for x in flash_attn.__version__.split(".")[:2])
        return (-1, -1) if (major, minor) >= (2, 7) else ((-1, -1),)

    def forward(self, q, k, v, causal, scale):
        fn = self._iface()._flash_attn_forward
        # (q, k, v, dropout_p, softmax_scale, causal, window..., softcap, alibi_slopes,
        #  return_softmax)
        res = fn(q, k, v, 0.0, scale, causal, *self._window(), 0.0, None, False)
        return res[0], res[-3] if len(res) > 4 else res[1]

    def backward(self, dout, q, k, v, out, lse, causal, scale):
        fn = self._iface()._flash_attn_backward
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        # (dout, q, k, v, out, lse, dq, dk, dv, dropout_p, softmax_scale, causal, window...,
        #  softcap, alibi_slopes, deterministic, rng_state)
        fn(
            dout.to(q.dtype).contiguous(),
            q,
            k,
            v,
            out.to(q.dtype).contiguous(),
            lse.contiguous(),
            dq,
            dk,
            dv,
            0.0,
            scale,
            causal,
            *self._window(),
            0.0,
            None,
            False,
            None,
        )
        return dq, dk, dv


LOCAL_KERNELS: dict[str, LocalKernel] = {
    k.name: k for k in (RefKernel(), SdpaFlashKernel(), SdpaEfficientKernel(), FlashAttnKernel())
}


def get_local_kernel(name: str) -> LocalKernel:
    """The local kernel called ``name``: a dedicated one above, else a registered backend."""
    if name in LOCAL_KERNELS:
        return LOCAL_KERNELS[name]
    if name in REGISTRY:
        return BackendKernel(REGISTRY[name])
    known = sorted(set(LOCAL_KERNELS) | {n for n, b in REGISTRY.items() if b.caps.lse})
    raise KeyError(f"unknown local backend {name!r}; with lse: {', '.join(known)}")


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
