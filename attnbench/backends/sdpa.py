"""PyTorch SDPA, one backend per kernel: ``sdpa_math``, ``sdpa_flash``, ``sdpa_efficient``,
``sdpa_cudnn`` (forced with ``torch.nn.attention.sdpa_kernel``).

Layout: SDPA takes (B, H, S, D); ``prepare`` makes contiguous B,H,S,D leaves outside the timed
region, ``forward`` returns a B,S,H,D view. SDPA's ``is_causal`` is top-left aligned, so for
``seqlen_q != seqlen_k`` (and sliding windows) an explicit bottom-right bool mask is passed;
kernels that take no mask report such cases unsupported, with SDPA's own reason.

``sdpa_flash`` and ``sdpa_efficient`` also have the block API of the distributed strategies:
the aten ops behind those two kernels, which return the lse, and their backward ops.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from ..problems.attention.reference import alibi_bias, visible_mask
from .base import Backend, Capabilities, Prepared, Unsupported, register

_NO_KERNEL = ("No available kernel", "No viable backend")
aten = torch.ops.aten


class _AtenOps(TorchDispatchMode):
    """Records the names of the aten ops run inside it."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


class Sdpa(Backend):
    kernel: SDPBackend
    takes_mask = True

    def extra_check(self, case, device, mode):
        if not self.takes_mask and (case.needs_mask or case.alibi):
            why = (
                "bottom-right causal with seqlen_q != seqlen_k"
                if case.causal and case.seqlen_q != case.seqlen_k
                else "an explicit mask/bias"
            )
            return f"unsupported: {self.name} takes no attn_mask, needed for {why}"
        return None

    def prepare(self, inp, case):
        leaves = tuple(
            t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (inp.q, inp.k, inp.v)
        )
        mask = None
        if case.needs_mask:
            mask = visible_mask(
                case.seqlen_q,
                case.seqlen_k,
                case.causal,
                case.window_left,
                case.window_right,
                device=inp.q.device,
            )
        if case.alibi:
            bias = alibi_bias(inp.alibi_slopes, case.seqlen_q, case.seqlen_k).to(case.torch_dtype)
            if mask is not None:
                bias = bias.masked_fill(~mask, float("-inf"))
            elif case.causal:
                m = visible_mask(case.seqlen_q, case.seqlen_k, True, device=inp.q.device)
                bias = bias.masked_fill(~m, float("-inf"))
            mask = bias
        is_causal = case.causal and mask is None
        return Prepared(leaves, {"mask": mask, "is_causal": is_causal})

    def _call(self, p, case):
        q, k, v = p.leaves
        with sdpa_kernel(self.kernel):
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=p.args["mask"],
                is_causal=p.args["is_causal"],
                scale=case.scale,
                enable_gqa=case.gqa,
            )

    def forward(self, p, case):
        try:
            out = self._call(p, case)
        except RuntimeError as e:
            if not any(s in str(e) for s in _NO_KERNEL):
                raise
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    self._call(p, case)
                except RuntimeError:
                    pass
            reasons = [str(w.message).split("\n")[0] for w in caught]
            raise Unsupported(f"unsupported: {'; '.join(reasons) or str(e).splitlines()[0]}") from e
        return out.transpose(1, 2), None

    def kernel_config(self, p, case, mode):
        """The aten kernel SDPA dispatched to (one forward, watched by a dispatch mode)."""
        with _AtenOps() as ops:
            self._call(p, case)
        fused = [o for o in ops.names if "scaled_dot_product" in o]
        return fused[0].removeprefix("aten._scaled_dot_product_") if fused else "math (aten ops)"

    def grads(self, p):
        return tuple(t.grad.transpose(1, 2) for t in p.leaves)

    # ---- block API: the aten ops behind the fused kernels, which return the lse -------------
    def block_forward(self, q, k, v, causal, softmax_scale):
        """GQA by repeating k/v; ``is_causal`` is top-left aligned, which equals bottom-right for
        the square causal blocks of the strategies (others are refused)."""
        if causal and q.shape[1] != k.shape[1]:
            raise ValueError(f"{self.name} block forward: causal blocks must be square")
        k, v = _repeat_kv(k, v, q.shape[2] // k.shape[2])
        with torch.no_grad():
            out, lse = self._aten_fwd(
                *(t.transpose(1, 2) for t in (q, k, v)), causal, softmax_scale
            )
        return out.transpose(1, 2), lse[..., : q.shape[1]].float()

    def block_backward(self, dout, q, k, v, out, lse, causal, softmax_scale):
        g = q.shape[2] // k.shape[2]
        k, v = _repeat_kv(k, v, g)
        qt, kt, vt, ot, dot = (
            t.transpose(1, 2) for t in (q, k, v, out.to(q.dtype), dout.to(q.dtype))
        )
        lse = lse.float().contiguous()
        dq, dk, dv = self._aten_bwd(dot, qt, kt, vt, ot, lse, causal, softmax_scale)
        dk, dv = _sum_groups(dk.transpose(1, 2), dv.transpose(1, 2), g)
        return dq.transpose(1, 2), dk, dv


def _repeat_kv(k, v, g):
    if g == 1:
        return k, v
    return k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)


def _sum_groups(dk, dv, g):
    if g == 1:
        return dk, dv
    return dk.unflatten(2, (-1, g)).sum(3), dv.unflatten(2, (-1, g)).sum(3)


_CAPS = dict(window=True, alibi=True)


@register
class SdpaMath(Sdpa):
    name = "sdpa_math"
    kernel = SDPBackend.MATH
    description = "SDPA math (unfused, aten ops)"
    caps = Capabilities(devices={"cpu", "cuda"}, **_CAPS)


@register
class SdpaFlash(Sdpa):
    """Block API: ``aten._scaled_dot_product_flash_attention`` (``_for_cpu`` on the CPU) and its
    backward op."""

    name = "sdpa_flash"
    kernel = SDPBackend.FLASH_ATTENTION
    takes_mask = False
    description = "SDPA flash (FlashAttention-2 inside torch; CPU: torch's flash CPU kernel)"
    caps = Capabilities(devices={"cpu", "cuda"}, block=True, block_backward=True)

    def why_block_unsupported(self, case, device):
        if device == "cuda" and case.dtype not in ("fp16", "bf16"):
            return f"{self.name}: dtype {case.dtype} (the CUDA kernel takes fp16, bf16)"
        return super().why_block_unsupported(case, device)

    def _aten_fwd(self, qt, kt, vt, causal, scale):
        if qt.is_cuda:
            res = aten._scaled_dot_product_flash_attention(
                qt, kt, vt, 0.0, causal, False, scale=scale
            )
        else:
            res = aten._scaled_dot_product_flash_attention_for_cpu(
                qt, kt, vt, 0.0, causal, scale=scale
            )
        return res[0], res[1]

    def _aten_bwd(self, dot, qt, kt, vt, ot, lse, causal, scale):
        if not qt.is_cuda:
            return aten._scaled_dot_product_flash_attention_for_cpu_backward(
                dot, qt, kt, vt, ot, lse, 0.0, causal, scale=scale
            )
        # dense inputs: no cu_seqlens (None = undefined, as the forward returns them); dropout 0,
        # so the philox seed/offset are never read
        seed = torch.empty(2, dtype=torch.uint64, device=qt.device)
        offset = torch.empty((), dtype=torch.uint64, device=qt.device)
        sq, sk = qt.shape[2], kt.shape[2]
        return aten._scaled_dot_product_flash_attention_backward(
            dot, qt, kt, vt, ot, lse, None, None, sq, sk, 0.0, causal, seed, offset, scale=scale
        )


@register
class SdpaEfficient(Sdpa):
    """Block API: ``aten._scaled_dot_product_efficient_attention`` and its backward op; its lse
    comes padded to a multiple of 32 rows and the backward gets it padded the same way."""

    name = "sdpa_efficient"
    kernel = SDPBackend.EFFICIENT_ATTENTION
    description = "SDPA memory-efficient (xformers/CUTLASS)"
    caps = Capabilities(devices={"cuda"}, block=True, block_backward=True, **_CAPS)

    def _aten_fwd(self, qt, kt, vt, causal, scale):
        res = aten._scaled_dot_product_efficient_attention(
            qt, kt, vt, None, True, 0.0, causal, scale=scale
        )
        return res[0], res[1]

    def _aten_bwd(self, dot, qt, kt, vt, ot, lse, causal, scale):
        pad = -qt.shape[2] % 32
        if pad:
            lse = F.pad(lse, (0, pad))
        # dropout 0: the philox seed/offset are never read
        seed = torch.zeros((), dtype=torch.int64, device=qt.device)
        offset = torch.zeros((), dtype=torch.int64, device=qt.device)
        grad_mask = [True, True, True, False]
        dq, dk, dv, _ = aten._scaled_dot_product_efficient_attention_backward(
            dot, qt, kt, vt, None, ot, lse, seed, offset, 0.0, grad_mask, causal, scale=scale
        )
        return dq, dk, dv


@register
class SdpaCudnn(Sdpa):
    name = "sdpa_cudnn"
    kernel = SDPBackend.CUDNN_ATTENTION
    description = "SDPA cuDNN attention"
    caps = Capabilities(devices={"cuda"}, dtypes={"fp16", "bf16"}, max_head_dim=128, **_CAPS)
