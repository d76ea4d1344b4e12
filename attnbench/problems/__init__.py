"""Problems: what a backend computes. A problem owns its case fields (a :class:`Case`
subclass), its config grid, its seeded inputs, its one reference (``upcast=True`` is the fp32
truth, ``upcast=False`` the same-dtype baseline), the tensors it grades and its FLOP count. The
runner, the accuracy rule, timing, results and plots reach them only through :func:`problem_of`.

    from attnbench.problems import problem_of
    prob = problem_of(case)                      # case.problem names it: "attention", "piecewise"
    inp = prob.make_inputs(case, "cuda", seed=0)
    ref = prob.reference(inp, case, upcast=True, grads=True)   # ref.out, ref.lse, ref.<grad>...
    prob.flops(case, "fwd")

Adding a problem: one module here building a :class:`Problem`, one line in ``PROBLEMS``, a
``Config`` subclass naming its grid, and backends declaring ``Capabilities(problem=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..case import Case


@dataclass(frozen=True)
class Problem:
    name: str
    description: str
    case_type: type[Case]
    config: type  # the pydantic Config model whose grids make this problem's cases
    grads: tuple[str, ...]  # graded gradients, in the order of Backend.grads()
    make_inputs: Callable[..., Any]  # (case, device, seed) -> inputs with .differentiable, .dout
    reference: Callable[..., Any]  # (inp, case, *, upcast, grads) -> .out, .lse, .<grad>
    flops: Callable[[Case, str], float]  # (case, mode) -> FLOPs

    @property
    def tensors(self) -> tuple[str, ...]:
        """Every graded tensor: out, lse, then the gradients."""
        return ("out", "lse", *self.grads)


def _registry() -> dict[str, Problem]:
    from .attention import ATTENTION
    from .piecewise import PIECEWISE

    return {p.name: p for p in (ATTENTION, PIECEWISE)}


PROBLEMS: dict[str, Problem] = _registry()


def problem_of(case: Case) -> Problem:
    """The problem a case poses."""
    return PROBLEMS[case.problem]


__all__ = ["PROBLEMS", "Problem", "problem_of"]
