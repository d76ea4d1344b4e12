"""Accuracy of one backend on one case, by flash-attention's rule.

For each tensor (out, lse when returned, dq, dk, dv) the max and mean absolute error against the
fp32 reference (fp64 for fp32 inputs) are compared with the error of same-dtype torch against the
same reference: ``err <= k * baseline_err + floor`` with k = 2 for out/lse and 3 for gradients.
NaN or Inf in the error always fails. The same function gives the accuracy runs their numbers and
every perf row its verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .backends.base import Backend
from .case import Case
from .inputs import Inputs
from .reference import RefResult, reference

TENSORS = ("out", "lse", "dq", "dk", "dv")
FACTOR = {"out": 2.0, "lse": 2.0, "dq": 3.0, "dk": 3.0, "dv": 3.0}
FLOOR = {"fp16": 1e-5, "bf16": 1e-5, "fp32": 1e-7}
LABEL = {"out": "Output", "lse": "LSE", "dq": "dQ", "dk": "dK", "dv": "dV"}


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
    """(max, mean) of |x - ref|; equal infinities count as 0 (lse of rows with no visible key);
    NaN anywhere gives NaN."""
    if x.shape != ref.shape:
        raise ValueError(f"shape {tuple(x.shape)} != reference {tuple(ref.shape)}")
    xd, rd = x.detach().double(), ref.detach().double()
    same_inf = torch.isinf(xd) & (xd == rd)
    diff = (xd - rd).abs().masked_fill(same_inf, 0.0)
    if torch.isnan(diff).any():
        return math.nan, math.nan
    return float(diff.max()), float(diff.mean())


def passes(tensor: str, err: float, baseline: float, dtype: str) -> bool:
    if not math.isfinite(err):
        return False
    return err <= FACTOR[tensor] * baseline + FLOOR[dtype]


@dataclass
class Truth:
    """The fp32 reference and the same-dtype baseline for one case (shared by all backends)."""

    ref: RefResult
    base: dict[str, tuple[float, float]]  # tensor -> baseline (max, mean) error


def make_truth(inp: Inputs, case: Case, grads: bool = True, ref: RefResult | None = None) -> Truth:
    """The truth of ``case``; ``ref`` is the upcast reference when already computed."""
    if ref is None or (grads and ref.dq is None):
        ref = reference(inp, case, upcast=True, grads=grads)
    same = reference(inp, case, upcast=False, grads=grads)
    base = {"out": abs_error(same.out, ref.out), "lse": abs_error(same.lse, ref.lse)}
    if grads:
        for t in ("dq", "dk", "dv"):
            base[t] = abs_error(getattr(same, t), getattr(ref, t))
    return Truth(ref, base)


def check_backend(
    backend: Backend, case: Case, inp: Inputs, truth: Truth, grads: bool = True
) -> list[TensorError]:
    """Run ``backend`` forward (and backward if ``grads``) and grade every tensor."""
    p = backend.prepare(inp, case)
    out, lse = backend.forward(p, case)
    got = {"out": out}
    if lse is not None:
        got["lse"] = lse
    if grads:
        out.backward(inp.dout)
        got["dq"], got["dk"], got["dv"] = backend.grads(p)
    return grade(got, truth, case.dtype)


def grade(got: dict[str, torch.Tensor | None], truth: Truth, dtype: str) -> list[TensorError]:
    """Grade every tensor of ``got`` (out, lse, dq, dk, dv; None or missing: not returned) that
    the truth has a baseline for."""
    results = []
    for t in TENSORS:
        if got.get(t) is None or t not in truth.base:
            continue
        mx, mean = abs_error(got[t], getattr(truth.ref, t))
        bmx, bmean = truth.base[t]
        results.append(TensorError(t, mx, mean, bmx, bmean, passes(t, mx, bmx, dtype)))
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
    by = {e.tensor: e for e in errors}
    lines = []
    for t in ("out", "lse"):
        if t in by:
            e = by[t]
            lines.append(
                f"{LABEL[t]} max diff: {e.max_abs_err:.3g}  (torch same-dtype: "
                f"{e.baseline_max_abs_err:.3g})"
            )
            lines.append(
                f"{LABEL[t]} mean diff: {e.mean_abs_err:.3g}  (torch same-dtype: "
                f"{e.baseline_mean_abs_err:.3g})"
            )
    for t in ("dq", "dk", "dv"):
        if t in by:
            lines.append(
                f"{LABEL[t]} max diff: {by[t].max_abs_err:.3g}  (torch same-dtype: "
                f"{by[t].baseline_max_abs_err:.3g})"
            )
    for t in ("dq", "dk", "dv"):
        if t in by:
            lines.append(f"{LABEL[t]} mean diff: {by[t].mean_abs_err:.3g}")
    return lines
