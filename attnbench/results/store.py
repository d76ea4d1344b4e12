"""Tidy result rows in parquet: one file per command run, one schema for every row.

Rows are written as cases finish: the file is rewritten atomically (temp file + rename) after
each case, so an interrupted sweep keeps every finished row and the folder always reads with
``pandas.read_parquet("results/")``. Plots go to ``results/_plots`` because pyarrow skips paths
starting with ``_`` when it reads a folder.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import STATUSES, row_schema


def new_run_id(kind: str, suite: str) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in suite)
    return f"{now}-{kind}-{safe}-{secrets.token_hex(2)}"


class ResultsWriteError(OSError):
    """The results file could not be written (full or read-only disk); the file on disk still
    holds every row of the last successful write."""


class ResultsWriter:
    """Collects rows of one run and keeps ``<out>/<run_id>.parquet`` up to date. The file is
    written to a hidden temp file, synced, then renamed over the old one: it is never left
    zero-byte or half-written, and a failed write keeps the rows written before."""

    def __init__(self, out_dir: str | Path, run_id: str):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{run_id}.parquet"
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; run ids never repeat")
        self.rows: list[dict] = []
        self.n_written = 0  # rows in the file on disk

    @property
    def written(self) -> bool:
        return self.n_written > 0

    def add(self, rows: list[dict]) -> None:
        columns = set(row_schema().names)
        for r in rows:
            unknown = set(r) - columns
            if unknown:
                raise KeyError(f"columns not in the schema: {sorted(unknown)}")
            if r.get("status") not in STATUSES:
                raise ValueError(f"bad status {r.get('status')!r}")
        self.rows.extend(rows)
        self.flush()

    def flush(self) -> None:
        """Rewrite the whole file with every row so far, through a temporary file and an atomic
        rename: a crash (OOM kill, stuck rank, Ctrl-C) never leaves a truncated file and never
        loses a finished row. Parquet cannot be appended to; at today's sizes (hundreds to a few
        thousand rows per run, milliseconds to write) rewriting is cheaper than the bookkeeping
        of one file per case."""
        if not self.rows:
            return
        sch = row_schema()
        table = pa.Table.from_pylist(
            [{c: r.get(c) for c in sch.names} for r in self.rows], schema=sch
        )
        tmp = self.dir / f".{self.path.name}.tmp"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            kept = f"{self.n_written} rows kept in {self.path}" if self.n_written else "no rows"
            raise ResultsWriteError(
                f"cannot write results to {self.dir} ({e.strerror or e}); {kept}"
            ) from e
        self.n_written = len(self.rows)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def read_results_file(path: str | Path) -> pa.Table:
    """One results file as a table in the current schema: columns an older attnbench did not
    write are null, columns this one does not know are dropped. Raises on an unreadable file."""
    t = pq.read_table(path)
    sch = row_schema()
    cols = [
        t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type)
        for f in sch
    ]
    return pa.Table.from_arrays(cols, schema=sch)


def load_results(path: str | Path, warn=None):
    """Every run under ``path`` (a folder of ``*.parquet`` or one file) as one DataFrame.

    A file that is not readable parquet (zero bytes, truncated, not parquet at all) is skipped
    with a one-line warning through ``warn`` (default: printed on stderr), so one bad file never
    hides the good runs next to it. Raises FileNotFoundError when nothing readable is left.
    """
    import sys

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    files = [p] if p.is_file() else sorted(p.glob("*.parquet"))
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    tables = []
    for f in files:
        try:
            tables.append(read_results_file(f))
        except (OSError, pa.ArrowException, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            warn(f"skipping {f}: not a readable results file ({first})")
    if not files:
        raise FileNotFoundError(f"no results (*.parquet) in {p}")
    if not tables:
        raise FileNotFoundError(f"no readable results (*.parquet) in {p}")
    df = pa.concat_tables(tables).to_pandas()
    df["problem"] = df["problem"].fillna("attention")
    return df
