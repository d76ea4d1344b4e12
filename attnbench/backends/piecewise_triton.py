"""``piecewise_triton``: attnbench's own fused piecewise attention in Triton
(:mod:`attnbench.kernels.piecewise`): FA2 forward and deterministic backward with the
(query block, key block) tiles classified against the runtime threshold, lse returned, GQA,
Sq != Sk. Runs on CUDA; on the CPU only under ``TRITON_INTERPRET=1`` (fp16/fp32: the
interpreter's bf16 ``tl.dot`` is wrong in triton 3.6)."""

from __future__ import annotations

from ..kernels._triton import chosen_configs_text, interpreting
from ..problems.piecewise import case_kwargs
from . import triton_common
from .base import Backend, Capabilities, register


def _kernels():
    return triton_common.kernels("piecewise")


@register
class PiecewiseTriton(Backend):
    name = "piecewise_triton"
    description = "fused piecewise attention in Triton (attnbench's own; tile-classified FA2)"
    _caps = dict(problem="piecewise", max_head_dim=256, lse=True, deterministic=True)

    @property
    def caps(self) -> Capabilities:
        """CPU is listed only while ``TRITON_INTERPRET=1`` is set (read at each query)."""
        return Capabilities(devices={"cuda", "cpu"} if interpreting() else {"cuda"}, **self._caps)

    def availability(self, device):
        return triton_common.availability(self.name, "piecewise", device)

    def extra_check(self, case, device, mode):
        return triton_common.interpreter_refusal(case, device)

    def forward(self, p, case):
        kw = case_kwargs(case)
        return _kernels().piecewise_attention(*p.leaves, deterministic=case.deterministic, **kw)

    def kernel_config(self, p, case, mode):
        return chosen_configs_text(_kernels().chosen_configs(), mode)
