"""A hostile user's pass over ``plot``, ``compare`` and ``list`` on a fresh clone (CPU only):
nothing lost, nothing silent, no tracebacks. Bad input is one ``error: ...`` line and exit 2.

A read-only folder and a read-only mount are real for a user who is not root; as root (CI
containers) the same refusal of the kernel is played by :func:`read_only`."""

from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SWEEP = """
name: hostile
warmup_ms: 1
rep_ms: 5
modes: [fwd]
cases:
  - {batch: 1, heads_q: 2, seqlen: [32, 64], head_dim: 16, dtype: fp32}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real CPU perf run of two backends at two lengths: (folder, parquet file)."""
    from typer.testing import CliRunner

    from attnbench.cli import app

    d = tmp_path_factory.mktemp("hostile")
    (d / "s.yaml").write_text(SWEEP)
    args = ["perf", "--sweep", str(d / "s.yaml"), "--device", "cpu", "--out", str(d / "r")]
    res = CliRunner().invoke(app, args + ["--only", "naive,sdpa_math"])
    assert res.exit_code == 0, res.output
    (f,) = (d / "r").glob("*.parquet")
    return d / "r", f


@pytest.fixture
def results(run, tmp_path):
    """A fresh copy of the run's folder (plots write next to the results)."""
    folder = tmp_path / "res"
    folder.mkdir()
    f = folder / run[1].name
    f.write_bytes(run[1].read_bytes())
    return folder


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder, errno.EACCES)`` makes ``folder`` refuse writes: chmod 0o500, and for
    root (whom the mode does not stop) a mkdir under it, or an open for writing of it (a temp
    file) or of a path under it, fails with that errno, as a read-only folder (EACCES) or mount
    (EROFS) answers. Reading is left alone."""
    made = []

    def make(folder: Path, code: int = errno.EACCES) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o500)
        made.append(folder)
        if os.geteuid() != 0:
            return folder
        inside = str(folder)

        def hit(path) -> bool:
            if not isinstance(path, (str, os.PathLike)):
                return False  # a file descriptor
            p = os.path.abspath(os.fspath(path))
            return p == inside or p.startswith(inside + os.sep)

        def refuse(real, writes):
            def call(path, *a, **kw):
                if hit(path) and writes(*a, **kw):
                    raise OSError(code, os.strerror(code), os.fspath(path))
                return real(path, *a, **kw)

            return call

        wflags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

        def os_writes(flags, *a, **kw):
            return bool(flags & wflags)

        def open_writes(mode="r", *a, **kw):
            return any(c in mode for c in "wax+")

        monkeypatch.setattr(os, "mkdir", refuse(os.mkdir, lambda *a, **kw: True))
        monkeypatch.setattr(os, "open", refuse(os.open, os_writes))
        monkeypatch.setattr(builtins, "open", refuse(builtins.open, open_writes))
        return folder

    yield make
    for f in made:
        f.chmod(0o700)


def error_line(res) -> str:
    """The run's whole output, asserted to be one ``error:`` line and no traceback."""
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


# ---- 1. plot: where the figures go ---------------------------------------------------------------
def test_plot_out_that_is_a_file(cli, results, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    res = cli("plot", results, "--out", f)
    assert res.exit_code == 2
    assert f"--out {f}: is a file, not a folder" in error_line(res)
    assert f.read_text() == "x"


def test_plot_out_read_only_folder(cli, results, tmp_path, read_only):
    ro = read_only(tmp_path / "ro")
    res = cli("plot", results, "--out", ro)
    assert res.exit_code == 2
    assert f"--out {ro}: not a writable folder" in error_line(res)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="no sysfs here")
def test_plot_out_under_sys(cli, results):
    res = cli("plot", results, "--out", "/sys/attnbench-plots")
    assert res.exit_code == 2
    assert "--out /sys/attnbench-plots: not a writable folder" in error_line(res)
    assert not Path("/sys/attnbench-plots").exists()


def test_plot_results_on_a_read_only_mount_suggests_out(cli, results, read_only):
    read_only(results, errno.EROFS)
    res = cli("plot", results)
    assert res.exit_code == 2
    line = error_line(res)
    assert f"cannot write plots to {results / '_plots'}" in line
    assert "Read-only file system" in line and "--out" in line


def test_plot_folder_holding_a_file_named__plots(cli, results):
    (results / "_plots").write_text("mine")
    res = cli("plot", results)
    assert res.exit_code == 2
    line = error_line(res)
    assert f"{results / '_plots'}: is a file, not a folder" in line and "--out" in line
    assert (results / "_plots").read_text() == "mine"


def test_plot_of_one_parquet_file_draws_next_to_it(cli, results):
    (f,) = results.glob("*.parquet")
    res = cli("plot", f)
    assert res.exit_code == 0, res.output
    figs = [Path(line) for line in res.stdout.splitlines()]
    assert figs and all(p.is_file() and p.parent == results / "_plots" / f.stem for p in figs)


# ---- 2. compare --plot: what is written, and where it cannot be ----------------------------------
@pytest.mark.parametrize(
    "where, msg",
    [
        ("FOLDER", "is a folder; give a file name"),
        ("speed.jpgx", "'.jpgx' is not a supported format: use .png, .pdf or .svg"),
        ("RO/speed.png", "cannot write there (Permission denied)"),
        ("/sys/attnbench-speed.png", "cannot write there"),
    ],
    ids=["existing-folder", "unsupported-extension", "read-only-folder", "under-sys"],
)
def test_compare_plot_that_cannot_be_written_is_a_usage_error(
    cli, run, tmp_path, read_only, where, msg
):
    folder, f = run
    if where.startswith("/sys") and not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    ro = read_only(tmp_path / "ro")
    target = where.replace("FOLDER", str(tmp_path)).replace("RO", str(ro))
    target = str(tmp_path / target) if where == "speed.jpgx" else target
    # exit 2, not the 1 a --threshold gate reads as "slower"
    res = cli("compare", f, f, "--threshold", "3%", "--plot", target)
    assert res.exit_code == 2
    assert f"--plot {target}: {msg}" in error_line(res)
    assert not list(tmp_path.glob("*.png"))


def test_compare_plot_without_a_suffix_prints_the_file_it_writes(cli, run, tmp_path):
    _, f = run
    res = cli("compare", f, f, "--plot", tmp_path / "speedplot")
    assert res.exit_code == 0, res.output
    (printed,) = [line for line in res.output.splitlines() if line.startswith("plot -> ")]
    png = tmp_path / "speedplot.png"
    assert printed == f"plot -> {png}" and png.stat().st_size > 5_000
    assert not (tmp_path / "speedplot").exists()


# ---- 3. compare: a zero or missing throughput ----------------------------------------------------
def _with_tflops(f: Path, out: Path, values: dict[int, float | None]) -> Path:
    """A copy of the results file ``f`` (its schema kept) with row i's tflops set to values[i]."""
    t = pq.read_table(f)
    tf = t.column("tflops").to_pylist()
    for i, v in values.items():
        tf[i] = v
    t = t.set_column(t.schema.get_field_index("tflops"), "tflops", pa.array(tf, pa.float64()))
    pq.write_table(t, out)
    return out


def test_zero_or_missing_throughput_gets_no_speedup(cli, run, tmp_path):
    _, f = run
    rows = pq.read_table(f).to_pandas()
    key = [f"{r.backend} {r['mode']} {r.case_id}" for _, r in rows.iterrows()]
    base = _with_tflops(f, tmp_path / "base.parquet", {0: 0.0})
    new = _with_tflops(f, tmp_path / "new.parquet", {1: 0.0, 2: None})
    res = cli("compare", base, new, "--json")
    assert res.exit_code == 0, res.output
    j = json.loads(res.stdout)
    assert sorted(j["no_speedup"]) == sorted(key[:3])
    speed = {f"{c['backend']} {c['mode']} {c['case_id']}": c["speedup"] for c in j["cases"]}
    assert [speed[k] for k in key[:3]] == [None, None, None] and speed[key[3]] == 1.0
    assert all(v == pytest.approx(1.0) for v in j["geomean_speedup"].values())
    res = cli("compare", base, new, "--threshold", "3%")
    assert res.exit_code == 0, res.output
    assert "3 pairs have no speedup" in " ".join(res.output.split())


# ---- 4. compare: a parquet file that is not results ----------------------------------------------
@pytest.mark.parametrize("side", ["base", "new"])
def test_compare_of_a_parquet_that_is_not_results_names_it(cli, run, tmp_path, side):
    _, f = run
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), other)
    args = (other, f) if side == "base" else (f, other)
    res = cli("compare", *args)
    assert res.exit_code == 2
    assert error_line(res).startswith(f"error: {other}: not an attnbench results file")


# ---- 5. list --device --------------------------------------------------------------------------
def test_list_refuses_a_device_that_is_not_cuda_or_cpu(cli):
    res = cli("list", "--device", "bogus")
    assert res.exit_code == 2
    assert "--device must be cuda or cpu, got 'bogus'" in error_line(res)
    for ok in ("cpu", "cuda"):  # cuda lists what would run there, GPU or not
        assert cli("list", "--device", ok).exit_code == 0
