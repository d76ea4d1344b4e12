"""The tuning choices shipped with the package (``attnbench/kernels/_triton/tuning_data/*.json``,
made by GPU sessions, e.g. ``lease.sh --tuning``): every one is still a candidate of the Hopper
tables (a stored choice that is not is silently dropped, and the GPU run it was meant to spare
autotunes again: what happened when the split-band tiles changed the piecewise tables), and the
autotuner starts from them on a matching GPU (same env key), read-only, unless ``retune``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from triton.runtime.autotuner import Autotuner

from attnbench.kernels._triton import tuning
from attnbench.kernels._triton.tuning import config_dict
from attnbench.kernels.piecewise import configs as pw
from attnbench.kernels.triton_fa2 import configs as fa2

ROOT = Path(__file__).resolve().parents[1]
TABLES = {
    "fwd": fa2.fwd_configs,
    "bwd_dkdv": fa2.bwd_dkdv_configs,
    "bwd_dq": fa2.bwd_dq_configs,
    "piecewise_fwd": pw.fwd_configs,
    "piecewise_bwd_dkdv": pw.bwd_dkdv_configs,
    "piecewise_bwd_dq": pw.bwd_dq_configs,
}


def _entries():
    for f in tuning.shipped_files():
        for env, kernels in json.loads(f.read_text()).items():
            for kernel, choices in kernels.items():
                yield env, kernel, choices


ENTRIES = list(_entries())


def test_the_h200_choices_ship_as_package_data():
    names = [f.name for f in tuning.shipped_files()]
    assert "h200.json" in names
    assert any(env.startswith("NVIDIA H200 | torch ") for env, _, _ in ENTRIES)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["attnbench.kernels._triton"]
    assert f"{tuning.SHIPPED}/*.json" in data
    assert "attnbench.kernels._triton" in pyproject["tool"]["setuptools"]["packages"]


@pytest.mark.parametrize("env,kernel,choices", ENTRIES, ids=[k for _, k, _ in ENTRIES])
def test_every_stored_choice_is_a_hopper_candidate(env, kernel, choices):
    assert kernel in TABLES, f"{kernel}: no such tuned kernel"
    candidates = {json.dumps(config_dict(c), sort_keys=True) for c in TABLES[kernel]("hopper")}
    stale = [k for k, d in choices.items() if json.dumps(d, sort_keys=True) not in candidates]
    assert not stale, f"{env} {kernel}: {len(stale)} choices not in the table, e.g. {stale[0]}"


# ---- the autotuner starts from the shipped choices ----------------------------------------------
def _shipped(kernel: str):
    """(env key, tuning key, the candidate Config) of a shipped choice of ``kernel``."""
    for env, k, choices in ENTRIES:
        if k == kernel:
            key, d = next(iter(sorted(choices.items())))
            (cfg,) = [c for c in TABLES[k]("hopper") if config_dict(c) == d]
            return env, tuple(json.loads(key)), cfg
    pytest.skip(f"no shipped choice of {kernel}")


@pytest.fixture
def as_on_the_h200(tmp_path, monkeypatch):
    """An empty user tuning file and the env key of the shipped H200 choices (a fake GPU)."""
    user = tmp_path / "tuning.json"
    monkeypatch.setenv(tuning.ENV_FILE, str(user))
    monkeypatch.delenv(tuning.ENV_RETUNE, raising=False)
    env, key, cfg = _shipped("fwd")
    monkeypatch.setattr(tuning, "env_key", lambda: env)
    monkeypatch.setattr(Autotuner, "run", lambda self, *a, **kw: None)  # no timing, no GPU
    shipped = [f.read_bytes() for f in tuning.shipped_files()]
    yield env, key, cfg, user
    assert [f.read_bytes() for f in tuning.shipped_files()] == shipped  # never written


def _fwd_autotuner():
    import triton
    import triton.language as tl

    @triton.jit
    def k(Q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pass

    return tuning.autotune("fwd", fa2.fwd_configs("hopper"), ["HEAD_DIM"], prune=lambda c, n: c)(k)


def test_autotuner_finds_the_shipped_choice(as_on_the_h200):
    env, key, cfg, user = as_on_the_h200
    assert tuning.known_choices(env, "fwd", fa2.fwd_configs("hopper"))[key] == cfg
    at = _fwd_autotuner()
    at.run(torch.zeros(4), HEAD_DIM=128)
    assert at.cache[key] == cfg
    assert tuning.lookup("fwd", key, fa2.fwd_configs("hopper")) == cfg
    assert not user.exists()  # a shipped choice is not copied to the user's file
    # another GPU or software version: nothing shipped applies
    assert (
        tuning.shipped_choices("cpu | torch 0 | triton 0", "fwd", fa2.fwd_configs("hopper")) == {}
    )


def test_retune_ignores_the_shipped_choice(as_on_the_h200, monkeypatch):
    env, key, cfg, _ = as_on_the_h200
    monkeypatch.setenv(tuning.ENV_RETUNE, "1")
    at = _fwd_autotuner()
    at.run(torch.zeros(4), HEAD_DIM=128)
    assert key not in at.cache
    assert tuning.known_choices(env, "fwd", fa2.fwd_configs("hopper")) == {}
    assert tuning.lookup("fwd", key, fa2.fwd_configs("hopper")) is None


def test_the_users_choice_wins_over_the_shipped_one(as_on_the_h200):
    env, key, cfg, user = as_on_the_h200
    other = next(c for c in fa2.fwd_configs("hopper") if c is not cfg)
    tuning.remember("fwd", key, other)  # what a host-side tuner (decode) would store
    assert user.exists()
    at = _fwd_autotuner()
    at.run(torch.zeros(4), HEAD_DIM=128)
    assert at.cache[key] == other
    assert len(at.cache) == len(tuning.shipped_choices(env, "fwd", fa2.fwd_configs("hopper")))


def test_the_shipped_files_are_never_written(as_on_the_h200):
    env, key, cfg, _ = as_on_the_h200
    with pytest.raises(OSError, match="read-only"):
        tuning.store(env, "fwd", {key: cfg}, path=Path(str(tuning.shipped_files()[0])))
