"""Tidy result rows in parquet: one file per command run, one schema for every row.

Rows are written as cases finish: the file is rewritten atomically (temp file + rename) after
each case, so an interrupted sweep keeps every finished row and the folder always reads with
``pandas.read_parquet("results/")``. Plots go to ``results/_plots`` because pyarrow skips paths
starting with ``_`` when it reads a folder.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import STATUSES, required_columns, row_schema


def new_run_id(kind: str, suite: str) -> str:
    """``<UTC second>-<kind>-<suite>-<12 random hex digits>``: 48 random bits, so runs started in
    one second (a sweep split over jobs, two shells) never draw one id; the writer still refuses
    a file it did not create."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in suite)
    return f"{now}-{kind}-{safe}-{secrets.token_hex(6)}"


class ResultsWriteError(OSError):
    """The results file could not be written (full or read-only disk, folder gone, the name taken
    by another run); one line that says how many rows the file on disk still holds."""


# link(2) not supported where the results live (FAT, some network and FUSE file systems)
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV}


def _remove_quietly(path: Path) -> None:
    """Remove a file of this writer; a removal that fails (read-only remount, folder gone) is
    left alone: the error that led here is the one to report."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _ident(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class ResultsWriter:
    """Collects rows of one run and keeps ``<out>/<run_id>.parquet`` up to date. Each write goes
    to a temp file of its own (``.<name>.<pid>.<random>.tmp``), synced, then put in place: the
    first time by creating the name exclusively (a hard link, which fails when the name exists),
    later by renaming over the file this writer made. So the file is never left zero-byte or
    half-written, a failed write keeps the rows written before, and two runs that somehow share
    a run id never overwrite each other: the second one refuses with a ``ResultsWriteError``."""

    def __init__(self, out_dir: str | Path, run_id: str):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{run_id}.parquet"
        if self.path.exists():
            raise ResultsWriteError(
                f"cannot write results: {self.path} exists (run ids never repeat); left it alone"
            )
        self.rows: list[dict] = []
        self.n_written = 0  # rows in the file on disk
        self._mine: tuple[int, int] | None = None  # (device, inode) of the file written last

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
        """Rewrite the whole file with every row so far, through a temporary file put in place
        atomically: a crash (OOM kill, stuck rank, Ctrl-C) never leaves a truncated file and never
        loses a finished row, and an exception of any kind (Ctrl-C included) removes the temp
        file. Parquet cannot be appended to; at today's sizes (hundreds to a few thousand rows
        per run, milliseconds to write) rewriting is cheaper than the bookkeeping of one file per
        case. Raises :class:`ResultsWriteError` (one line) when the file cannot be written."""
        if not self.rows:
            return
        sch = row_schema()
        table = pa.Table.from_pylist(
            [{c: r.get(c) for c in sch.names} for r in self.rows], schema=sch
        )
        tmp = self.dir / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            f = open(tmp, "xb")  # a name of this writer alone; closed just below
            try:
                with f:
                    pq.write_table(table, f)
                    f.flush()
                    os.fsync(f.fileno())
                    ident = _ident(os.fstat(f.fileno()))
                self._place(tmp, ident)
            except BaseException:
                _remove_quietly(tmp)
                raise
        except ResultsWriteError:
            raise
        except OSError as e:
            raise ResultsWriteError(
                f"cannot write results to {self.dir} ({e.strerror or e}); {self._kept()}"
            ) from e
        self.n_written = len(self.rows)

    def _place(self, tmp: Path, ident: tuple[int, int]) -> None:
        """Put the synced ``tmp`` at ``self.path``: created exclusively unless the file there is
        the one this writer put there last."""
        try:
            there = _ident(os.stat(self.path))
        except FileNotFoundError:
            there = None
        if there is not None:
            if there != self._mine:
                raise ResultsWriteError(self._not_mine())
            os.replace(tmp, self.path)
            self._mine = ident
            return
        try:
            os.link(tmp, self.path)  # fails when the name exists: never replaces another's file
        except FileExistsError:
            raise ResultsWriteError(self._not_mine()) from None
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            self._place_without_links(tmp)
            self._mine = ident
            return
        self._mine = ident
        _remove_quietly(tmp)  # the file lives on under its name

    def _place_without_links(self, tmp: Path) -> None:
        """Claim the name with an exclusive create, then rename the temp file over the claim."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise ResultsWriteError(self._not_mine()) from None
        os.close(fd)
        try:
            os.replace(tmp, self.path)
        except BaseException:
            _remove_quietly(self.path)  # the empty claim made just above
            raise

    def _not_mine(self) -> str:
        if self._mine is None:
            return (
                f"cannot write results: {self.path} exists and is not this run's file (another "
                f"run with the same run id?); left it alone; no rows written"
            )
        return (
            f"cannot write results: {self.path} is not this run's file any more (replaced by "
            f"another program?); left it alone; the {self.n_written} rows written before are "
            f"no longer in it"
        )

    def _kept(self) -> str:
        """What the file on disk holds, for the message of a failed write."""
        if not self.n_written:
            return "no rows written"
        try:
            still = _ident(os.stat(self.path)) == self._mine
        except OSError:
            still = False
        if still:
            return f"{self.n_written} rows kept in {self.path}"
        return (
            f"the {self.n_written} rows written before are no longer in {self.path} (the file or "
            f"its folder was removed or replaced)"
        )


def _jsonable(v):
    import numpy as np
    import pandas as pd

    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (Mapping, pd.Series)):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset, np.ndarray)):
        return [_jsonable(x) for x in v]
    if pd.api.types.is_scalar(v) and pd.isna(v):  # NaN, NaT, pd.NA, numpy's NaN and NaT
        return None
    if isinstance(v, np.datetime64):
        return np.datetime_as_string(v)
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def json_row(row) -> str:
    """One result row (a dict, or a pandas row) as one line of valid JSON: NaN and infinities
    (JSON has none) and missing values (None, NaT, pd.NA) as null, datetimes as ISO 8601 strings
    (``2026-12-05T10:30:01.250000+00:00``), numpy values as plain numbers and lists."""
    return json.dumps(_jsonable(row), allow_nan=False)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class NotResultsFile(ValueError):
    """A readable parquet file that is not attnbench results (another tool's file): a required
    column missing, a null ``run_id``, or a column of the schema with a type it never had."""


def _compatible(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column typed ``have`` can read as the schema's ``want`` without changing meaning:
    wider ints and floats, ints as floats, floats as ints (a results file saved again by pandas:
    an int column with nulls comes back float; :func:`_whole_floats` checks their values), any
    string or dictionary of strings as a string, any timestamp, an all-null column."""
    t = pa.types
    if t.is_null(have):
        return True
    if t.is_dictionary(have):
        have = have.value_type
    if t.is_integer(want):
        return t.is_integer(have) or t.is_floating(have)
    if t.is_floating(want):
        return t.is_floating(have) or t.is_integer(have)
    if t.is_string(want) or t.is_large_string(want):
        return t.is_string(have) or t.is_large_string(have)
    if t.is_boolean(want):
        return t.is_boolean(have)
    if t.is_timestamp(want):
        return t.is_timestamp(have)
    if t.is_list(want):
        lists = t.is_list(have) or t.is_large_list(have) or t.is_fixed_size_list(have)
        return lists and _compatible(have.value_type, want.value_type)
    return have == want


def _whole_floats(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A float column as int64 (NaN as null) when every value is whole, else None."""
    col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
    if pc.all(pc.equal(pc.floor(col), col)).as_py() not in (True, None):
        return None
    try:
        return col.cast(pa.int64())
    except pa.ArrowInvalid:  # beyond int64
        return None


def check_results_table(t: pa.Table, schema: pa.Schema | None = None) -> None:
    """Raise :class:`NotResultsFile` (one line: why) unless ``t`` reads as results rows: every
    required column there, ``run_id`` on every row, every column of the schema it has of a
    compatible type. Columns an older attnbench did not write may be missing."""
    sch = schema or row_schema()
    missing = [c for c in required_columns() if c not in t.column_names]
    if missing:
        plural = "column" if len(missing) == 1 else "columns"
        raise NotResultsFile(f"not a results file: no {', '.join(missing)} {plural}")
    names = t.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise NotResultsFile(f"not a results file: column {twice[0]} appears more than once")
    bad = []
    for f in sch:
        if f.name not in names:
            continue
        have = t.schema.field(f.name).type
        if not _compatible(have, f.type):
            bad.append(f"{f.name} is {have}, not {f.type}")
        elif pa.types.is_integer(f.type) and pa.types.is_floating(have):
            if _whole_floats(t.column(f.name)) is None:
                bad.append(f"{f.name} holds fractions, not {f.type}")
    if bad:
        more = f" (and {len(bad) - 2} more)" if len(bad) > 2 else ""
        raise NotResultsFile(f"not a results file: column {'; '.join(bad[:2])}{more}")
    nulls = t.column("run_id").null_count
    if nulls:
        raise NotResultsFile(f"not a results file: run_id is null in {nulls} of {len(t)} rows")


def read_results_file(path: str | Path) -> pa.Table:
    """One results file as a table in the current schema: columns an older attnbench did not
    write are null, columns this one does not know are dropped. Raises on an unreadable file,
    :class:`NotResultsFile` on a parquet file that is not results (:func:`check_results_table`)."""
    t = pq.read_table(path)
    sch = row_schema()
    check_results_table(t, sch)
    cols = []
    for f in sch:
        if f.name not in t.column_names:
            cols.append(pa.nulls(len(t), f.type))
            continue
        col = t.column(f.name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_integer(f.type) and pa.types.is_floating(col.type):
            col = _whole_floats(col)  # whole numbers, checked above: ints read as ints
        # a timestamp of another unit or zone: the instant, to the schema's microseconds
        col = col.cast(f.type, safe=not pa.types.is_timestamp(f.type))
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=sch)


def load_results(path: str | Path, warn=None):
    """Every run under ``path`` (a folder of ``*.parquet`` or one file) as one DataFrame.

    A file that is not readable parquet (zero bytes, truncated, not parquet at all) or not
    results (another tool's parquet file: no ``run_id``, ``backend`` or ``status`` column, a null
    ``run_id``, a float where the schema has an int) is skipped with a one-line warning through
    ``warn`` (default: printed on stderr) that names it and says why, so one bad file never hides
    or spoils the good runs next to it. Raises FileNotFoundError when nothing readable is left.
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
        except NotResultsFile as e:
            warn(f"skipping {f}: {e}")
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
