"""Config grids of piecewise cases: attention's sequence grid plus the threshold."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ..attention.grid import SeqGrid
from ..base import ConfigBase, CpuVariantBase
from .case import PiecewiseCase


class PiecewiseGrid(SeqGrid):
    """A grid of piecewise cases: exactly one of ``dist_threshold`` (w in tokens) and
    ``dist_threshold_frac`` (w = int(frac * seqlen_k))."""

    case_type: ClassVar[type] = PiecewiseCase
    dist_threshold: int | list[int] | None = None
    dist_threshold_frac: float | list[float] | None = None

    @model_validator(mode="after")
    def _one_threshold(self):
        if (self.dist_threshold is None) == (self.dist_threshold_frac is None):
            raise ValueError("give exactly one of dist_threshold and dist_threshold_frac")
        return self

    def case_fields(self, d: dict) -> dict:
        frac = d.pop("dist_threshold_frac", None)
        if frac is not None:
            d["dist_threshold"] = int(frac * d.get("seqlen_k", d.get("seqlen", 0)))
        return super().case_fields(d)


class PiecewiseCpu(CpuVariantBase):
    cases: list[PiecewiseGrid] = Field(min_length=1)


class PiecewiseConfig(ConfigBase):
    problem: Literal["piecewise"] = "piecewise"
    cases: list[PiecewiseGrid] = Field(min_length=1)
    cpu: PiecewiseCpu | None = None
