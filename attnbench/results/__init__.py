"""Result rows: the schema by role (:mod:`.schema`), the atomic parquet store (:mod:`.store`)
and the environment every row carries (:mod:`.env`).

    from attnbench.results import json_row, load_results
    df = load_results("results/")      # one DataFrame, one row per result row, every run
    print(json_row(row))               # a row as one line of valid JSON (NaN as null)
"""

from . import schema as _schema
from .schema import STATUSES, row_schema
from .store import (
    NotResultsFile,
    ResultsWriteError,
    ResultsWriter,
    json_row,
    load_results,
    new_run_id,
    now_utc,
    read_results_file,
)

__all__ = [
    "COLUMNS",
    "SCHEMA",
    "STATUSES",
    "NotResultsFile",
    "ResultsWriteError",
    "ResultsWriter",
    "json_row",
    "load_results",
    "new_run_id",
    "now_utc",
    "read_results_file",
    "row_schema",
]


def __getattr__(name):  # SCHEMA, COLUMNS: computed from the problem registry when asked
    return getattr(_schema, name)
