"""The accuracy rules, in one place. The grading (:mod:`attnbench.run.check`), the tables and
the plots read them from here.

- **Exact** backends (``Capabilities.precision == "exact"``, the default) by flash-attention's
  rule: a tensor passes when ``err <= k * baseline_err + floor``, with k = 2 for the outputs
  (out, lse) and 3 for every gradient, the baseline being same-dtype torch's error against the
  same fp32 reference; NaN or Inf always fails.
- **Lossy** backends (``precision="fp8"``, ``"int8"``, ...: attention that quantizes its
  operands on purpose) by tolerances on two relative metrics of every graded tensor against the
  same reference: cosine similarity ``>= cos_sim`` and relative L1 ``<= rel_l1`` (both finite;
  NaN or an infinite error fails). The defaults per precision are :data:`LOSSY_DEFAULTS`; an
  attention config overrides them with a top-level ``lossy: {cos_sim: ..., rel_l1: ...}``.
  Lossy rows say so (the ``precision`` column, ``PASS lossy`` cells): a lossy verdict is
  declared, never passed off as an exact one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# ---- lossy backends ---------------------------------------------------------------------------
EXACT = "exact"


@dataclass(frozen=True)
class LossyTolerance:
    """The lossy rule's limits: a tensor passes when its cosine similarity to the reference is at
    least ``cos_sim`` and its relative L1 error (sum |x - ref| / sum |ref|) at most ``rel_l1``."""

    cos_sim: float
    rel_l1: float


# The defaults, per declared precision. The metrics are the ones the low-precision attention
# papers report against full-precision attention:
#
# - SageAttention (Zhang et al., "SageAttention: Accurate 8-Bit Attention for Plug-and-play
#   Inference Acceleration", ICLR 2025, arXiv:2410.02367) grades its INT8 attention (INT8 Q.K^T
#   with K smoothed, FP16 P.V) by cosine similarity, relative L1 (sum |O - O'| / sum |O|) and
#   RMSE of the output against full precision, per layer of real models (CogVideoX, Llama, ...);
#   its follow-ups (SageAttention2, arXiv:2411.10958: INT4 Q.K^T, FP8 P.V) report the same three.
#   The definitions are the ones used here (also in the precision_diff() of the SageAttention
#   users' comparisons, e.g. thu-ml/SageAttention issue #75). Its reported values for INT8 Q.K^T
#   with smoothing are a cosine similarity of about 99.9% or better and a relative L1 of a few
#   hundredths at worst over the layers: the exact table entries are to be confirmed.
# - FlashAttention-3 (Shah et al., arXiv:2407.08608, section 4.3) reports the RMSE of its FP8
#   forward against an FP64 reference on inputs N(0, 1) with a small fraction of large-magnitude
#   entries (outliers): block quantization with incoherent processing (a Hadamard rotation of
#   Q and K) lowers it about 2.6x below per-tensor FP8 (from memory: 2.4e-2 -> 9.1e-3, FP16
#   1.9e-4; to be confirmed). RMSE is not scale-free, so it is reported here but not judged on.
#   FlashAttention-3's own FP8 test (hopper/test_flash_attn.py) checks the output's max error
#   at <= 4x the same-dtype PyTorch error + 2e-2 (40x in an earlier version).
#
# So cos_sim >= 0.999 (a relative L2 error of about 4.5%, since 1 - cos ~ rel_l2^2 / 2) and
# rel_l1 <= 0.05 for int8 (INT8 Q.K^T, 16-bit P.V): the accuracy these kernels are published at
# on benign inputs, with margin; a kernel at those limits is a finding, not a rounding difference.
#
# fp8 (e4m3 Q, K, V and P, FlashAttention-3's recipe) cannot reach that on standard-normal
# inputs, whatever the kernel: e4m3 keeps 3 mantissa bits (about 2.6% RMS error per element),
# on four operands. Attention of the e4m3 roundings, everything else in fp64 (per-token Q/K
# scales, per-channel V, P as e4m3(p * 2^8)), on N(0, 1) inputs, S 1k/4k/8k, head dim 64/128,
# causal both ways: cos 0.9986-0.9990, rel_l1 0.048-0.053 (the floor of the format;
# tests/test_lossy.py::test_fp8_default_sits_above_the_e4m3_floor recomputes it). The fp8 default
# is that floor with margin: cos_sim >= 0.998, rel_l1 <= 0.07. A kernel at the floor passes; one
# with an extra error source (a scale ruined by a K channel offset: rel_l1 0.1-0.4) fails.
# These are engineering defaults to be tightened against the confirmed table values, per
# precision here, or per config with ``lossy:``.
LOSSY_DEFAULTS: dict[str, LossyTolerance] = {
    "fp8": LossyTolerance(cos_sim=0.998, rel_l1=0.07),
    "int8": LossyTolerance(cos_sim=0.999, rel_l1=0.05),
}
# a lossy precision with no entry above (int4, fp4, ...): the same limits until it gets its own
LOSSY_FALLBACK = LossyTolerance(cos_sim=0.999, rel_l1=0.05)


def is_lossy(precision: str | None) -> bool:
    """Whether a backend of this declared precision is graded by the lossy rule."""
    return precision not in (None, EXACT)


def lossy_tolerance(
    precision: str, override: tuple[float | None, float | None] | None = None
) -> LossyTolerance:
    """The limits for ``precision``: its default, with each of ``override`` (cos_sim, rel_l1)
    that is not None in its place (a config's ``lossy:`` key)."""
    tol = LOSSY_DEFAULTS.get(precision, LOSSY_FALLBACK)
    if override is None:
        return tol
    cos, rel = override
    return LossyTolerance(
        tol.cos_sim if cos is None else float(cos), tol.rel_l1 if rel is None else float(rel)
    )


def passes_lossy(cos_sim: float | None, rel_l1: float | None, tol: LossyTolerance) -> bool:
    """The lossy rule: both metrics finite, cosine similarity >= the limit, relative L1 <= it."""
    if cos_sim is None or rel_l1 is None:
        return False
    if not (math.isfinite(cos_sim) and math.isfinite(rel_l1)):
        return False
    return cos_sim >= tol.cos_sim and rel_l1 <= tol.rel_l1


def lossy_text(cos_sim: float | None, rel_l1: float | None) -> str:
    """``cos 0.9995 rL1 0.021``: a lossy tensor's two graded numbers, as the cells show them,
    each rounded towards failing (cosine similarity down to 4 decimals, relative L1 up to 3
    significant digits), so a number shown never looks better than the limit it was judged by."""
    if cos_sim is None or not math.isfinite(cos_sim):
        cos = "nan" if cos_sim is None or cos_sim != cos_sim else f"{cos_sim:.4f}"
    else:
        cos = f"{math.floor(cos_sim * 1e4) / 1e4:.4f}"
    if rel_l1 is None or not math.isfinite(rel_l1) or rel_l1 <= 0:
        rel = "nan" if rel_l1 is None or rel_l1 != rel_l1 else f"{rel_l1:.3g}"
    else:
        step = 10.0 ** (math.floor(math.log10(rel_l1)) - 2)
        rel = f"{math.ceil(rel_l1 / step - 1e-6) * step:.3g}"  # 1e-6: 0.021 stays 0.021
    return f"cos {cos} rL1 {rel}"
