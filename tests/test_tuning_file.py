"""The committed H200 tuning choices (tools/gpu/tuning-h200.json, ``lease.sh --tuning``) are all
still candidates of the Hopper tables: a stored choice that is not is silently dropped, and the
GPU run it was meant to spare autotunes again (what happened when the split-band tiles changed
the piecewise tables)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnbench.kernels.piecewise import configs as pw
from attnbench.kernels.triton_fa2 import configs as fa2
from attnbench.kernels.triton_fa2.tuning import config_dict

FILE = Path(__file__).resolve().parents[1] / "tools" / "gpu" / "tuning-h200.json"
TABLES = {
    "fwd": fa2.fwd_configs,
    "bwd_dkdv": fa2.bwd_dkdv_configs,
    "bwd_dq": fa2.bwd_dq_configs,
    "piecewise_fwd": pw.fwd_configs,
    "piecewise_bwd_dkdv": pw.bwd_dkdv_configs,
    "piecewise_bwd_dq": pw.bwd_dq_configs,
}


def _entries():
    for env, kernels in json.loads(FILE.read_text()).items():
        for kernel, choices in kernels.items():
            yield env, kernel, choices


ENTRIES = list(_entries())


@pytest.mark.parametrize("env,kernel,choices", ENTRIES, ids=[k for _, k, _ in ENTRIES])
def test_every_stored_choice_is_a_hopper_candidate(env, kernel, choices):
    assert kernel in TABLES, f"{kernel}: no such tuned kernel"
    candidates = {json.dumps(config_dict(c), sort_keys=True) for c in TABLES[kernel]("hopper")}
    stale = [k for k, d in choices.items() if json.dumps(d, sort_keys=True) not in candidates]
    assert not stale, f"{env} {kernel}: {len(stale)} choices not in the table, e.g. {stale[0]}"
