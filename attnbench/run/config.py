"""Typed YAML suites (accuracy) and sweeps (perf), validated with pydantic: the file's
``problem:`` (default ``attention``) picks the problem's config model
(:attr:`attnbench.problems.base.Problem.config`), whose grids expand into cases.

A file holds a list of *grids*; in a grid every field may be a scalar or a list, and lists are
crossed. ``seqlen`` sets both lengths; ``tokens`` derives ``batch = tokens // seqlen_q`` and
``model_dim`` derives ``heads_q = model_dim // head_dim`` (flash-attention's benchmark convention;
a ``model_dim`` that ``head_dim`` does not divide, or fewer ``tokens`` than one sequence, is an
error, as is ``true`` or ``"64"`` where a number is due).
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

import re
import stat
from dataclasses import replace
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from ..problems import PROBLEMS
from ..problems.base import Case, ConfigBase, Mode, expand  # noqa: F401  (re-exported)


class ConfigError(Exception):
    """A bad config file; the message is one line per problem, each with the key path."""


class DistConfigFile(ConfigError):
    """A distributed suite or sweep (``strategies``, ``world_sizes``, ...) given to the
    single-device commands: it runs under ``attnbench dist``."""

    def __init__(self, path: Path, given: str):
        super().__init__(
            f"{path.name} is a distributed config; run it with attnbench dist accuracy "
            f"--suite {given} (or attnbench dist perf --sweep {given})"
        )
        self.path, self.given = path, given


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


# the names pydantic gives the members of a union (``int | list[int]``) and the validators
# wrapped around a field in an error's location: never a key of the file
_TYPE_TAG = re.compile(
    r"^(int|float|bool|str|bytes|none|list\[.*\]|tuple\[.*\]|dict\[.*\]|set\[.*\]"
    r"|literal\[.*\]|union\[.*\]|nullable\[.*\]|function-(after|before|wrap|plain)\[.*\]"
    r"|lax-or-strict\[.*\]|json-or-python\[.*\]|constrained-.*|[A-Z]\w*)$"
)


def _key_path(loc: tuple, raw) -> str:
    """An error location as the file's key path: walk the file's own data (``raw``) along it,
    so a key of the file (``stride``, ``integer``) is kept and only pydantic's union-member and
    validator tags (``int``, ``list[int]``, ``function-after[...]``) are dropped."""
    parts, here = [], raw
    for p in loc:
        if isinstance(here, dict) and p in here:
            parts.append(str(p))
            here = here[p]
        elif isinstance(here, list) and isinstance(p, int) and 0 <= p < len(here):
            parts.append(str(p))
            here = here[p]
        elif isinstance(p, str) and _TYPE_TAG.match(p):
            continue  # a tag: the same place in the file
        else:  # a key the file lacks (a missing field) or past the data: as pydantic says
            parts.append(str(p))
            here = None
    return ".".join(parts)


def _format_validation(err: ValidationError, raw=None) -> list[str]:
    lines = []
    for e in err.errors():
        loc = _key_path(e["loc"], raw)
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{loc or '<top>'}: {e['msg']}{shown}")
    return list(dict.fromkeys(lines))


def _dist_keys(raw: dict, model: type[BaseModel]) -> bool:
    """Whether ``raw``, refused by ``model``, is a distributed config (its keys: ``strategies``,
    ``world_sizes``, ...; or ``kind: dist_accuracy``)."""
    from ..distributed.config import DistConfig

    own = set(DistConfig.model_fields) - set(model.model_fields)
    return bool(own & set(raw)) or str(raw.get("kind", "")).startswith("dist_")


def config_path(name_or_file: str) -> Path:
    """A file path, or the name of a shipped config (``basic`` -> configs/basic.yaml)."""
    p = Path(name_or_file)
    try:
        if p.suffix in (".yaml", ".yml") or p.exists():
            if not p.exists():
                raise ConfigError(f"{p}: no such file")
            mode = p.stat().st_mode
            if stat.S_ISDIR(mode):
                raise ConfigError(f"{p}: is a folder, not a YAML file")
            if not stat.S_ISREG(mode):  # /dev/null, a FIFO (never opened: it could block)
                raise ConfigError(f"{p}: not a regular file (a device, pipe or socket)")
            return p
        shipped = resources.files("attnbench.configs").joinpath(f"{name_or_file}.yaml")
        is_shipped = shipped.is_file()
    except OSError as e:  # a name too long, a loop of links, ...
        raise ConfigError(f"{_short(name_or_file)}: cannot read ({e.strerror or e})") from None
    if not is_shipped:
        names = sorted(
            f.name[:-5]
            for f in resources.files("attnbench.configs").iterdir()
            if f.name.endswith(".yaml")
        )
        raise ConfigError(f"unknown config {_short(name_or_file)!r}; shipped: {', '.join(names)}")
    return Path(str(shipped))


def _short(text: str, n: int = 120) -> str:
    """A path or name for a one-line message (a 5000-character name is cut, with its length)."""
    text = str(text)
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def load_config(name_or_file: str, model: type[BaseModel] | None = None) -> tuple[ConfigBase, Path]:
    """Read, validate (``model``, default: the config model of the file's ``problem``) and
    expand a config, so impossible cases fail here with their key path."""
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
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deep") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    guessed = model is None  # the file's problem picks the model
    if model is None:
        name = raw.get("problem", "attention")
        if not isinstance(name, str) or name not in PROBLEMS:
            raise ConfigError(
                f"{path}: problem: unknown problem {name!r}; known: {', '.join(PROBLEMS)}"
            )
        model = PROBLEMS[name].config
    try:
        cfg = model.model_validate(raw)
    except ValidationError as e:
        if guessed and _dist_keys(raw, model):
            raise DistConfigFile(path, name_or_file) from None
        raise ConfigError(
            "\n".join(f"{path}: {line}" for line in _format_validation(e, raw))
        ) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deep") from None
    for prefix, grids in (("cases", cfg.cases), ("cpu.cases", cfg.cpu.cases if cfg.cpu else [])):
        for i, grid in enumerate(grids):
            try:
                expand(grid)
            except ValueError as e:
                raise ConfigError(f"{path}: {prefix}.{i}: {e}") from None
    return cfg, path


def select_cases(
    cfg: ConfigBase, device: str, dtypes: list[str] | None = None
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
        cases = [replace(c, dtype=d) for c in cases for d in dtypes]
    return list(dict.fromkeys(cases)), list(modes), note
