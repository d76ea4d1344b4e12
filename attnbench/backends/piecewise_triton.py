"""``piecewise_triton``: attnbench's own fused piecewise attention in Triton
(:mod:`attnbench.kernels.piecewise`): FA2 forward and deterministic backward with the
(query block, key block) tiles classified against the runtime threshold, lse returned, GQA,
Sq != Sk. Runs on CUDA; on the CPU only under ``TRITON_INTERPRET=1`` (fp16/fp32: the
interpreter's bf16 ``tl.dot`` is wrong in triton 3.6)."""

from __future__ import annotations

from .base import Backend, Capabilities, register
from .triton_fa2 import _interpret


def _kernels():
    from ..kernels import piecewise

    return piecewise


@register
class PiecewiseTriton(Backend):
    name = "piecewise_triton"
    description = "fused piecewise attention in Triton (attnbench's own; tile-classified FA2)"
    _caps = dict(problem="piecewise", max_head_dim=256, lse=True, deterministic=True)

    @property
    def caps(self) -> Capabilities:
        """CPU is listed only while ``TRITON_INTERPRET=1`` is set (read at each query)."""
        return Capabilities(devices={"cuda", "cpu"} if _interpret() else {"cuda"}, **self._caps)

    def availability(self, device):
        if device == "cpu" and not _interpret():
            return "piecewise_triton runs on the CPU only with TRITON_INTERPRET=1"
        try:
            _kernels()
        except Exception as e:  # not merged yet, or a broken triton install: say which
            return f"attnbench.kernels.piecewise not importable: {type(e).__name__}: {e}"
        return None

    def extra_check(self, case, device, mode):
        if device == "cpu" and case.dtype == "bf16":
            return (
                "unsupported: bf16 under TRITON_INTERPRET (the interpreter's bf16 tl.dot is wrong)"
            )
        return None

    def forward(self, p, case):
        return _kernels().piecewise_attention(
            *p.leaves,
            dist_threshold=case.dist_threshold,
            causal=case.causal,
            softmax_scale=case.scale,
            deterministic=case.deterministic,
        )

    def kernel_config(self, p, case, mode):
        """The autotuned config of each kernel the timed call ran."""
        names = {"fwd": ("fwd",), "bwd": ("bwd_dkdv", "bwd_dq")}.get(
            mode, ("fwd", "bwd_dkdv", "bwd_dq")
        )
        chosen = getattr(_kernels(), "chosen_configs", dict)()
        return "; ".join(f"{n} {chosen[n]}" for n in names if chosen.get(n)) or None
