"""Result rows: the schema by role (:mod:`.schema`), the atomic parquet store (:mod:`.store`)
and the environment every row carries (:mod:`.env`).

    from attnbench.results import load_results
    df = load_results("results/")      # one DataFrame, one row per result row, every run
"""

from . import schema as _schema
from .schema import STATUSES, row_schema
from .store import (
    ResultsWriteError,
    ResultsWriter,
    load_results,
    new_run_id,
    now_utc,
    read_results_file,
)

__all__ = [
    "COLUMNS",
    "SCHEMA",
    "STATUSES",
    "ResultsWriteError",
    "ResultsWriter",
    "load_results",
    "new_run_id",
    "now_utc",
    "read_results_file",
    "row_schema",
]


def __getattr__(name):  # SCHEMA, COLUMNS: computed from the problem registry when asked
    return getattr(_schema, name)
