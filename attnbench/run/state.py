"""What one case needs once, whatever runs on it: its inputs, its truth (the fp32 reference and
the same-dtype baseline) and the latest non-distributed result of a kernel, each made on first
use and shared by every backend of the case (single-device and distributed runners alike).

    state = CaseState(case, "cuda", seed=0)
    errs = check_backend(be, case, state.inputs, state.truth(grads=True))
    state.release()                      # before the next case
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from ..problems import problem_of
from ..problems.base import Case
from .check import Truth, make_truth


class CaseState:
    def __init__(self, case: Case, device: str, seed: int = 0):
        self.case, self.device, self.seed = case, device, seed
        self.problem = problem_of(case)
        self._inputs = None
        self._ref = None  # the upcast reference with gradients, before the truth is made
        self._truth: Truth | None = None
        self._single: tuple[str, object] | None = None

    @property
    def inputs(self):
        """The case's seeded inputs (the problem's ``make_inputs``)."""
        if self._inputs is None:
            self._inputs = self.problem.make_inputs(self.case, self.device, self.seed)
        return self._inputs

    def _has_grads(self, ref) -> bool:
        grads = self.problem.grads  # a forward-only problem (decode) has none: always complete
        return not grads or getattr(ref, grads[0], None) is not None

    def reference(self):
        """The upcast reference with gradients (computed once, shared with :meth:`truth`)."""
        if self._truth is not None and self._has_grads(self._truth.ref):
            return self._truth.ref
        if self._ref is None:
            self._ref = self.problem.reference(self.inputs, self.case, upcast=True, grads=True)
        return self._ref

    def truth(self, grads: bool = True) -> Truth:
        """The truth of the case; one made with gradients serves a forward-only check too."""
        t = self._truth
        if t is None or (grads and not self._has_grads(t.ref)):
            self._truth = make_truth(self.inputs, self.case, grads=grads, ref=self._ref)
            self._ref = None
        return self._truth

    def single(self, key: str, run: Callable[[object, Case], object]):
        """``run(inputs, case)`` for ``key`` (a kernel name), kept until another key is asked
        for: the non-distributed result every strategy of that kernel is compared with."""
        if self._single is None or self._single[0] != key:
            self._single = None
            self._single = (key, run(self.inputs, self.case))
        return self._single[1]

    def release(self) -> None:
        """Drop everything and give the memory back (between cases)."""
        self._inputs = self._ref = self._truth = self._single = None
        gc.collect()
        if str(self.device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
