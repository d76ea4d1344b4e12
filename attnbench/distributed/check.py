"""Per-rank accuracy of a distributed strategy.

Every rank builds the same inputs (``make_inputs``, seeded by the case), the fp32 reference
(:func:`attnbench.problems.attention.reference.reference`) and the non-distributed run of the same local kernel
over the whole sequence; it then runs the strategy on its shard (forward and backward) and
compares its part of out, lse, dq, dk, dv with both.

Rule: distributed error against the reference <= 2.5 x the non-distributed error against the
reference (same rank's tokens) + a floor; NaN/Inf fails. The merges and gradient sums of the
strategies run in fp32, so a correct strategy is usually *more* accurate than the single run,
at any number of chunks, provided every block's lse is fp32: one rounded to bf16 skews each
partial's merge weight ``e^(lse_b - lse)``, an error per chunk that the single run's out never
has (16 ranks failed on it; see :mod:`attnbench.distributed.local`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..problems.attention.inputs import Inputs
from ..problems.attention.reference import RefResult
from ..problems.base import Case
from ..run.check import TensorError, abs_error, error_metrics
from ..run.state import CaseState
from .local import LocalKernel, local_attention
from .strategy import Groups, Layout, dist_attention

TENSORS = ("out", "lse", "dq", "dk", "dv")
FACTOR = 2.5
FLOOR = {"fp32": 1e-6, "fp16": 1e-4, "bf16": 5e-4}
LSE_FLOOR = 1e-5  # lse is fp32 whatever the input dtype


@dataclass
class DistError(TensorError):
    """One tensor on one rank: distributed vs reference (``max_abs_err``), the non-distributed
    run vs reference (its baseline, ``baseline_*``) and distributed vs non-distributed
    (``diff_*``)."""

    rank: int = 0
    diff_max: float = 0.0
    diff_mean: float = 0.0

    @property
    def where(self) -> str:
        return f"rank {self.rank} "


@dataclass
class Outputs:
    """What a kernel or strategy returned: out, lse and the gradients of q, k, v (of a whole case
    or of one rank's shard). The reference's own result is :class:`attnbench.problems.attention.reference.RefResult`."""

    out: torch.Tensor
    lse: torch.Tensor
    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor


def passes(tensor: str, err: float, single_err: float, dtype: str) -> bool:
    if not math.isfinite(err):
        return False
    floor = LSE_FLOOR if tensor == "lse" else FLOOR[dtype]
    return err <= FACTOR * single_err + floor


def run_single(inp: Inputs, case: Case, kernel: LocalKernel) -> Outputs:
    """The non-distributed run: the local kernel over the whole sequence, with its backward."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (inp.q, inp.k, inp.v))
    out, lse = local_attention(q, k, v, kernel, case.causal, case.scale)
    out.backward(inp.dout)
    return Outputs(out.detach(), lse, q.grad, k.grad, v.grad)


def single_of(state: CaseState, kernel: LocalKernel) -> Outputs:
    """The non-distributed run of ``kernel`` over ``state``'s case (made once per kernel)."""
    return state.single(kernel.name, lambda inp, case: run_single(inp, case, kernel))


def run_distributed(
    inp: Inputs, case: Case, kernel: LocalKernel, layout: Layout, groups: Groups, rank: int
) -> Outputs:
    """This rank's shard of out, lse, dq, dk, dv from the strategy (forward + backward)."""
    q, k, v = (layout.shard(t, rank, 1).requires_grad_() for t in (inp.q, inp.k, inp.v))
    out, lse = dist_attention(q, k, v, layout, groups, kernel, case.causal, case.scale)
    out.backward(layout.shard(inp.dout, rank, 1))
    return Outputs(out.detach(), lse, q.grad, k.grad, v.grad)


def compare(
    got: Outputs, single: Outputs, truth: RefResult, layout: Layout, rank: int, case: Case
) -> list[DistError]:
    """Errors of this rank's shard (lse sharded along its last dim, the rest along dim 1)."""
    errs = []
    for t in TENSORS:
        x = getattr(got, t)
        if x is None:
            continue
        dim = 2 if t == "lse" else 1
        ref = layout.shard(getattr(truth, t), rank, dim)
        one = layout.shard(getattr(single, t), rank, dim)
        m = error_metrics(x, ref)  # max/mean as abs_error, and the relative metrics
        smx, smean = abs_error(one, ref)
        dmx, dmean = abs_error(x, one)
        ok = passes(t, m.max_abs_err, smx, case.dtype)
        errs.append(
            DistError(
                t,
                m.max_abs_err,
                m.mean_abs_err,
                smx,
                smean,
                ok,
                m.cos_sim,
                m.rel_l1,
                m.rmse,
                rank=rank,
                diff_max=dmx,
                diff_mean=dmean,
            )  # fmt: skip
        )
    return errs


def report_lines(per_rank: list[list[DistError]]) -> list[str]:
    """ring-flash-attention's per-rank report, then the verdict numbers against the reference:

    rank 0 out (distributed) - out_ref (non-distributed) diff: 0.0009765625
    ...
    dq diff:
    Rank[0] max 0.00781, mean 0.000165
    """
    by = {(e.rank, e.tensor): e for errs in per_rank for e in errs}
    ranks = sorted({e.rank for errs in per_rank for e in errs})
    lines = []
    for t in ("out", "lse"):
        for r in ranks:
            if (r, t) in by:
                lines.append(
                    f"rank {r} {t} (distributed) - {t}_ref (non-distributed) diff: "
                    f"{by[r, t].diff_max:.6g}"
                )
    for t in ("dq", "dk", "dv"):
        if any((r, t) in by for r in ranks):
            lines.append(f"{t} diff:")
            for r in ranks:
                if (r, t) in by:
                    e = by[r, t]
                    lines.append(f"Rank[{r}] max {e.diff_max:.3g}, mean {e.diff_mean:.3g}")
    lines.append(
        f"max err vs fp32 reference, distributed / non-distributed (rule: <= {FACTOR}x + floor):"
    )
    for r in ranks:
        cells = []
        for t in TENSORS:
            if (r, t) in by:
                e = by[r, t]
                mark = "" if e.accuracy_ok else " FAIL"
                cells.append(f"{t} {e.max_abs_err:.3g}/{e.baseline_max_abs_err:.3g}{mark}")
        lines.append(f"Rank[{r}] " + "  ".join(cells))
    return lines
