"""A hostile user's pass on a fresh clone, CPU only ("Nothing lost, nothing silent, no
tracebacks"): bad input is one clear line and exit 2, never a traceback; nothing is silently
wrong (a filter that filters nothing, a value read as another, a path that is not the one given).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from attnbench.problems.attention import AttentionCase as Case
from attnbench.run.config import ConfigError, load_config
from attnbench.run.runner import classify
from attnbench.run.session import RunError, check_out_dir, where_cases
from attnbench.run.where import keep, parse_where

TINY = (
    "name: tiny\ncases:\n  - {batch: 1, heads_q: 1, head_dim: 16, seqlen: [32, 64], dtype: fp32}\n"
)


@pytest.fixture
def tiny(tmp_path) -> Path:
    f = tmp_path / "tiny.yaml"
    f.write_text(TINY)
    return f


def one_error_line(output: str) -> str:
    """The output is one ``error: ...`` line (and no traceback); that line."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def attnbench(*args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m attnbench ARGS`` in a real process (what a terminal runs)."""
    return subprocess.run(
        [sys.executable, "-m", "attnbench", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


CASES = [
    Case(1, 2, 2, s, s, 32, "fp32", causal) for s in (96, 128, 512) for causal in (False, True)
]


# ---- 1. --where -------------------------------------------------------------------------------
def test_where_given_twice_applies_both_on_the_command_line(tiny, tmp_path):
    r = attnbench(
        "accuracy", "--suite", tiny, "--device", "cpu", "--only", "naive", "--out", tmp_path / "r",
        "--where", "seqlen=32", "--where", "seqlen=64",
    )  # fmt: skip
    # both hold for no case: the last alone (seqlen=64) would have run one
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no cases to run" in one_error_line(r.stderr) and "seqlen=32,seqlen=64" in r.stderr


def test_where_conditions_given_as_a_list_all_apply_and_the_count_is_said():
    said = []
    kept = where_cases(CASES, ["seqlen>=128", "causal=true"], [Case], said.append)
    assert {(c.seqlen_q, c.causal) for c in kept} == {(128, True), (512, True)}
    assert said == ["--where: 2 of 6 cases"]


@pytest.mark.parametrize(
    "text", ["seqlen>=96|1000", "seqlen<=96|1000", "seqlen>96|1000", "seqlen<96|1000"]
)
def test_where_bar_after_a_comparison_is_refused(text):
    with pytest.raises(ValueError, match=r"\| \(any of\) goes with = or != only"):
        parse_where(text, [Case])


def test_where_not_equal_with_bar_is_none_of_them():
    kept = keep(CASES, parse_where("seqlen!=96|128", [Case]))
    assert {c.seqlen_q for c in kept} == {512}


@pytest.mark.parametrize("text", [",", " ", ""], ids=["comma", "space", "empty"])
def test_where_holding_no_condition_is_refused(cli, tiny, tmp_path, text):
    r = cli(
        "accuracy", "--suite", tiny, "--device", "cpu", "--only", "naive", "--out", tmp_path / "r",
        "--where", text,
    )  # fmt: skip
    assert r.exit_code == 2
    assert "leave it out to run every case" in one_error_line(r.output)
    assert not (tmp_path / "r").exists()


def test_where_says_how_many_cases_it_selected(cli, tiny, tmp_path):
    r = cli(
        "accuracy", "--suite", tiny, "--device", "cpu", "--only", "naive", "--out", tmp_path / "r",
        "--where", "seqlen=32",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "--where: 1 of 2 cases" in r.output


# ---- 2. paths that are too long, too deep, or not files ---------------------------------------
@pytest.mark.parametrize("suffix", [".yaml", ""], ids=["file", "name"])
def test_overlong_suite_path_is_one_line(cli, tmp_path, suffix):
    r = cli("accuracy", "--suite", "x" * 300 + suffix, "--device", "cpu", "--out", tmp_path / "r")
    assert r.exit_code == 2
    assert "File name too long" in one_error_line(r.output)


@pytest.mark.parametrize("out", ["x" * 300, "a/" + "x" * 300 + "/b"], ids=["name", "inner"])
def test_overlong_out_path_is_one_line(cli, tiny, tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    r = cli("accuracy", "--suite", tiny, "--device", "cpu", "--only", "naive", "--out", out)
    assert r.exit_code == 2
    assert "File name too long" in one_error_line(r.output)


def test_yaml_nested_20000_deep_is_one_line_naming_the_file(cli, tmp_path):
    f = tmp_path / "deep.yaml"
    f.write_text("name: deep\ncases: " + "[" * 20000 + "]" * 20000 + "\n")
    r = cli("accuracy", "--suite", f, "--device", "cpu", "--out", tmp_path / "r")
    assert r.exit_code == 2
    line = one_error_line(r.output)
    assert "deep.yaml" in line and "nested too deep" in line


def test_suite_dev_null_is_not_a_regular_file(cli, tmp_path):
    r = cli("accuracy", "--suite", "/dev/null", "--device", "cpu", "--out", tmp_path / "r")
    assert r.exit_code == 2
    line = one_error_line(r.output)
    assert "/dev/null: not a regular file" in line and "folder" not in line


def test_suite_fifo_is_not_a_regular_file_and_does_not_block(tmp_path):
    fifo = tmp_path / "suite.yaml"
    os.mkfifo(fifo)
    got = []
    t = threading.Thread(target=lambda: got.append(_config_error(fifo)), daemon=True)
    t.start()
    t.join(timeout=30)
    if t.is_alive():  # it opened the FIFO: give it a writer so the thread ends, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("--suite FIFO blocked reading it")
    assert "not a regular file" in got[0] and "folder" not in got[0]


def _config_error(path) -> str:
    try:
        load_config(str(path))
    except ConfigError as e:
        return str(e)
    return "loaded"


# ---- 3. Ctrl-C at startup, and a terminal that is not UTF-8 -----------------------------------
def test_ctrl_c_while_importing_is_one_line_and_130(tmp_path, tiny):
    # a module the command line imports at startup, interrupted as a Ctrl-C there would
    fake = tmp_path / "fake"
    (fake / "pyarrow").mkdir(parents=True)
    (fake / "pyarrow" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    r = attnbench(
        "accuracy", "--suite", tiny, "--device", "cpu", "--out", tmp_path / "r",
        env={"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip
    assert r.returncode == 130
    assert "interrupted (Ctrl-C)" in one_error_line(r.stderr)


def test_ctrl_c_in_a_command_before_any_run_is_one_line_and_130(tmp_path):
    # plot imports its plotting code when it starts: a Ctrl-C there (typer alone exits 130
    # without a word)
    code = textwrap.dedent(
        """
        import sys
        import attnbench.views.plot as plot
        from attnbench.cli import main

        def interrupted(*a, **k):
            raise KeyboardInterrupt

        plot.make_plots = interrupted
        sys.argv = ["attnbench", "plot", sys.argv[1]]
        main()
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 130
    assert "interrupted (Ctrl-C)" in one_error_line(r.stderr)


def test_real_ctrl_c_in_the_first_second_is_no_traceback(tmp_path, tiny):
    p = subprocess.Popen(
        [sys.executable, "-m", "attnbench", "accuracy", "--suite", "basic", "--device", "cpu"]
        + ["--out", str(tmp_path / "r")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    # 130, or ended by SIGINT itself (a shell says 130 too) where Python does so after an
    # interrupt that escaped generated code (dataclasses) once the imports were done
    assert p.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and "interrupted" in one_error_line(err)


def test_ascii_terminal_and_a_non_ascii_out_path_do_not_crash(tiny, tmp_path):
    out = tmp_path / "résultats"
    r = attnbench(
        "accuracy", "--suite", tiny, "--device", "cpu", "--only", "naive", "--out", out,
        "--where", "seqlen=32", env={"PYTHONIOENCODING": "ascii"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "r?sultats" in r.stdout
    assert list(out.glob("*.parquet"))


def test_what_an_ascii_terminal_cannot_show_has_an_ascii_look_alike():
    import attnbench.run.session  # noqa: F401  (registers the error handler)

    assert "naive · B1 — 3×4 é".encode("ascii", "attnbench-ascii") == b"naive . B1 - 3x4 ?"


# ---- 4. --out that is empty, or starts with ~ --------------------------------------------------
def test_empty_out_is_refused_not_the_current_folder(cli, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("accuracy", "--suite", tiny, "--device", "cpu", "--only", "naive", "--out", "")
    assert r.exit_code == 2
    assert "--out given an empty path" in one_error_line(r.output)
    assert not list(tmp_path.glob("*.parquet"))
    with pytest.raises(RunError, match="empty path"):
        check_out_dir("")


def test_out_tilde_is_the_home_folder(cli, tiny, tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    r = cli(
        "accuracy", "--suite", tiny, "--device", "cpu", "--only", "naive", "--out", "~/res",
        "--where", "seqlen=32",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert list((home / "res").glob("*.parquet")) and not (cwd / "~").exists()
    assert check_out_dir("~/other") == home / "other"


# ---- 5. config values read as something else ---------------------------------------------------
GRID = "{batch: 1, heads_q: 2, seqlen: 8, head_dim: 8}"


def _bad(tmp_path, text: str) -> str:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(str(f))
    return str(ei.value)


@pytest.mark.parametrize(
    "grid, expected",
    [
        ("{batch: true, heads_q: 2, seqlen: 8, head_dim: 8}", "cases.0.batch: "),
        ("{batch: 1, heads_q: 2, seqlen: [8, false], head_dim: 8}", "cases.0.seqlen: "),
        ("{batch: 1, heads_q: 2, seqlen: 8, head_dim: '8'}", "cases.0.head_dim: "),
        ("{batch: 1, heads_q: 2, seqlen: 8, head_dim: 8, softmax_scale: true}", "softmax_scale"),
    ],
    ids=["bool-batch", "bool-in-list", "string-head-dim", "bool-float"],
)
def test_a_boolean_or_string_where_a_number_is_due_is_refused(tmp_path, grid, expected):
    msg = _bad(tmp_path, f"name: x\ncases:\n  - {grid}\n")
    assert expected in msg and ("not a boolean" in msg or "not a string" in msg)


def test_model_dim_not_a_multiple_of_head_dim_is_refused(tmp_path):
    msg = _bad(
        tmp_path, "name: x\ncases:\n  - {batch: 1, model_dim: 100, head_dim: 64, seqlen: 8}\n"
    )
    assert "cases.0: model_dim 100 is not a multiple of head_dim 64" in msg


def test_tokens_fewer_than_a_sequence_is_refused(tmp_path):
    msg = _bad(
        tmp_path, "name: x\ncases:\n  - {tokens: 100, heads_q: 1, head_dim: 8, seqlen: 128}\n"
    )
    assert "cases.0: tokens 100 is fewer than the 128 of one sequence" in msg


# ---- 6. error paths --------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["stride", "intercept", "boolean_mask", "floats", "function"])
def test_keys_that_start_like_type_names_keep_their_path(tmp_path, key):
    msg = _bad(
        tmp_path,
        f"name: x\ncases:\n  - {{batch: 1, heads_q: 2, seqlen: 8, head_dim: 8, {key}: 2}}\n",
    )
    assert f"cases.0.{key}: Extra inputs are not permitted" in msg


def test_union_member_tags_stay_out_of_the_path(tmp_path):
    msg = _bad(tmp_path, f"name: x\ncases:\n  - {GRID[:-1]}, dtype: 3}}\n")
    assert "cases.0.dtype: Input should be a valid" in msg and "dtype.str" not in msg


def test_dist_config_given_to_accuracy_says_run_it_with_dist(cli, tmp_path):
    r = cli("accuracy", "--suite", "dist", "--device", "cpu", "--out", tmp_path / "r")
    assert r.exit_code == 2
    assert (
        "dist.yaml is a distributed config; run it with attnbench dist accuracy --suite dist"
        in one_error_line(r.output)
    )


# ---- 7. out of memory on the CPU -------------------------------------------------------------
@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate "
            "memory)"
        ),
        MemoryError(),
    ],
    ids=["cpu-allocator", "MemoryError"],
)
def test_cpu_out_of_memory_is_oom_not_error(exc):
    status, msg = classify(exc)
    assert status == "oom" and msg.startswith("out of memory")
