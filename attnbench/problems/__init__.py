"""Problems: what a backend computes. A problem is a package of one shape (``case.py``,
``inputs.py``, ``reference.py``, ``grid.py``, and an ``__init__`` building its :class:`Problem`):
its case fields (a :class:`~attnbench.problems.base.Case` subclass), its config grid, its seeded
inputs, its one reference (``upcast=True`` is the fp32 truth, ``upcast=False`` the same-dtype
baseline), the tensors it grades, its FLOP and byte counts and the capabilities its cases need
of a backend. The run driver, the rule, timing, results and the views reach them only through
:data:`PROBLEMS` / :func:`problem_of`.

    from attnbench.problems import problem_of
    prob = problem_of(case)                      # case.problem names it: "attention", "piecewise"
    inp = prob.make_inputs(case, "cuda", seed=0)
    ref = prob.reference(inp, case, upcast=True, grads=True)   # ref.out, ref.lse, ref.<grad>...
    prob.flops(case, "fwd"), prob.bytes(case, "fwd")

Adding a problem: one package here and one line in :func:`_builtin` (or :func:`register_problem`
from outside), its backends declaring ``Capabilities(problem=...)`` (see docs/extending.md).
"""

from __future__ import annotations

from .base import Case, Problem

PROBLEMS: dict[str, Problem] = {}


def register_problem(problem: Problem) -> Problem:
    """Add a problem to the registry (its name must be new)."""
    if problem.name in PROBLEMS:
        raise ValueError(f"problem {problem.name!r} registered twice")
    PROBLEMS[problem.name] = problem
    return problem


def _builtin() -> None:
    from .attention import ATTENTION
    from .decode import DECODE
    from .piecewise import PIECEWISE

    for p in (ATTENTION, PIECEWISE, DECODE):
        register_problem(p)


_builtin()


def problem_of(case: Case) -> Problem:
    """The problem a case poses."""
    return PROBLEMS[case.problem]


__all__ = ["PROBLEMS", "Case", "Problem", "problem_of", "register_problem"]
