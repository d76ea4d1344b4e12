"""The results store: nothing lost (run ids, temp files, exclusive files), nothing silent (files
that are not results are skipped with a warning), no tracebacks (one ``ResultsWriteError`` line),
and rows as valid JSON."""

import datetime as dt
import json
import math
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnbench.results import ResultsWriteError, ResultsWriter, load_results, new_run_id
from attnbench.results import store as store_mod


def row(run_id: str, i: int, backend: str = "naive") -> dict:
    return {
        "run_id": run_id,
        "kind": "perf",
        "backend": backend,
        "status": "ok",
        "head_dim": 64,
        "seqlen_q": i,
    }


def on_disk(path) -> list[tuple[str, int]]:
    t = pq.read_table(path, columns=["backend", "seqlen_q"]).to_pylist()
    return sorted((r["backend"], r["seqlen_q"]) for r in t)


def claims_hold(*writers: ResultsWriter) -> None:
    """Every writer that says it wrote rows finds exactly its rows in its file."""
    for w in writers:
        if w.n_written:
            mine = sorted((r["backend"], r["seqlen_q"]) for r in w.rows[: w.n_written])
            assert on_disk(w.path) == mine, f"{w.rows[0]['backend']}: its file holds other rows"


# ---- 1. loss: two runs with one run id ----------------------------------------------------------
def test_run_ids_do_not_repeat_in_one_second():
    ids = [new_run_id("perf", "suite") for _ in range(3000)]
    assert len(set(ids)) == len(ids)


def test_two_writers_with_one_run_id_never_lose_rows_silently(tmp_path):
    rid = "same"  # what two runs started in one second once drew (2 random bytes)
    a, b = ResultsWriter(tmp_path, rid), ResultsWriter(tmp_path, rid)  # both before any write
    a.add([row(rid, 1, "a")])
    with pytest.raises(ResultsWriteError) as e:
        b.add([row(rid, 1, "b")])
    msg = str(e.value)
    assert "\n" not in msg and "exists" in msg and str(b.path) in msg and "no rows" in msg
    a.add([row(rid, 2, "a")])  # the first writer still rewrites its own file
    with pytest.raises(ResultsWriteError):
        b.add([row(rid, 2, "b")])
    assert b.n_written == 0 and on_disk(a.path) == [("a", 1), ("a", 2)]
    claims_hold(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.parquet"]  # no temp file left


def test_two_writers_interleaved_inside_one_write(tmp_path, monkeypatch):
    """The second run writes while the first is in the middle of writing its temp file (the
    shared temp name once mixed them up): one of them refuses, the other's file is its own."""
    rid = "same"
    a, b = ResultsWriter(tmp_path, rid), ResultsWriter(tmp_path, rid)
    real, errors = pq.write_table, []

    def meanwhile_b_writes(table, where, **kw):
        real(table, where, **kw)
        if not b.rows:
            try:
                b.add([row(rid, 7, "b"), row(rid, 8, "b")])
            except ResultsWriteError as e:
                errors.append(e)

    monkeypatch.setattr(pq, "write_table", meanwhile_b_writes)
    try:
        a.add([row(rid, 1, "a")])
    except ResultsWriteError as e:
        errors.append(e)
    monkeypatch.setattr(pq, "write_table", real)
    assert len(errors) == 1 and (a.n_written == 0) != (b.n_written == 0)
    claims_hold(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["same.parquet"]


def test_without_hard_links_the_name_is_still_claimed_exclusively(tmp_path, monkeypatch):
    import errno

    def no_links(*a, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(store_mod.os, "link", no_links)  # FAT, some network file systems
    a, b = ResultsWriter(tmp_path, "same"), ResultsWriter(tmp_path, "same")
    a.add([row("same", 1, "a")])
    a.add([row("same", 2, "a")])
    with pytest.raises(ResultsWriteError, match="exists and is not this run's file"):
        b.add([row("same", 1, "b")])
    claims_hold(a, b)
    assert on_disk(a.path) == [("a", 1), ("a", 2)]
    assert [p.name for p in tmp_path.iterdir()] == ["same.parquet"]


def test_a_writer_never_replaces_a_file_it_did_not_write(tmp_path):
    w = ResultsWriter(tmp_path, "r")
    w.add([row("r", 1)])
    pq.write_table(pa.table({"run_id": ["other"]}), tmp_path / "x.parquet")
    (tmp_path / "x.parquet").replace(w.path)  # another program put its file there
    with pytest.raises(ResultsWriteError) as e:
        w.add([row("r", 2)])
    assert "\n" not in str(e.value) and "not this run's file" in str(e.value)
    assert pq.read_table(w.path).column_names == ["run_id"]  # left alone


# ---- 2. tracebacks -> one line -------------------------------------------------------------------
def test_folder_replaced_by_a_file_mid_run_is_one_line(tmp_path):
    out = tmp_path / "res"
    w = ResultsWriter(out, "r")
    w.add([row("r", 1)])
    shutil.rmtree(out)
    out.write_text("not a folder")
    with pytest.raises(ResultsWriteError) as e:
        w.add([row("r", 2)])
    msg = str(e.value)
    assert "\n" not in msg and "1 rows" in msg and str(out) in msg
    assert w.n_written == 1 and out.read_text() == "not a folder"


def test_cleanup_that_fails_too_is_still_one_line(tmp_path, monkeypatch):
    """A read-only remount: the write fails and so does removing the temp file."""
    import errno

    w = ResultsWriter(tmp_path, "r")
    w.add([row("r", 1)])

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(pq, "write_table", read_only)
    monkeypatch.setattr(store_mod.os, "unlink", read_only)
    monkeypatch.setattr(store_mod.Path, "unlink", read_only)
    with pytest.raises(ResultsWriteError) as e:
        w.add([row("r", 2)])
    msg = str(e.value)
    assert "\n" not in msg and "Read-only file system" in msg and f"1 rows kept in {w.path}" in msg


def test_ctrl_c_inside_a_write_leaves_no_temp_file(tmp_path, monkeypatch):
    w = ResultsWriter(tmp_path, "r")
    w.add([row("r", 1)])
    real = pq.write_table

    def interrupted(table, where, **kw):
        real(table.slice(0, 1), where, **kw)  # part of the file is out
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        w.add([row("r", 2)])
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]
    assert on_disk(w.path) == [("naive", 1)] and w.n_written == 1


# ---- 3. silent -> refused: files that are not results --------------------------------------------
def _good_run(out):
    w = ResultsWriter(out, "good")
    w.add([row("good", 32), row("good", 64)])


@pytest.mark.parametrize(
    "table, why",
    [
        (pa.table({"backend": ["x"], "status": ["ok"], "head_dim": [64.0]}), "no run_id column"),
        (pa.table({"run_id": ["o"], "kind": ["perf"], "status": ["ok"]}), "no backend column"),
        (
            pa.table({"run_id": [None, "o"], "backend": ["x", "x"], "status": ["ok", "ok"]}),
            "run_id is null",
        ),
        (
            pa.table({"run_id": ["o"], "backend": ["x"], "status": ["ok"], "head_dim": [64.5]}),
            "head_dim holds fractions",
        ),
        (
            pa.table({"run_id": ["o"], "backend": ["x"], "status": ["ok"], "causal": ["yes"]}),
            "causal is string, not bool",
        ),
        (pa.table({"run_id": [1], "backend": ["x"], "status": ["ok"]}), "run_id"),
    ],
    ids=["no-run-id", "no-backend", "null-run-id", "half-head-dim", "str-causal", "int-run-id"],
)
def test_files_of_other_tools_are_skipped_with_one_warning(tmp_path, table, why):
    _good_run(tmp_path)
    pq.write_table(table, tmp_path / "other.parquet")
    warnings = []
    df = load_results(tmp_path, warn=warnings.append)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "other.parquet" in warnings[0] and "not a results file" in warnings[0]
    assert why in warnings[0]
    assert set(df.run_id) == {"good"} and df.head_dim.dtype == np.int64  # ints stay ints
    assert sorted(df.seqlen_q) == [32, 64]


def test_one_file_that_is_not_results_is_refused(tmp_path):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "other.parquet")
    warnings = []
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "other.parquet", warn=warnings.append)
    why = "not a results file: no run_id, backend, status columns"
    assert warnings == [f"skipping {tmp_path / 'other.parquet'}: {why}"]


def test_old_and_compatible_files_still_load(tmp_path):
    _good_run(tmp_path)
    pq.write_table(  # an old attnbench file: fewer columns, no problem, int32 written by hand
        pa.table(
            {
                "run_id": ["old"],
                "kind": ["accuracy"],
                "backend": pa.array(["naive"]).dictionary_encode(),
                "status": ["ok"],
                "problem": pa.nulls(1, pa.string()),
                "head_dim": pa.array([128], pa.int32()),
                "latency_ms": pa.array([1], pa.int64()),
                "message": pa.nulls(1),
            }
        ),
        tmp_path / "old.parquet",
    )
    warnings = []
    df = load_results(tmp_path, warn=warnings.append)
    assert warnings == [] and set(df.run_id) == {"good", "old"}
    assert df.head_dim.dtype == np.int64 and sorted(df.head_dim) == [64, 64, 128]
    assert (df.problem == "attention").all()


def test_a_results_file_saved_again_by_pandas_still_loads(tmp_path):
    """pandas reads an int column with nulls as float and writes it back so: whole numbers read
    as ints again."""
    _good_run(tmp_path)
    df = pd.read_parquet(tmp_path / "good.parquet")
    assert df.world_size.dtype == np.float64  # null in every row
    df.loc[0, "latency_ms"] = float("nan")
    df.assign(run_id="again", batch=[1.0, float("nan")]).to_parquet(tmp_path / "again.parquet")
    warnings = []
    both = load_results(tmp_path, warn=warnings.append)
    assert warnings == [] and set(both.run_id) == {"good", "again"}
    assert both.head_dim.dtype == np.int64 and both.batch.isna().sum() == 3


# ---- json_row ------------------------------------------------------------------------------------
def _strict(s: str):
    def no_constant(c):
        raise ValueError(f"invalid JSON constant {c}")

    return json.loads(s, parse_constant=no_constant)


def test_json_row_is_valid_json():
    t = dt.datetime(2026, 12, 5, 10, 30, 1, 250000, tzinfo=dt.timezone.utc)
    r = {
        "run_id": "r",
        "latency_ms": float("nan"),
        "tflops": float("inf"),
        "gbps": -math.inf,
        "flops": np.float32("nan"),
        "reps": np.int64(3),
        "accuracy_ok": np.bool_(True),
        "timestamp": t,
        "pd_time": pd.Timestamp(t),
        "missing": pd.NaT,
        "na": pd.NA,
        "seqlens": np.array([1, 2]),
        "nested": {"x": [1.5, float("nan")]},
        "message": None,
    }
    s = store_mod.json_row(r)
    assert "\n" not in s
    d = _strict(s)
    assert d["latency_ms"] is None and d["tflops"] is None and d["gbps"] is None
    assert d["flops"] is None and d["reps"] == 3 and d["accuracy_ok"] is True
    assert d["timestamp"] == "2026-12-05T10:30:01.250000+00:00" == d["pd_time"]
    assert d["missing"] is None and d["na"] is None and d["message"] is None
    assert d["seqlens"] == [1, 2] and d["nested"] == {"x": [1.5, None]}
    with pytest.raises(ValueError):
        _strict(json.dumps(r, default=str))  # what plain json.dumps writes is not JSON


def test_json_row_of_a_loaded_row(tmp_path):
    _good_run(tmp_path)
    df = load_results(tmp_path)
    for _, r in df.iterrows():  # a pandas row: NaN for every empty float column
        d = _strict(store_mod.json_row(r))
        assert d["run_id"] == "good" and d["tflops"] is None and d["head_dim"] == 64
        assert d["timestamp"] is None
