"""Config grids of decode cases. Every field may be a scalar or a list (lists are crossed, the
last axis varying fastest: cache_len, so a sweep's lines run along the cache length).
``cache_lens: [[1, 17, 300], [5, 5]]`` gives explicit lengths instead of ``cache_len`` (one case
per list; batch = its length, cache_len = its max)::

    name: decode
    problem: decode
    cases:
      - {batch: 16, heads_q: 32, heads_kv: 8, head_dim: 128, q_len: [1, 4],
         cache_len: [4096, 32768], cache_dist: uniform, page_size: [0, 16], dtype: bf16}
    cpu:
      cases: [{batch: 2, heads_q: 4, heads_kv: 2, head_dim: 32, cache_len: 77, dtype: fp32}]

Decode is forward-only: ``modes`` defaults to ``[fwd]`` and takes nothing else.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ..base import BaseGrid, ConfigBase, CpuVariantBase, Mode
from .case import DecodeCase

_AXIS_ORDER = (
    "batch tokens heads_q heads_kv model_dim head_dim dtype softmax_scale page_size q_len "
    "cache_dist cache_len"
).split()


class DecodeGrid(BaseGrid):
    case_type: ClassVar[type] = DecodeCase
    q_len: int | list[int] = 1
    cache_len: int | list[int] | None = None
    cache_dist: str | list[str] = "fixed"  # fixed | uniform (checked by the case)
    cache_lens: list[list[int]] | None = None  # explicit lengths: one list per case
    page_size: int | list[int] = 0

    def axes(self) -> dict[str, list]:
        axes = super().axes()
        axes.pop("cache_lens", None)
        if self.cache_lens is not None:
            if not self.cache_lens:
                raise ValueError("cache_lens: give at least one list of lengths")
            if self.cache_len is not None:
                raise ValueError("give cache_len or cache_lens, not both")
            axes["_lens"] = self.cache_lens
        elif self.cache_len is None:
            raise ValueError("give cache_len (the longest cache) or cache_lens")
        rank = {k: i for i, k in enumerate(_AXIS_ORDER)}
        return dict(sorted(axes.items(), key=lambda kv: rank.get(kv[0], len(rank))))

    def case_fields(self, d: dict) -> dict:
        lens = d.pop("_lens", None)
        if lens is not None:
            if not lens:
                raise ValueError("cache_lens: every entry needs at least one length")
            if "batch" in d and d["batch"] != len(lens):
                raise ValueError(f"batch={d['batch']} but cache_lens {lens} has {len(lens)}")
            d["cache_lens"], d["batch"], d["cache_len"] = tuple(lens), len(lens), max(lens)
        return d

    def tokens_per(self, d: dict) -> int:
        return d.get("q_len", 1)  # tokens = batch x q_len new tokens


def _forward_only(modes):
    if modes is not None and set(modes) != {"fwd"}:
        raise ValueError(
            f"decode is forward-only (inference attention has no backward): modes must be "
            f"[fwd], got {modes}"
        )
    return modes


class DecodeCpu(CpuVariantBase):
    cases: list[DecodeGrid] = Field(min_length=1)

    @field_validator("modes")
    @classmethod
    def _fwd(cls, v):
        return _forward_only(v)


class DecodeConfigFile(ConfigBase):
    """A decode suite or sweep (``problem: decode``)."""

    problem: Literal["decode"] = "decode"
    modes: list[Mode] = ["fwd"]
    cases: list[DecodeGrid] = Field(min_length=1)
    cpu: DecodeCpu | None = None

    @field_validator("modes")
    @classmethod
    def _fwd(cls, v):
        return _forward_only(v)
