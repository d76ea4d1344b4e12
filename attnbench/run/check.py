"""Accuracy of one backend on one case, by flash-attention's rule.

For each tensor (out, lse when returned, dq, dk, dv) the max and mean absolute error against the
fp32 reference (fp64 for fp32 inputs) are compared with the error of same-dtype torch against the
same reference: ``err <= k * baseline_err + floor`` with k = 2 for out/lse and 3 for gradients.
NaN or Inf in the error always fails. The same function gives the accuracy runs their numbers and
every perf row its verdict.

Rows with no visible key (e.g. causal with seqlen_q > seqlen_k) have lse = log(0): the reference
writes +inf there (flash-attn's convention), FlashAttention-4 and FlexAttention write -inf. Such a
row's lse is graded exact when it is an infinity of either sign (its out must still be 0, which the
out comparison checks); NaN and finite values there fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..backends.base import Backend
from ..problems import problem_of
from ..problems.base import Case
from ..rule import FLOOR, factor, label, passes  # noqa: F401  (re-exported)

TENSORS = ("out", "lse", "dq", "dk", "dv")  # plain attention's; problem_of(case).tensors in general


@dataclass
class TensorError:
    """One graded tensor: its error and the baseline's error against the same reference."""

    tensor: str
    max_abs_err: float
    mean_abs_err: float
    baseline_max_abs_err: float
    baseline_mean_abs_err: float
    accuracy_ok: bool

    @property
    def ratio(self) -> float:
        if self.baseline_max_abs_err > 0:
            return self.max_abs_err / self.baseline_max_abs_err
        return 0.0 if self.max_abs_err == 0 else math.inf

    @property
    def where(self) -> str:
        """Prefix naming where the tensor came from in messages ("" here, "rank 1 " for a rank)."""
        return ""

    def columns(self) -> dict:
        """The result-row columns of this tensor's accuracy."""
        return dict(
            tensor=self.tensor,
            max_abs_err=self.max_abs_err,
            mean_abs_err=self.mean_abs_err,
            baseline_max_abs_err=self.baseline_max_abs_err,
            baseline_mean_abs_err=self.baseline_mean_abs_err,
            accuracy_ok=self.accuracy_ok,
        )


def abs_error(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max, mean) of |x - ref|; NaN anywhere gives NaN.

    The reference is infinite only in the lse of rows with no visible key; there an infinity of
    either sign counts as exact (error 0) and a finite value as an infinite error."""
    if x.shape != ref.shape:
        raise ValueError(f"shape {tuple(x.shape)} != reference {tuple(ref.shape)}")
    xd, rd = x.detach().double(), ref.detach().double()
    both_inf = torch.isinf(xd) & torch.isinf(rd)
    diff = (xd - rd).abs().masked_fill(both_inf, 0.0)
    if torch.isnan(diff).any():
        return math.nan, math.nan
    return float(diff.max()), float(diff.mean())


@dataclass
class Truth:
    """The fp32 reference and the same-dtype baseline for one case (shared by all backends)."""

    ref: object  # the problem's reference result: .out, .lse and one attribute per gradient
    base: dict[str, tuple[float, float]]  # tensor -> baseline (max, mean) error


def make_truth(inp, case: Case, grads: bool = True, ref=None) -> Truth:
    """The truth of ``case``; ``ref`` is its upcast reference when already computed."""
    prob = problem_of(case)
    if ref is None or (grads and prob.grads and getattr(ref, prob.grads[0], None) is None):
        ref = prob.reference(inp, case, upcast=True, grads=grads)
    same = prob.reference(inp, case, upcast=False, grads=grads)
    names = prob.tensors if grads else ("out", "lse")
    base = {t: abs_error(getattr(same, t), getattr(ref, t)) for t in names}
    return Truth(ref, base)


def check_backend(
    backend: Backend, case: Case, inp, truth: Truth, grads: bool = True
) -> list[TensorError]:
    """Run ``backend`` forward (and backward if ``grads``) and grade every tensor."""
    prob = problem_of(case)
    p = backend.prepare(inp, case)
    out, lse = backend.forward(p, case)
    got = {"out": out}
    if lse is not None:
        got["lse"] = lse
    if grads:
        out.backward(inp.dout)
        got.update(zip(prob.grads, backend.grads(p), strict=True))
    return grade(got, truth, case)


def grade(got: dict[str, torch.Tensor | None], truth: Truth, case: Case) -> list[TensorError]:
    """Grade every tensor of ``got`` (out, lse, gradients; None or missing: not returned) that
    the truth has a baseline for."""
    results = []
    for t in problem_of(case).tensors:
        if got.get(t) is None or t not in truth.base:
            continue
        mx, mean = abs_error(got[t], getattr(truth.ref, t))
        bmx, bmean = truth.base[t]
        results.append(TensorError(t, mx, mean, bmx, bmean, passes(t, mx, bmx, case.dtype)))
    return results


def failure_message(e: TensorError, against: str = "torch same-dtype") -> str:
    """The message of an accuracy row whose tensor fails the rule."""
    return f"{e.tensor} max err {e.max_abs_err:.3g} > rule ({against} {e.baseline_max_abs_err:.3g})"


def verdict(
    errors: list[TensorError], mode: str, against: str = "torch same-dtype"
) -> tuple[bool, str | None]:
    """(ok, message) of a perf row in ``mode`` from the graded tensors of the same case: fwd is
    judged on out/lse only, bwd and fwd_bwd on every tensor. The message names the worst failure
    relative to its baseline (``against`` says what the baseline is)."""
    relevant = [e for e in errors if mode != "fwd" or e.tensor in ("out", "lse")]
    bad = [e for e in relevant if not e.accuracy_ok]
    if not bad:
        return True, None
    e = max(bad, key=lambda e: e.ratio if math.isfinite(e.ratio) else math.inf)
    return False, (
        f"accuracy failed: {e.where}{e.tensor} max err {e.max_abs_err:.3g} vs {against} "
        f"{e.baseline_max_abs_err:.3g}"
    )


def report_lines(errors: list[TensorError]) -> list[str]:
    """The familiar lines of flash-attention's accuracy report."""
    outs = [e for e in errors if e.tensor in ("out", "lse")]
    grads = [e for e in errors if e.tensor not in ("out", "lse")]
    lines = []
    for e in outs:
        same = f"  (torch same-dtype: {e.baseline_max_abs_err:.3g})"
        lines.append(f"{label(e.tensor)} max diff: {e.max_abs_err:.3g}{same}")
        same = f"  (torch same-dtype: {e.baseline_mean_abs_err:.3g})"
        lines.append(f"{label(e.tensor)} mean diff: {e.mean_abs_err:.3g}{same}")
    for e in grads:
        same = f"  (torch same-dtype: {e.baseline_max_abs_err:.3g})"
        lines.append(f"{label(e.tensor)} max diff: {e.max_abs_err:.3g}{same}")
    for e in grads:
        lines.append(f"{label(e.tensor)} mean diff: {e.mean_abs_err:.3g}")
    return lines
