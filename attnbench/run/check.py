"""Accuracy of one backend on one case, by flash-attention's rule (or, for a backend that
declares a lossy precision, by the lossy rule; both in :mod:`attnbench.rule`).

For each tensor (out, lse when returned, dq, dk, dv) the max and mean absolute error against the
fp32 reference (fp64 for fp32 inputs) are compared with the error of same-dtype torch against the
same reference: ``err <= k * baseline_err + floor`` with k = 2 for out/lse and 3 for gradients.
NaN or Inf in the error always fails. The same function gives the accuracy runs their numbers and
every perf row its verdict.

Every graded tensor, of every backend, also gets three relative metrics, in fp64 against the same
reference (x the backend's tensor, r the reference's):

- ``cos_sim``: cosine similarity of the flattened tensors, sum(x r) / sqrt(sum x^2 sum r^2)
  (1 when both are all zeros, 0 when one of them is);
- ``rel_l1``: relative L1 error, sum |x - r| / sum |r| (0 when both are all zeros, inf when only
  the reference is);
- ``rmse``: root mean square error, sqrt(mean (x - r)^2), over every element as the mean error.

A lossy backend (``Capabilities.precision`` "fp8", "int8", ...) passes a tensor when cos_sim and
rel_l1 are within its tolerances (:func:`attnbench.rule.lossy_tolerance`); exact backends are
graded by the rule above alone, the metrics being reported beside it.

Rows with no visible key (e.g. causal with seqlen_q > seqlen_k) have lse = log(0): the reference
writes +inf there (flash-attn's convention), FlashAttention-4 and FlexAttention write -inf. Such a
row's lse is graded exact when it is an infinity of either sign (its out must still be 0, which the
out comparison checks); NaN and finite values there fail. The relative metrics treat those
positions the same way: exact, contributing nothing to the sums of cos_sim and rel_l1 and an
error of 0 to rmse; an infinity on one side only is an infinite error (rel_l1 and rmse inf,
cos_sim NaN), and NaN anywhere makes every metric NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..backends.base import Backend
from ..problems import problem_of
from ..problems.base import Case
from ..rule import (  # noqa: F401  (re-exported)
    EXACT,
    FLOOR,
    LossyTolerance,
    factor,
    is_lossy,
    label,
    lossy_text,
    lossy_tolerance,
    passes,
    passes_lossy,
)

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
    # the relative metrics against the same reference (None: not computed, e.g. distributed)
    cos_sim: float | None = None
    rel_l1: float | None = None
    rmse: float | None = None
    precision: str = EXACT  # the rule that graded it: "exact", or the backend's lossy precision
    tolerance: LossyTolerance | None = None  # the lossy rule's limits (lossy tensors only)

    @property
    def lossy(self) -> bool:
        return is_lossy(self.precision)

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
            cos_sim=self.cos_sim,
            rel_l1=self.rel_l1,
            rmse=self.rmse,
            precision=self.precision,
            tol_cos_sim=self.tolerance.cos_sim if self.tolerance is not None else None,
            tol_rel_l1=self.tolerance.rel_l1 if self.tolerance is not None else None,
        )


def _diff(x: torch.Tensor, ref: torch.Tensor):
    """(x, ref, |x - ref|) in fp64 and the positions where both are infinite (exact there)."""
    if x.shape != ref.shape:
        raise ValueError(f"shape {tuple(x.shape)} != reference {tuple(ref.shape)}")
    xd, rd = x.detach().double(), ref.detach().double()
    both_inf = torch.isinf(xd) & torch.isinf(rd)
    diff = (xd - rd).abs().masked_fill(both_inf, 0.0)
    return xd, rd, diff, both_inf


def abs_error(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max, mean) of |x - ref|; NaN anywhere gives NaN.

    The reference is infinite only in the lse of rows with no visible key; there an infinity of
    either sign counts as exact (error 0) and a finite value as an infinite error."""
    _, _, diff, _ = _diff(x, ref)
    if torch.isnan(diff).any():
        return math.nan, math.nan
    return float(diff.max()), float(diff.mean())


@dataclass(frozen=True)
class Metrics:
    """Every number of one tensor against its reference (see the module's docstring)."""

    max_abs_err: float
    mean_abs_err: float
    cos_sim: float
    rel_l1: float
    rmse: float


def error_metrics(x: torch.Tensor, ref: torch.Tensor) -> Metrics:
    """Max and mean absolute error (as :func:`abs_error`), cosine similarity, relative L1 and
    RMSE of ``x`` against ``ref``, in fp64. Positions where both are infinite are exact (zero in
    every sum); an infinity on one side only gives max/mean/rel_l1/rmse inf and cos_sim NaN; NaN
    anywhere gives NaN everywhere."""
    xd, rd, diff, both_inf = _diff(x, ref)
    if torch.isnan(diff).any():
        return Metrics(math.nan, math.nan, math.nan, math.nan, math.nan)
    mx, mean = float(diff.max()), float(diff.mean())
    if not math.isfinite(mx):  # an infinity where the other side is finite
        return Metrics(mx, mean, math.nan, math.inf, math.inf)
    if bool(both_inf.any()):
        xd, rd = xd.masked_fill(both_inf, 0.0), rd.masked_fill(both_inf, 0.0)
    # dot products: no full-size temporaries beside the fp64 copies (long cases on the GPU)
    xf, rf, df = xd.reshape(-1), rd.reshape(-1), diff.reshape(-1)
    xx, rr, xr = float(xf @ xf), float(rf @ rf), float(xf @ rf)
    if xx == 0.0 or rr == 0.0:
        cos = 1.0 if xx == rr else 0.0
    else:
        cos = min(1.0, max(-1.0, xr / math.sqrt(xx * rr)))
    l1, ref_l1 = float(df.sum()), float(torch.linalg.vector_norm(rf, 1))
    rel = l1 / ref_l1 if ref_l1 > 0 else (0.0 if l1 == 0 else math.inf)
    rmse = math.sqrt(float(df @ df) / max(df.numel(), 1))
    return Metrics(mx, mean, cos, rel, rmse)


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
    return grade(got, truth, case, precision=backend.caps.precision)


def grade(
    got: dict[str, torch.Tensor | None], truth: Truth, case: Case, precision: str = EXACT
) -> list[TensorError]:
    """Grade every tensor of ``got`` (out, lse, gradients; None or missing: not returned) that
    the truth has a baseline for: by flash-attention's rule for an exact ``precision``, by the
    lossy rule (the case's ``lossy`` override of the precision's default tolerances) otherwise."""
    tol = lossy_tolerance(precision, getattr(case, "lossy", None)) if is_lossy(precision) else None
    results = []
    for t in problem_of(case).tensors:
        if got.get(t) is None or t not in truth.base:
            continue
        m = error_metrics(got[t], getattr(truth.ref, t))
        bmx, bmean = truth.base[t]
        if tol is None:
            ok = passes(t, m.max_abs_err, bmx, case.dtype)
        else:
            ok = passes_lossy(m.cos_sim, m.rel_l1, tol)
        results.append(
            TensorError(
                t,
                m.max_abs_err,
                m.mean_abs_err,
                bmx,
                bmean,
                ok,
                cos_sim=m.cos_sim,
                rel_l1=m.rel_l1,
                rmse=m.rmse,
                precision=precision,
                tolerance=tol,
            )
        )
    return results


def _lossy_failure(e: TensorError) -> str:
    """``out cos 0.98 < 0.999, rL1 0.12 > 0.05``: what a lossy tensor missed."""
    tol = e.tolerance or lossy_tolerance(e.precision)
    cos = e.cos_sim if e.cos_sim is not None else math.nan
    rel = e.rel_l1 if e.rel_l1 is not None else math.nan
    missed = []
    if not (math.isfinite(cos) and cos >= tol.cos_sim):
        missed.append(f"cos {cos:.6g} < {tol.cos_sim:g}")
    if not (math.isfinite(rel) and rel <= tol.rel_l1):
        missed.append(f"rL1 {rel:.4g} > {tol.rel_l1:g}")
    return f"{e.tensor} " + ", ".join(missed or [lossy_text(cos, rel)])


def lossy_rule_text(e: TensorError) -> str:
    """``lossy int8 rule: cos >= 0.999, rL1 <= 0.05``."""
    tol = e.tolerance or lossy_tolerance(e.precision)
    return f"lossy {e.precision} rule: cos >= {tol.cos_sim:g}, rL1 <= {tol.rel_l1:g}"


def failure_message(e: TensorError, against: str = "torch same-dtype") -> str:
    """The message of an accuracy row whose tensor fails the rule."""
    if e.lossy:
        return f"{_lossy_failure(e)} ({lossy_rule_text(e)})"
    return f"{e.tensor} max err {e.max_abs_err:.3g} > rule ({against} {e.baseline_max_abs_err:.3g})"


def verdict(
    errors: list[TensorError], mode: str, against: str = "torch same-dtype"
) -> tuple[bool, str | None]:
    """(ok, message) of a perf row in ``mode`` from the graded tensors of the same case: fwd is
    judged on out/lse only, bwd and fwd_bwd on every tensor. The message names the worst failure
    relative to its baseline (``against`` says what the baseline is). Tensors graded by the lossy
    rule give its verdict, and a message even when they pass (``lossy int8 rule: cos >= 0.999,
    rL1 <= 0.05: passed, worst out cos 0.9995 rL1 0.021``): a lossy verdict is never silent."""
    relevant = [e for e in errors if mode != "fwd" or e.tensor in ("out", "lse")]
    bad = [e for e in relevant if not e.accuracy_ok]
    lossy = [e for e in relevant if e.lossy]
    if lossy:  # the lossy rule, named in the message whether it passed or not
        if bad:
            e = min(bad, key=_lossy_key)
            return False, f"accuracy failed: {e.where}{_lossy_failure(e)} ({lossy_rule_text(e)})"
        e = min(lossy, key=_lossy_key)
        return True, (
            f"{lossy_rule_text(e)}: passed, worst {e.where}{e.tensor} "
            f"{lossy_text(e.cos_sim, e.rel_l1)}"
        )
    if not bad:
        return True, None
    e = max(bad, key=lambda e: e.ratio if math.isfinite(e.ratio) else math.inf)
    return False, (
        f"accuracy failed: {e.where}{e.tensor} max err {e.max_abs_err:.3g} vs {against} "
        f"{e.baseline_max_abs_err:.3g}"
    )


def _lossy_key(e: TensorError) -> tuple[float, float]:
    """Sorts the worst lossy tensor first: the lowest cosine similarity, then the highest
    relative L1 (NaN counts as the worst)."""
    cos = e.cos_sim if e.cos_sim is not None and e.cos_sim == e.cos_sim else -math.inf
    rel = e.rel_l1 if e.rel_l1 is not None and e.rel_l1 == e.rel_l1 else math.inf
    return cos, -rel


def report_lines(errors: list[TensorError]) -> list[str]:
    """The familiar lines of flash-attention's accuracy report, then one line per tensor of the
    relative metrics (cosine similarity, relative L1, RMSE) and, for a lossy backend, the rule
    it was graded by."""
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
    for e in errors:
        if e.cos_sim is None:
            continue
        verdict = ""
        if e.lossy:
            verdict = "  PASS" if e.accuracy_ok else "  FAIL"
        lines.append(
            f"{label(e.tensor)} cos sim: {_cos(e.cos_sim)}  rel L1: {e.rel_l1:.3g}  "
            f"RMSE: {e.rmse:.3g}{verdict}"
        )
    lossy = [e for e in errors if e.lossy]
    if lossy:
        lines.append(f"graded by the {lossy_rule_text(lossy[0])} (per tensor; not the exact rule)")
    return lines


def _cos(c: float) -> str:
    """A cosine similarity with the digits that tell it from 1 (0.999987, 1, nan), rounded down
    (0.9999996 is 0.999999, never 1.000000)."""
    if c != c or c == 1.0:
        return format(c, "g")
    return f"{math.floor(c * 1e6) / 1e6:.6f}" if c > 0.99 else format(c, ".4g")
