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


def passes(tensor: str, err: float, baseline: float, dtype: str) -> bool:
    if not math.isfinite(err):
        return False
    return err <= FACTOR[tensor] * baseline + FLOOR[dtype]


@dataclass
class Truth:
    """The fp32 reference and the same-dtype baseline for one case (shared by all backends)."""

    ref: RefResult
    base: dict[str, tuple[float, float]]  # tensor -> baseline (max, mean) error


def make_truth(inp: Inputs, case: Case, grads: bool = True) -> Truth:
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
    results = []
    for t in TENSORS:
        if t not in got:
            continue
        if t not in truth.base:
            continue
        mx, mean = abs_error(got[t], getattr(truth.ref, t))
        bmx, bmean = truth.base[t]
        results.append(TensorError(t, mx, mean, bmx, bmean, passes(t, mx, bmx, case.dtype)))
    return results


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
