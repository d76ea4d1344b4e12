"""The accuracy rule, in one place (flash-attention's): a tensor passes when
``err <= k * baseline_err + floor``, with k = 2 for the outputs (out, lse) and 3 for every
gradient, the baseline being same-dtype torch's error against the same fp32 reference; NaN or
Inf always fails. The grading (:mod:`attnbench.run.check`), the tables and the plots read it
from here."""

from __future__ import annotations

import math

FLOOR = {"fp16": 1e-5, "bf16": 1e-5, "fp32": 1e-7}


def factor(tensor: str) -> float:
    """The rule's k: 2 for the outputs (out, lse), 3 for every gradient."""
    return 2.0 if tensor in ("out", "lse") else 3.0


def label(tensor: str) -> str:
    """``out`` -> Output, ``lse`` -> LSE, ``dq1`` -> dQ1 (flash-attention's report words)."""
    return {"out": "Output", "lse": "LSE"}.get(tensor, tensor[:1] + tensor[1:].upper())


def passes(tensor: str, err: float, baseline: float, dtype: str) -> bool:
    if not math.isfinite(err):
        return False
    return err <= factor(tensor) * baseline + FLOOR[dtype]


def ratio(tensor: str, err: float | None, baseline: float | None) -> float:
    """err / (k x baseline): the tables' and plots' number (1.0 = at the limit; -1: no error)."""
    if err is None or baseline is None:
        return -1.0
    if not math.isfinite(err):
        return math.inf
    limit = factor(tensor) * baseline
    return err / limit if limit > 0 else (0.0 if err == 0 else math.inf)
