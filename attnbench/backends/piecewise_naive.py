"""``piecewise_naive``: the piecewise reference run in the input dtype (same-dtype torch), the
baseline of the accuracy rule for piecewise attention, as ``naive`` is for attention."""

from ..problems.piecewise import piecewise_ref
from .base import Backend, Capabilities, register


@register
class PiecewiseNaive(Backend):
    name = "piecewise_naive"
    description = "piecewise reference in the input dtype (materialises both score matrices)"
    caps = Capabilities(problem="piecewise", devices={"cpu", "cuda"}, lse=True, deterministic=True)

    def forward(self, p, case):
        q1, k1, q2, k2, v = p.leaves
        return piecewise_ref(
            q1,
            k1,
            q2,
            k2,
            v,
            dist_threshold=case.dist_threshold,
            causal=case.causal,
            softmax_scale=case.scale,
            upcast=False,
        )
