"""The distributed suite/sweep file (``configs/dist.yaml``): the core :class:`Grid` cases plus
strategies, world sizes, local backends and the collective timeout::

    name: dist
    strategies: [ring, zigzag, ulysses, hybrid]
    world_sizes: [2, 4]          # used when no torchrun / --nproc gives one
    ulysses_size: 2              # hybrid: ranks per Ulysses group
    local_backends: [flash_attn, sdpa_flash]
    per_rank_seqlen: true        # seqlen below is per rank: total = seqlen x world size
    timeout_s: 120
    cases:
      - {batch: 1, seqlen: 8192, heads_q: 32, heads_kv: 8, head_dim: 128, dtype: bf16,
         causal: true}
    cpu:
      local_backends: [naive]
      cases: [{batch: 1, seqlen: 256, heads_q: 4, head_dim: 32, dtype: fp32}]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..problems.attention.grid import Grid
from ..problems.base import Case, Mode, expand
from ..run.config import load_config
from .strategy import STRATEGIES

MIN_TIMEOUT_S = 1.0  # a collective timeout below this is refused: no collective can meet it
Strategy = Literal["ring", "zigzag", "ulysses", "hybrid", "hybrid_zigzag"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DistVariant(_Strict):
    """The ``cpu:`` block: small cases (gloo); unset fields fall back to the top level."""

    note: str = "no GPU: gloo on CPU at small sizes"
    cases: list[Grid] = Field(min_length=1)
    strategies: list[Strategy] | None = None
    local_backends: list[str] | None = None
    modes: list[Mode] | None = None
    per_rank_seqlen: bool | None = None


class DistConfig(_Strict):
    name: str
    description: str = ""
    kind: Literal["dist_accuracy", "dist_perf"] | None = None
    seed: int = 0
    strategies: list[Strategy] = list(STRATEGIES)
    world_sizes: list[int] = [2, 4]
    ulysses_size: int = 2
    local_backends: list[str] = ["naive"]
    modes: list[Mode] = ["fwd", "bwd", "fwd_bwd"]
    per_rank_seqlen: bool = False
    warmup_ms: int = Field(25, ge=0)
    rep_ms: int = Field(100, gt=0)
    timeout_s: float = 120.0
    nccl_high_priority: bool = True  # NCCL on a high-priority stream (see comm.nccl_options)
    cases: list[Grid] = Field(min_length=1)
    cpu: DistVariant | None = None

    @field_validator("world_sizes")
    @classmethod
    def _worlds(cls, v):
        if not v or min(v) < 1:
            raise ValueError("world sizes must be >= 1")
        return v

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, v):
        if not (v >= MIN_TIMEOUT_S and v < float("inf")):
            raise ValueError(
                f"timeout_s must be a finite number of seconds >= {MIN_TIMEOUT_S:g} (a collective "
                "between processes cannot complete in less)"
            )
        return v


@dataclass
class Selection:
    """What one run executes on one device type and world size."""

    cases: list[Case]
    strategies: list[str]
    local_backends: list[str]
    modes: list[str]
    note: str | None


def load_dist_config(name_or_file: str) -> tuple[DistConfig, Path]:
    """Load and validate a dist config (``dist`` -> the shipped configs/dist.yaml)."""
    return load_config(name_or_file, DistConfig)


def select(
    cfg: DistConfig, device: str, world_size: int, dtypes: list[str] | None = None
) -> Selection:
    """The cases (total sequence lengths: per-rank ones multiplied by ``world_size``),
    strategies, local backends and modes for ``device`` (the ``cpu`` block on CPU)."""
    grids, strategies, backends = cfg.cases, cfg.strategies, cfg.local_backends
    modes, per_rank, note = cfg.modes, cfg.per_rank_seqlen, None
    if device == "cpu" and cfg.cpu is not None:
        v = cfg.cpu
        grids, note = v.cases, v.note
        strategies = v.strategies or strategies
        backends = v.local_backends or backends
        modes = v.modes or modes
        per_rank = per_rank if v.per_rank_seqlen is None else v.per_rank_seqlen
    cases = [c for g in grids for c in expand(g)]
    if per_rank:
        cases = [
            replace(c, seqlen_q=c.seqlen_q * world_size, seqlen_k=c.seqlen_k * world_size)
            for c in cases
        ]
    if dtypes:
        cases = [replace(c, dtype=d) for c in cases for d in dtypes]
    return Selection(
        list(dict.fromkeys(cases)), list(strategies), list(backends), list(modes), note
    )
