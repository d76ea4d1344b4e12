"""Typed YAML suites (accuracy) and sweeps (perf), validated with pydantic.

A file holds a list of *grids*; in a grid every field may be a scalar or a list, and lists are
crossed. ``seqlen`` sets both lengths; ``tokens`` derives ``batch = tokens // seqlen_q`` and
``model_dim`` derives ``heads_q = model_dim // head_dim`` (flash-attention's benchmark convention).
A ``cpu:`` block gives the smaller cases run when there is no GPU::

    name: seqlen
    modes: [fwd, bwd, fwd_bwd]
    cases:
      - {tokens: 16384, model_dim: 2048, seqlen: [512, 1024], head_dim: [64, 128],
         causal: [false, true], dtype: [bf16, fp16]}
    cpu:
      note: CPU backends only, small sizes
      cases: [{tokens: 1024, model_dim: 256, seqlen: [128, 256], head_dim: 64, dtype: fp32}]
"""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .case import DTYPE_ALIASES, Case

Mode = Literal["fwd", "bwd", "fwd_bwd"]


class ConfigError(Exception):
    """A bad config file; the message is one line per problem, each with the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseGrid(_Strict):
    """The fields every problem's grid has. A problem's grid adds its own fields and may
    override :meth:`axes` (how fields become crossed axes) and :meth:`case_fields` (turning its
    own axes into case fields); :func:`expand` does the rest."""

    case_type: ClassVar[type[Case]] = Case
    batch: int | list[int] | None = None
    tokens: int | list[int] | None = None  # batch = tokens // seqlen_q
    heads_q: int | list[int] | None = None
    heads_kv: int | list[int] | None = None  # default: heads_q
    model_dim: int | list[int] | None = None  # heads_q = model_dim // head_dim
    seqlen: int | list[int] | None = None  # sets seqlen_q and seqlen_k
    seqlen_q: int | list[int] | None = None
    seqlen_k: int | list[int] | None = None
    head_dim: int | list[int]
    dtype: str | list[str] = "bf16"
    causal: bool | list[bool] = False
    softmax_scale: float | list[float] | None = None
    deterministic: bool | list[bool] = False

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
        return {k: _as_list(v) for k, v in self.model_dump().items() if v is not None}

    def case_fields(self, d: dict) -> dict:
        """One combination of the axes -> case fields (before ``seqlen``, ``model_dim`` and
        ``tokens`` are resolved into lengths, heads and batch)."""
        return d


class Grid(BaseGrid):
    """A grid of plain-attention cases (varlen and the flash-attn knobs)."""

    seqlens: list[list[int]] | None = None  # varlen: one list of sequence lengths per case
    seqlens_k: list[list[int]] | None = None
    window: tuple[int, int] | list[tuple[int, int]] | None = None  # (left, right), -1 = unbounded
    softcap: float | list[float] = 0.0
    alibi: bool | list[bool] = False

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
        return d


class CpuVariant(_Strict):
    note: str = "no GPU: CPU backends at small sizes"
    cases: list[Grid] = Field(min_length=1)
    modes: list[Mode] | None = None


class Config(_Strict):
    """A suite or sweep of plain attention; other problems subclass it with their own grid
    (``problem: piecewise`` in the file picks :class:`attnbench.problems.piecewise` 's)."""

    name: str
    description: str = ""
    problem: Literal["attention"] = "attention"
    kind: Literal["accuracy", "perf"] | None = None
    seed: int = 0
    modes: list[Mode] = ["fwd", "bwd", "fwd_bwd"]
    warmup_ms: int = Field(25, ge=0)
    rep_ms: int = Field(100, gt=0)
    cases: list[Grid] = Field(min_length=1)
    cpu: CpuVariant | None = None


def _as_list(v):
    return v if isinstance(v, list) else [v]


def expand(grid: BaseGrid) -> list[Case]:
    """All cases of one grid, in file order (last field varies fastest)."""
    axes = grid.axes()
    keys = list(axes)
    cases = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        d = grid.case_fields(dict(zip(keys, combo)))
        if "seqlen" in d:
            if "seqlen_q" in d or "seqlen_k" in d or d.get("seqlens") is not None:
                raise ValueError("give seqlen, or seqlen_q and seqlen_k, or seqlens; not two")
            s = d.pop("seqlen")
            d.setdefault("seqlen_q", s)
            d.setdefault("seqlen_k", s)
        if "seqlen_q" not in d or "seqlen_k" not in d:
            raise ValueError("give seqlen, or seqlen_q and seqlen_k, or seqlens (varlen)")
        model_dim = d.pop("model_dim", None)
        if model_dim is not None:
            if "heads_q" in d:
                raise ValueError("give heads_q or model_dim, not both")
            d["heads_q"] = model_dim // d["head_dim"]
        tokens = d.pop("tokens", None)
        if tokens is not None:
            if "batch" in d:
                raise ValueError("give batch or tokens, not both")
            d["batch"] = max(1, tokens // d["seqlen_q"])
        if "heads_q" not in d or "batch" not in d:
            raise ValueError("give heads_q (or model_dim) and batch (or tokens)")
        d.setdefault("heads_kv", d["heads_q"])
        case = grid.case_type(**d)
        case.validate()
        cases.append(case)
    return cases


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _format_validation(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(
            str(p)
            for p in e["loc"]
            if not str(p).startswith(("int", "list[", "bool", "float", "str", "tuple[", "function"))
        )
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{loc or '<top>'}: {e['msg']}{shown}")
    return list(dict.fromkeys(lines))


def config_path(name_or_file: str) -> Path:
    """A file path, or the name of a shipped config (``basic`` -> configs/basic.yaml)."""
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"{p}: no such file")
        if not p.is_file():
            raise ConfigError(f"{p}: is a folder, not a YAML file")
        return p
    shipped = resources.files("attnbench.configs").joinpath(f"{name_or_file}.yaml")
    if not shipped.is_file():
        names = sorted(
            f.name[:-5]
            for f in resources.files("attnbench.configs").iterdir()
            if f.name.endswith(".yaml")
        )
        raise ConfigError(f"unknown config {name_or_file!r}; shipped: {', '.join(names)}")
    return Path(str(shipped))


def load_config(name_or_file: str, model: type[BaseModel] = Config) -> tuple[Config, Path]:
    """Read, validate (``model``: :class:`Config` or a subclass-like model with ``cases`` and
    ``cpu``) and expand a config, so impossible cases fail here with their key path."""
    path = config_path(name_or_file)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if model is Config:
        from .problems import PROBLEMS

        name = raw.get("problem", "attention")
        if name not in PROBLEMS:
            raise ConfigError(
                f"{path}: problem: unknown problem {name!r}; known: {', '.join(PROBLEMS)}"
            )
        model = PROBLEMS[name].config
    try:
        cfg = model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("\n".join(f"{path}: {line}" for line in _format_validation(e))) from None
    for prefix, grids in (("cases", cfg.cases), ("cpu.cases", cfg.cpu.cases if cfg.cpu else [])):
        for i, grid in enumerate(grids):
            try:
                expand(grid)
            except ValueError as e:
                raise ConfigError(f"{path}: {prefix}.{i}: {e}") from None
    return cfg, path


def select_cases(
    cfg: Config, device: str, dtypes: list[str] | None = None
) -> tuple[list[Case], list[str], str | None]:
    """Cases and modes to run on ``device`` (the ``cpu`` variant on CPU, if the file has one),
    with the note to print. ``dtypes`` overrides every case's dtype (duplicates dropped)."""
    note = None
    grids, modes = cfg.cases, cfg.modes
    if device == "cpu" and cfg.cpu is not None:
        grids, note = cfg.cpu.cases, cfg.cpu.note
        modes = cfg.cpu.modes or modes
    cases = [c for g in grids for c in expand(g)]
    if dtypes:
        from dataclasses import replace

        cases = [replace(c, dtype=d) for c in cases for d in dtypes]
    return list(dict.fromkeys(cases)), list(modes), note
