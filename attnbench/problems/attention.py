"""Plain attention (flash-attention's problem): its case fields are :class:`attnbench.case.Case`,
its grid :class:`attnbench.config.Grid`, its inputs :func:`attnbench.inputs.make_inputs`, its
reference :func:`attnbench.reference.reference` and its FLOPs :func:`attnbench.case.case_flops`
(4 x attended pairs x head_dim x heads)."""

from __future__ import annotations

from ..case import Case, case_flops
from ..config import Config
from ..inputs import make_inputs
from ..reference import reference
from . import Problem

ATTENTION = Problem(
    name="attention",
    description="softmax(scale q.k) v; causal/window/softcap/ALiBi/varlen",
    case_type=Case,
    config=Config,
    grads=("dq", "dk", "dv"),
    make_inputs=make_inputs,
    reference=reference,
    flops=case_flops,
)
