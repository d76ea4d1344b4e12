"""The switches the in-repo kernels obey: autotuning on/off per kernel family, re-tuning, the
parallel precompile, the tuning-cache file and tile overrides for tuning sessions.

The kernels never import the harness: the harness reads its settings once per run
(:mod:`attnbench.settings`) and pins them here with :func:`pin`. A switch nobody pinned falls
back to its environment variable, read when the kernels ask (a new tuning key), so a script that
imports a kernel on its own can still use ``ATTNBENCH_TRITON_FA2_TUNE=0`` and friends.
"""

from __future__ import annotations

import os

# switch -> (environment variable, default as the variable's text)
ENV = {
    "triton_fa2_tune": ("ATTNBENCH_TRITON_FA2_TUNE", "1"),
    "piecewise_tune": ("ATTNBENCH_PIECEWISE_TUNE", "1"),
    "decode_tune": ("ATTNBENCH_DECODE_TUNE", "1"),
    "fp8_tune": ("ATTNBENCH_FP8_TUNE", "1"),
    "retune": ("ATTNBENCH_RETUNE", "0"),
    "precompile": ("ATTNBENCH_PRECOMPILE", "1"),
    "tuning_cache": ("ATTNBENCH_TUNING_CACHE", ""),
    "piecewise_fwd": ("ATTNBENCH_PIECEWISE_FWD", ""),
    "piecewise_dkdv": ("ATTNBENCH_PIECEWISE_DKDV", ""),
    "piecewise_dq": ("ATTNBENCH_PIECEWISE_DQ", ""),
}
_pinned: dict[str, object] = {}


def pin(**values) -> None:
    """Fix switches for this process (the harness's settings); unknown names raise KeyError."""
    for k in values:
        if k not in ENV:
            raise KeyError(f"unknown kernel switch {k!r}; known: {', '.join(ENV)}")
    _pinned.update(values)


def pinned() -> dict:
    """The switches pinned now (to put them back later)."""
    return dict(_pinned)


def unpin() -> None:
    """Back to the environment variables."""
    _pinned.clear()


def text(name: str) -> str:
    """A switch as text: the pinned value, else its environment variable, else its default. A
    name that is no switch is read as an environment variable (tools pass their own)."""
    if name in _pinned:
        v = _pinned[name]
        return ("1" if v else "0") if isinstance(v, bool) else ("" if v is None else str(v))
    env, default = ENV.get(name, (name, ""))
    return os.environ.get(env, default)


def on(name: str) -> bool:
    """A boolean switch: anything but empty or ``0`` is on."""
    return text(name) not in ("", "0")
