"""The run driver shared by ``attnbench accuracy|perf`` and ``attnbench dist accuracy|perf``
(:mod:`attnbench.run.session`): no typer inside, its errors and its accounting line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attnbench.run import session as s


def test_driver_does_not_import_typer():
    code = (
        "import sys, attnbench.run.session, attnbench.distributed.driver; "
        "print(sorted(m for m in sys.modules if m.startswith('typer')))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: s.split_list(" , ", "--only"), "--only given an empty list"),
        (lambda: s.parse_dtypes("fp8"), "--dtype 'fp8' unknown"),
        (lambda: s.parse_modes("sideways"), "--modes 'sideways' unknown"),
        (lambda: s.check_device("tpu"), "--device must be cuda or cpu"),
        (lambda: s.run(s.Request("perf", "seqlen", repeat=0)), "--repeat must be >= 1, got 0"),
    ],
    ids=["empty-list", "dtype", "modes", "device", "repeat"],
)
def test_usage_errors_are_run_errors_with_code_2(call, message):
    with pytest.raises(s.RunError) as e:
        call()
    assert e.value.code == 2 and message in e.value.message


class _Writer:
    written, n_written, path = True, 4, "out/x.parquet"


class _Ctx:
    writer = _Writer()

    def __init__(self, rows):
        self.rows = rows


def test_accounting_counts_a_distributed_timing_once():
    """Per-rank rows time what their group row times, at the same time; the single-device
    baselines (``strategy=single``) are timed on their own and their S/P cases are no cases of
    the run."""
    base = {"backend": "naive", "case_id": "c1"}
    rows = [
        {**base, "strategy": "ring", "rank": 0, "wall_s": 1.0},
        {**base, "strategy": "ring", "rank": 1, "wall_s": 1.5},
        {**base, "strategy": "ring", "rank": None, "wall_s": 1.5},
        {**base, "strategy": "single", "rank": 0, "wall_s": 0.5},
        {**base, "case_id": "c1-share", "strategy": "single", "rank": 0, "wall_s": 0.25},
    ]
    sess = s.Session()
    sess.ctx = _Ctx(rows)
    line = sess.accounting()
    assert line.startswith("(1 cases, wall ") and "of which 2.2 s in timing calls" in line
    assert sess.kept() == "4 finished rows kept in out/x.parquet"


def test_drive_turns_ctrl_c_into_130_with_what_was_kept():
    sess = s.Session()
    sess.ctx = _Ctx([])

    def loop():
        raise KeyboardInterrupt

    with pytest.raises(s.RunError) as e:
        sess.drive(loop)
    assert e.value.code == 130
    assert e.value.message.startswith("interrupted: 4 finished rows kept in out/x.parquet  (0")
