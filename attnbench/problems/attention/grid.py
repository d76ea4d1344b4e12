"""Config grids of sequence problems (plain attention, and piecewise attention built on it).

In a grid every field may be a scalar or a list, and lists are crossed. ``seqlen`` sets both
lengths; ``tokens`` derives ``batch = tokens // seqlen_q`` and ``model_dim`` derives ``heads_q =
model_dim // head_dim`` (flash-attention's benchmark convention). A ``cpu:`` block gives the
smaller cases run when there is no GPU::

    name: seqlen
    modes: [fwd, bwd, fwd_bwd]
    cases:
      - {tokens: 16384, model_dim: 2048, seqlen: [512, 1024], head_dim: [64, 128],
         causal: [false, true], dtype: [bf16, fp16]}
    cpu:
      note: CPU backends only, small sizes
      cases: [{tokens: 1024, model_dim: 256, seqlen: [128, 256], head_dim: 64, dtype: fp32}]

An attention grid also takes the input distribution (``q_std``, ``k_std``, ``k_channel_offset``:
see :mod:`attnbench.problems.attention.inputs`), and an attention config a top-level ``lossy:``
(``{cos_sim: 0.999, rel_l1: 0.05}``, either or both) that replaces the default tolerances of the
backends graded by the lossy rule (:mod:`attnbench.rule`) for every case of the file.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from ..base import BaseGrid, ConfigBase, CpuVariantBase, Strict
from .case import AttentionCase

# the order axes are crossed in (the last varies fastest): the order of the files' cases
_AXIS_ORDER = (
    "batch tokens heads_q heads_kv model_dim seqlen seqlen_q seqlen_k head_dim dtype causal "
    "softmax_scale deterministic"
).split()


class SeqGrid(BaseGrid):
    """A grid of cases with query and key lengths, a causal flag and a deterministic backward."""

    seqlen: int | list[int] | None = None  # sets seqlen_q and seqlen_k
    seqlen_q: int | list[int] | None = None
    seqlen_k: int | list[int] | None = None
    causal: bool | list[bool] = False
    deterministic: bool | list[bool] = False

    def axes(self) -> dict[str, list]:
        axes = super().axes()
        rank = {k: i for i, k in enumerate(_AXIS_ORDER)}
        return dict(sorted(axes.items(), key=lambda kv: rank.get(kv[0], len(rank))))

    def case_fields(self, d: dict) -> dict:
        if "seqlen" in d:
            if "seqlen_q" in d or "seqlen_k" in d or d.get("seqlens") is not None:
                raise ValueError("give seqlen, or seqlen_q and seqlen_k, or seqlens; not two")
            s = d.pop("seqlen")
            d.setdefault("seqlen_q", s)
            d.setdefault("seqlen_k", s)
        if "seqlen_q" not in d or "seqlen_k" not in d:
            raise ValueError("give seqlen, or seqlen_q and seqlen_k, or seqlens (varlen)")
        return d


class Grid(SeqGrid):
    """A grid of plain-attention cases (varlen and the flash-attn knobs)."""

    case_type: ClassVar[type] = AttentionCase
    seqlens: list[list[int]] | None = None  # varlen: one list of sequence lengths per case
    seqlens_k: list[list[int]] | None = None
    window: tuple[int, int] | list[tuple[int, int]] | None = None  # (left, right), -1 = unbounded
    softcap: float | list[float] = 0.0
    alibi: bool | list[bool] = False
    # input distribution (defaults: standard normal, as every case before them)
    q_std: float | list[float] = 1.0
    k_std: float | list[float] = 1.0
    k_channel_offset: float | list[float] = 0.0
    # the config's lossy tolerances (Config.lossy), handed to every case of the grid
    _lossy: tuple[float | None, float | None] | None = PrivateAttr(default=None)

    def axes(self) -> dict[str, list]:
        axes = super().axes()
        for k in ("seqlens", "seqlens_k", "window"):
            axes.pop(k, None)
        w = self.window
        axes["window"] = [(-1, -1)] if w is None else [w] if isinstance(w, tuple) else w
        if self.seqlens is not None:
            ks = self.seqlens_k if self.seqlens_k is not None else [None] * len(self.seqlens)
            if len(ks) != len(self.seqlens):
                raise ValueError("seqlens_k must have one entry per seqlens entry")
            axes["_varlen"] = list(zip(self.seqlens, ks))
        return axes

    def case_fields(self, d: dict) -> dict:
        d["window_left"], d["window_right"] = d.pop("window")
        varlen = d.pop("_varlen", None)
        if varlen is not None:
            sq, sk = varlen
            if not sq or (sk is not None and not sk):
                raise ValueError("seqlens: every entry needs at least one sequence length")
            d["seqlens"], d["seqlens_k"] = tuple(sq), tuple(sk) if sk is not None else None
            d["batch"] = len(sq)
            d["seqlen_q"], d["seqlen_k"] = max(sq), max(sk if sk is not None else sq)
        if self._lossy is not None:
            d["lossy"] = self._lossy
        return super().case_fields(d)


class CpuVariant(CpuVariantBase):
    cases: list[Grid] = Field(min_length=1)


class Lossy(Strict):
    """``lossy: {cos_sim: 0.999, rel_l1: 0.05}``: the lossy rule's limits for this file's cases
    (a tensor passes when its cosine similarity is >= cos_sim and its relative L1 error <=
    rel_l1); a key left out keeps the default of the backend's precision (attnbench.rule)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    cos_sim: float | None = Field(None, gt=0, le=1)
    rel_l1: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _something(self):
        if self.cos_sim is None and self.rel_l1 is None:
            raise ValueError("give cos_sim, rel_l1 or both (or leave lossy out: the defaults)")
        return self


class Config(ConfigBase):
    """A suite or sweep of plain attention (``problem: attention``, the default)."""

    problem: Literal["attention"] = "attention"
    cases: list[Grid] = Field(min_length=1)
    cpu: CpuVariant | None = None
    lossy: Lossy | None = None

    @model_validator(mode="after")
    def _hand_lossy_to_the_grids(self):
        tol = None if self.lossy is None else (self.lossy.cos_sim, self.lossy.rel_l1)
        for grid in [*self.cases, *(self.cpu.cases if self.cpu else [])]:
            grid._lossy = tol
        return self
