"""Settings that can change a number, read once per run and recorded in every row.

    s = Settings.from_env(retune=True)      # environment first, then the command's flags
    s.activate()                            # the kernels and backends obey it from now on
    s.column()                              # '{"retune": true}': the row's ``settings``

Only values off their default are recorded (``None`` when all are default), so two runs that
differ in a setting show it in ``attnbench compare``. Each field has an environment variable
(``ATTNBENCH_<NAME>``) for scripts and tuning sessions; a flag of the command overrides it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace

from .kernels import switches


@dataclass(frozen=True)
class Settings:
    # in-repo Triton kernels (attnbench.kernels.switches)
    triton_fa2_tune: bool = True  # autotune triton_fa2 (else its first config that fits)
    piecewise_tune: bool = True  # autotune the piecewise kernel
    decode_tune: bool = True  # autotune the decode kernel
    fp8_tune: bool = True  # autotune the FP8 attention kernel (triton_fp8)
    retune: bool = False  # ignore kept tuning choices, tune again (perf --retune)
    precompile: bool = True  # compile a new key's candidates in parallel before timing them
    tuning_cache: str = ""  # the tuning-choices file ("" = ~/.cache/attnbench/tuning.json)
    piecewise_fwd: str = ""  # tile overrides for tuning sessions (BMxBNwWsS,...)
    piecewise_dkdv: str = ""
    piecewise_dq: str = ""
    # backends
    flex_dynamic: bool = False  # FlexAttention under dynamo's automatic dynamic shapes
    cuda_graph: bool = False  # time by CUDA-graph replay where a backend allows capture

    @staticmethod
    def env_name(field: str) -> str:
        return switches.ENV[field][0] if field in switches.ENV else f"ATTNBENCH_{field.upper()}"

    @classmethod
    def from_env(cls, environ=None, **flags) -> Settings:
        """The environment's values, then ``flags`` (None: not given) on top."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(cls.env_name(f.name))
            if raw is None:
                continue
            values[f.name] = raw not in ("", "0") if f.type == "bool" else raw
        values.update({k: v for k, v in flags.items() if v is not None})
        return cls(**values)

    def nondefault(self) -> dict:
        base = asdict(Settings())
        return {k: v for k, v in asdict(self).items() if v != base[k]}

    def column(self) -> str | None:
        """The ``settings`` column: JSON of the values off their default, None if none."""
        nd = self.nondefault()
        return json.dumps(nd, sort_keys=True) if nd else None

    def activate(self):
        """Make these the process's settings, pinned into the kernels' switches too. Returns a
        function that puts back what was active before (one process may drive several runs)."""
        global _current
        before, pinned = _current, switches.pinned()
        _current = self
        switches.pin(**{k: v for k, v in asdict(self).items() if k in switches.ENV})

        def restore() -> None:
            global _current
            _current = before
            switches.unpin()
            switches.pin(**pinned)

        return restore

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)


_current: Settings | None = None


def current() -> Settings:
    """The active settings (the environment's, when no run activated any)."""
    return _current if _current is not None else Settings.from_env()


def describe(column: str | None) -> str:
    """A ``settings`` column as ``a=1, b=x`` (``defaults`` when empty)."""
    if not isinstance(column, str) or not column:  # None, or NaN from a DataFrame
        return "defaults"
    return ", ".join(f"{k}={v}" for k, v in json.loads(column).items())
