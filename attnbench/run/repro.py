"""The ``repro`` column: the command line that runs one row's case again, on one backend (and,
in perf, one mode; distributed: one local kernel and one strategy at one world size).
:class:`Repro` for ``attnbench accuracy|perf``, :class:`DistRepro` for ``attnbench dist``;
``attnbench repro RUN`` prints a run's commands."""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from ..settings import Settings

if TYPE_CHECKING:
    from .session import Plan, Request

# settings that the perf command takes as a flag (on); every other setting off its default is an
# environment variable before the command (accuracy has neither flag)
_PERF_FLAGS = {"retune": "--retune", "cuda_graph": "--cuda-graph"}
# case fields every problem has and --where always names: a case's --where is checked against
# the cases that share them (not the whole config: a sweep of N cases costs N checks, not N^2)
_BUCKET = ("batch", "heads_q", "heads_kv", "head_dim", "dtype")


def shipped_name(path: Path) -> str | None:
    """``basic`` when ``path`` is the shipped config ``basic``'s file, else None."""
    from importlib import resources

    try:
        shipped = Path(str(resources.files("attnbench.configs").joinpath(f"{path.stem}.yaml")))
        if shipped.is_file() and shipped.resolve() == path.resolve():
            return path.stem
    except OSError:
        pass
    return None


def _where_value(value) -> str | None:
    """A case field's value as ``--where`` writes it; None when it cannot (None, a tuple)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if (
        isinstance(value, str)
        and value
        and not set(value) & set(",|=<>!")
        and value == value.strip()
    ):
        return value
    return None


class Repro:
    """The ``repro`` column of a single-device run: the command line that runs one case on one
    backend (and, in perf, one mode) again::

        [ENV=VALUE ...] attnbench perf --sweep CONFIG --only BACKEND --where FIELD=V,...
            [--dtype DT] --modes MODE --device DEV [--retune] [--cuda-graph] [--repeat N]

    CONFIG is the shipped name (``seqlen``) or the YAML's absolute path. ``--where`` names every
    case field whose value it can write, each parsed back through
    :func:`attnbench.run.where.parse_where` to the same value; a field it cannot write (varlen's
    ``seqlens`` tuples, a ``softmax_scale`` of None, a decode ``cache_dist`` string) is left out.
    The conditions are then run through the same parser over every case the config gives on this
    device (with the run's ``--dtype``), as the command would; when they keep more than this
    case, the derived flags (``varlen=true``) and ``FIELD!=...`` of the other cases' values are
    added, and a case still not told apart (two varlen cases that differ only in ``seqlens``;
    ``--where`` has no case-id condition) gets None, never a command that runs several cases.
    ``--dtype`` is there when the run had one (it changes the config's cases). Settings off their
    default are ``--retune``/``--cuda-graph`` in perf, else their variable before the command
    (``ATTNBENCH_FLEX_DYNAMIC=1``), as is ``TRITON_INTERPRET=1`` when the run had it."""

    def __init__(self, req: Request, p: Plan, settings: Settings):
        from ..problems import PROBLEMS

        env, flags = self._settings_words(settings, perf_flags=req.kind == "perf")
        if req.kind == "perf" and req.repeat > 1:
            flags += ["--repeat", str(req.repeat)]
        self._setup(
            req.kind,
            [PROBLEMS[p.cfg.problem].case_type],
            [*env, "attnbench", req.kind, *self._config_words(req.kind, p.path)],
            ["--device", p.device, *flags],
            req.dtype is not None,
            p.all_cases if p.all_cases is not None else p.cases,
        )

    @staticmethod
    def _settings_words(settings: Settings, perf_flags: bool) -> tuple[list[str], list[str]]:
        """(variables before the command, flags after it) of the settings off their default;
        ``perf_flags``: the command takes ``--retune``/``--cuda-graph`` (``attnbench perf``)."""
        env, flags = [], []
        if os.environ.get("TRITON_INTERPRET") == "1":
            env.append("TRITON_INTERPRET=1")
        for name, value in settings.nondefault().items():
            if perf_flags and name in _PERF_FLAGS and value is True:
                flags.append(_PERF_FLAGS[name])
            else:
                text = ("1" if value else "0") if isinstance(value, bool) else str(value)
                env.append(f"{Settings.env_name(name)}={shlex.quote(text)}")
        return env, flags

    @staticmethod
    def _config_words(kind: str, path: Path) -> list[str]:
        """``--suite NAME`` / ``--sweep NAME`` (a shipped config) or the YAML's absolute path."""
        config = shipped_name(path) or str(path.resolve())
        return ["--suite" if kind == "accuracy" else "--sweep", shlex.quote(config)]

    def _setup(self, kind, types, head: list[str], tail: list[str], dtype_flag: bool, cases):
        self.kind = kind
        self.types = types
        # the variables are quoted already (VAR='a b': the whole token quoted would be a command)
        self.head = " ".join(head)
        self.tail = tail
        self.dtype_flag = dtype_flag
        self.cases = list(cases)
        self.buckets: dict[tuple, list] = {}
        for c in self.cases:
            self.buckets.setdefault(tuple(getattr(c, f, None) for f in _BUCKET), []).append(c)
        self._where: dict = {}
        self._commands: dict = {}

    def _picks(self, backend: str, strategy: str | None) -> list[str]:
        """The flags that pick the backend (and, distributed, the strategy)."""
        return ["--only", backend]

    def command(self, case, backend: str, mode: str, strategy: str | None = None) -> str | None:
        """The row's command (None: this case cannot be selected alone; see the class)."""
        key = (case, backend, mode if self.kind == "perf" else None, strategy)
        if key not in self._commands:
            where = self.where(case)
            cmd = None
            if where is not None:
                parts = [*self._picks(backend, strategy), "--where", where]
                if self.dtype_flag:
                    parts += ["--dtype", case.dtype]
                if self.kind == "perf":
                    parts += ["--modes", mode]
                cmd = " ".join([self.head, *map(shlex.quote, parts + self.tail)])
            self._commands[key] = cmd
        return self._commands[key]

    def where(self, case) -> str | None:
        """``--where`` text that keeps ``case`` alone of the config's cases (cached), or None."""
        try:
            hash(case)
        except TypeError:
            return None
        if case not in self._where:
            self._where[case] = self._select(case)
        return self._where[case]

    def _term(self, name: str, values: tuple, op: str = "=") -> str | None:
        """``name{op}v1|v2`` when the parser reads it back as exactly that condition."""
        from .where import parse_where

        texts = [_where_value(v) for v in values]
        if not texts or None in texts:
            return None
        term = f"{name}{op}{'|'.join(texts)}"
        try:
            conds = parse_where(term, self.types)
        except ValueError:
            return None
        ok = len(conds) == 1 and (conds[0].field, conds[0].op) == (name, op)
        ok = ok and conds[0].values == tuple(values)  # the parser's reading: == as it matches
        return term if ok else None

    def _kept(self, terms: list[str], candidates: list) -> list | None:
        from .where import keep, parse_where

        if not terms:
            return None
        try:
            return keep(candidates, parse_where(",".join(terms), self.types))
        except ValueError:
            return None

    def _select(self, case) -> str | None:
        from dataclasses import fields, is_dataclass

        from .where import DERIVED

        if not is_dataclass(case):
            return None
        terms, named, loose = [], set(), []
        for f in fields(case):
            term = self._term(f.name, (getattr(case, f.name),))
            if term is None:
                loose.append(f.name)
            else:
                terms.append(term)
                named.add(f.name)
        bucket = tuple(getattr(case, f, None) for f in _BUCKET)
        candidates = self.buckets.get(bucket, []) if named >= set(_BUCKET) else self.cases
        kept = self._kept(terms, candidates)
        if kept == [case]:
            return ",".join(terms)
        if not kept or case not in kept:
            return None
        # several cases: tell this one apart by the derived flags and by != the others' values
        # of the fields left out
        for name in DERIVED:
            if hasattr(case, name):
                term = self._term(name, (getattr(case, name),))
                if term is not None:
                    terms.append(term)
        for name in loose:
            mine = getattr(case, name)
            others = [getattr(o, name) for o in kept if getattr(o, name) != mine]
            others = list(dict.fromkeys(v for v in others if _where_value(v) is not None))
            term = self._term(name, tuple(others), "!=") if others else None
            if term is not None:
                terms.append(term)
        return ",".join(terms) if self._kept(terms, candidates) == [case] else None


class DistRepro(Repro):
    """The ``repro`` column of a distributed run: one case, one local kernel, one strategy (and,
    in perf, one mode) at this world size::

        [ENV=VALUE ...] attnbench dist perf --sweep CONFIG --only STRATEGY
            --local-backends KERNEL --where FIELD=V,... [--dtype DT] --modes MODE
            --device DEV --nproc WORLD

    ``cases``: every case the config gives at this world size on this device (before
    ``--where``), among which ``--where`` must keep this case alone, as for :class:`Repro`."""

    def __init__(
        self, kind: str, path: Path, device: str, world: int, dtype_flag: bool, cases, settings
    ):
        from ..problems.attention import AttentionCase

        env, _ = self._settings_words(settings, perf_flags=False)  # dist takes neither flag
        self._setup(
            kind,
            [AttentionCase],
            [*env, "attnbench", "dist", kind, *self._config_words(kind, path)],
            ["--device", device, "--nproc", str(world)],
            dtype_flag,
            cases,
        )

    def _picks(self, backend: str, strategy: str | None) -> list[str]:
        return ["--only", strategy or "", "--local-backends", backend]
