"""PyTorch SDPA, one backend per kernel: ``sdpa_math``, ``sdpa_flash``, ``sdpa_efficient``,
``sdpa_cudnn`` (forced with ``torch.nn.attention.sdpa_kernel``).

Layout: SDPA takes (B, H, S, D); ``prepare`` makes contiguous B,H,S,D leaves outside the timed
region, ``forward`` returns a B,S,H,D view. SDPA's ``is_causal`` is top-left aligned, so for
``seqlen_q != seqlen_k`` (and sliding windows) an explicit bottom-right bool mask is passed;
kernels that take no mask report such cases unsupported, with SDPA's own reason.
"""

from __future__ import annotations

import warnings

import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from ..reference import alibi_bias, visible_mask
from .base import Backend, Capabilities, Prepared, Unsupported, register

_NO_KERNEL = ("No available kernel", "No viable backend")


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


_CAPS = dict(window=True, alibi=True)

register(
    type(
        "SdpaMath",
        (Sdpa,),
        dict(
            name="sdpa_math",
            kernel=SDPBackend.MATH,
            description="SDPA math (unfused, aten ops)",
            caps=Capabilities(devices={"cpu", "cuda"}, **_CAPS),
        ),
    )
)
register(
    type(
        "SdpaFlash",
        (Sdpa,),
        dict(
            name="sdpa_flash",
            kernel=SDPBackend.FLASH_ATTENTION,
            takes_mask=False,
            description="SDPA flash (FlashAttention-2 inside torch; CPU: torch's flash CPU kernel)",
            caps=Capabilities(devices={"cpu", "cuda"}),
        ),
    )
)
register(
    type(
        "SdpaEfficient",
        (Sdpa,),
        dict(
            name="sdpa_efficient",
            kernel=SDPBackend.EFFICIENT_ATTENTION,
            description="SDPA memory-efficient (xformers/CUTLASS)",
            caps=Capabilities(devices={"cuda"}, **_CAPS),
        ),
    )
)
register(
    type(
        "SdpaCudnn",
        (Sdpa,),
        dict(
            name="sdpa_cudnn",
            kernel=SDPBackend.CUDNN_ATTENTION,
            description="SDPA cuDNN attention",
            caps=Capabilities(devices={"cuda"}, dtypes={"fp16", "bf16"}, max_head_dim=128, **_CAPS),
        ),
    )
)
