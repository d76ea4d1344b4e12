"""What every problem shares: the base case (the fields all problems have), the :class:`Problem`
record a problem package builds, and the config-grid machinery (a YAML grid of crossed axes ->
cases). A problem package (``attnbench/problems/<name>/``) adds its own case fields, grid,
inputs, reference, FLOPs and bytes; nothing here knows any one problem.

Data flows one way: ``run.config`` reads YAML into a problem's config model, :func:`expand`
turns its grids into cases, the run driver runs them.
"""

from __future__ import annotations

import itertools
import math
import types
import typing
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_ALIASES = {
    "float16": "fp16",
    "half": "fp16",
    "fp16": "fp16",
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float32": "fp32",
    "float": "fp32",
    "fp32": "fp32",
}
MODES = ("fwd", "bwd", "fwd_bwd")
BWD_FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}
Mode = Literal["fwd", "bwd", "fwd_bwd"]


# ---- the case ---------------------------------------------------------------------------------
SHARED_FIELDS = ("batch", "heads_q", "heads_kv", "head_dim", "dtype", "softmax_scale")


@dataclass(frozen=True)
class Case:
    """What every problem's case has: the fields :data:`SHARED_FIELDS` (``batch``, ``heads_q``,
    ``heads_kv``, ``head_dim``, ``dtype``, ``softmax_scale``; a problem declares them in its own
    dataclass, in the order its positional constructor takes) and the behaviour built on them. A
    problem subclasses it with ``@dataclass(frozen=True)``, sets ``problem``, and overrides
    :attr:`id` and :meth:`validate` (calling ``super().validate()``)."""

    problem: ClassVar[str] = ""
    # result columns a problem derives from its fields (name -> python type), beside its fields
    derived_columns: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        missing = [f for f in SHARED_FIELDS if f not in getattr(cls, "__annotations__", {})]
        if missing and cls.problem:
            raise TypeError(f"{cls.__name__} must declare the shared case fields {missing}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def scale(self) -> float:
        return (
            self.softmax_scale if self.softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        )

    @property
    def gqa(self) -> bool:
        return self.heads_q != self.heads_kv

    def heads_id(self) -> str:
        return f"H{self.heads_q}" if not self.gqa else f"H{self.heads_q}/{self.heads_kv}"

    @property
    def id(self) -> str:
        return f"B{self.batch}-{self.heads_id()}-D{self.head_dim}-{self.dtype}"

    def params(self) -> dict:
        """The case as flat result columns (its fields, ``problem``, ``case_id``, derived)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["problem"] = self.problem
        d["softmax_scale"] = self.scale
        d["case_id"] = self.id
        for name in self.derived_columns:
            d[name] = getattr(self, name)
        return d

    @classmethod
    def columns(cls) -> dict[str, Any]:
        """Result columns of this problem's cases: field name -> annotation (a string), then the
        derived columns; :mod:`attnbench.results.schema` turns them into arrow types."""
        cols = {f.name: f.type for f in fields(cls)}
        cols.update({k: v.__name__ for k, v in cls.derived_columns.items()})
        return cols

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for an impossible case."""
        if min(self.batch, self.heads_q, self.heads_kv, self.head_dim) < 1:
            raise ValueError(f"{self.id}: batch, heads and head_dim must be >= 1")
        if self.heads_q % self.heads_kv:
            raise ValueError(
                f"{self.id}: heads_kv={self.heads_kv} must divide heads_q={self.heads_q}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.id}: dtype {self.dtype!r} not one of {sorted(DTYPES)}")
        if self.softmax_scale is not None and not (
            math.isfinite(self.softmax_scale) and self.softmax_scale > 0
        ):
            raise ValueError(f"{self.id}: softmax_scale must be a finite number > 0")


def case_seed(case: Case, seed: int) -> int:
    return (zlib.crc32(case.id.encode()) + seed) % (2**31)


def seeded_randn(case: Case, device, seed: int):
    """``randn(*shape)``: standard-normal tensors in the case's dtype, seeded by (case, seed);
    successive calls give successive tensors. Validates the case first."""
    case.validate()
    g = torch.Generator(device=device).manual_seed(case_seed(case, seed))

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(
            case.torch_dtype
        )

    return randn


# ---- the problem record -----------------------------------------------------------------------
def _no_bytes(case, mode) -> float | None:
    return None


def _no_needs(case, mode) -> list:
    return []


@dataclass(frozen=True)
class Problem:
    """One problem: everything the run driver, the rule and the views need to know of it."""

    name: str
    description: str
    case_type: type[Case]
    config: type  # the pydantic config model whose grids make this problem's cases
    grads: tuple[str, ...]  # graded gradients, in the order of Backend.grads()
    make_inputs: Callable[..., Any]  # (case, device, seed) -> inputs with .differentiable, .dout
    reference: Callable[..., Any]  # (inp, case, *, upcast, grads) -> .out, .lse, .<grad>
    flops: Callable[[Case, str], float]  # (case, mode) -> FLOPs
    # (case, mode) -> bytes a kernel must move at least (inputs read, outputs written once)
    bytes: Callable[[Case, str], float | None] = _no_bytes
    # (case, mode) -> [(capability, what to say when a backend lacks it)]: the features a case
    # needs of a backend; Backend.why_unsupported checks them against its Capabilities
    needs: Callable[[Case, str], list[tuple[str, str]]] = _no_needs
    # perf figures: (x column, y metric: tflops | gbps | latency_ms, the size that may co-vary
    # with x: batch or heads_q, or None); a figure per value of every other case column
    plot_axes: tuple[tuple[str, str, str | None], ...] = (
        ("seqlen_q", "tflops", "batch"),
        ("head_dim", "tflops", "heads_q"),
    )

    @property
    def tensors(self) -> tuple[str, ...]:
        """Every graded tensor: out, lse, then the gradients."""
        return ("out", "lse", *self.grads)


# ---- config grids -----------------------------------------------------------------------------
def _leaf_types(annotation) -> set:
    """The types a field's annotation admits at its leaves (``int | list[int] | None`` ->
    {int, NoneType}); a ``Literal`` counts as the types of its values."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {type(a) for a in typing.get_args(annotation)}
    if origin is None:
        return {annotation}
    if origin is typing.Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    leaves = set()
    for a in typing.get_args(annotation):
        if a is not Ellipsis:
            leaves |= _leaf_types(a)
    if origin not in (typing.Union, types.UnionType, list, tuple, set, frozenset, dict):
        leaves.add(origin)
    return leaves


def _leaves(v):
    if isinstance(v, list | tuple):
        for x in v:
            yield from _leaves(x)
    else:
        yield v


class Strict(BaseModel):
    """Unknown keys are errors, and so are a boolean or a string where a number is due: pydantic
    would read ``batch: true`` as 1 and ``head_dim: "64"`` as 64 (lax mode)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, v, info: ValidationInfo):
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is None or v is None:
            return v
        leaves = _leaf_types(field.annotation)
        if not leaves & {int, float}:
            return v
        what = "an integer" if float not in leaves else "a number"
        for x in _leaves(v):
            # the value itself is shown for a scalar (config.py adds "(got ...)"), not for a list
            shown = f" ({x!r} in the list)" if isinstance(v, list | tuple) else ""
            if isinstance(x, bool) and bool not in leaves:
                raise ValueError(f"expected {what}, not a boolean{shown}")
            if isinstance(x, str) and str not in leaves:
                raise ValueError(f"expected {what}, not a string{shown}")
        return v


class BaseGrid(Strict):
    """The grid fields every problem has. A problem's grid adds its own fields and may override
    :meth:`axes` (how fields become crossed axes) and :meth:`case_fields` (turning its own axes
    into case fields); :func:`expand` does the rest. ``tokens`` derives ``batch = tokens //
    seqlen_q`` (at least one sequence) and ``model_dim`` derives ``heads_q = model_dim //
    head_dim`` (a multiple of ``head_dim``)."""

    case_type: ClassVar[type[Case]] = Case
    batch: int | list[int] | None = None
    tokens: int | list[int] | None = None  # batch = tokens // seqlen_q
    heads_q: int | list[int] | None = None
    heads_kv: int | list[int] | None = None  # default: heads_q
    model_dim: int | list[int] | None = None  # heads_q = model_dim // head_dim
    head_dim: int | list[int]
    dtype: str | list[str] = "bf16"
    softmax_scale: float | list[float] | None = None

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v):
        vals = v if isinstance(v, list) else [v]
        bad = [d for d in vals if d not in DTYPE_ALIASES]
        if bad:
            raise ValueError(f"unknown dtype {bad[0]!r}; expected one of fp16, bf16, fp32")
        out = [DTYPE_ALIASES[d] for d in vals]
        return out if isinstance(v, list) else out[0]

    def axes(self) -> dict[str, list]:
        """Crossed axes, in field order (the last varies fastest)."""
        return {k: as_list(v) for k, v in self.model_dump().items() if v is not None}

    def case_fields(self, d: dict) -> dict:
        """One combination of the axes -> case fields (before ``model_dim`` and ``tokens`` are
        resolved into heads and batch)."""
        return d

    def tokens_per(self, d: dict) -> int:
        """The length ``tokens`` is divided by to give the batch (query length by default)."""
        if "seqlen_q" not in d:
            raise ValueError("tokens needs a sequence length")
        return d["seqlen_q"]


class CpuVariantBase(Strict):
    note: str = "no GPU: CPU backends at small sizes"
    modes: list[Mode] | None = None


class ConfigBase(Strict):
    """The keys of every suite or sweep file; a problem's config adds ``problem``, ``cases``
    (a list of its grid) and ``cpu`` (its CPU variant)."""

    name: str
    description: str = ""
    kind: Literal["accuracy", "perf"] | None = None
    seed: int = 0
    modes: list[Mode] = ["fwd", "bwd", "fwd_bwd"]
    warmup_ms: int = Field(25, ge=0)
    rep_ms: int = Field(100, gt=0)


def as_list(v):
    return v if isinstance(v, list) else [v]


def expand(grid: BaseGrid) -> list[Case]:
    """All cases of one grid, in file order (last field varies fastest)."""
    axes = grid.axes()
    keys = list(axes)
    cases = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        d = grid.case_fields(dict(zip(keys, combo)))
        model_dim = d.pop("model_dim", None)
        if model_dim is not None:
            if "heads_q" in d:
                raise ValueError("give heads_q or model_dim, not both")
            hd = d["head_dim"]
            if hd > 0 and model_dim % hd:
                raise ValueError(
                    f"model_dim {model_dim} is not a multiple of head_dim {hd} "
                    f"({model_dim // hd} heads of {hd} would be {model_dim // hd * hd} wide); "
                    f"give a model_dim that head_dim divides, or heads_q"
                )
            d["heads_q"] = model_dim // hd if hd > 0 else 0
        tokens = d.pop("tokens", None)
        if tokens is not None:
            if "batch" in d:
                raise ValueError("give batch or tokens, not both")
            per = grid.tokens_per(d)
            if per > 0 and tokens < per:
                raise ValueError(
                    f"tokens {tokens} is fewer than the {per} of one sequence "
                    f"(batch = tokens // {per} would be 0); give tokens >= {per}, or batch"
                )
            d["batch"] = tokens // per if per > 0 else 0
        if "heads_q" not in d or "batch" not in d:
            raise ValueError("give heads_q (or model_dim) and batch (or tokens)")
        d.setdefault("heads_kv", d["heads_q"])
        case = grid.case_type(**d)
        case.validate()
        cases.append(case)
    return cases
