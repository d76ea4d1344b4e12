"""The one row schema, by role. Every command writes rows of this schema and every view (tables,
plots, ``compare``, ``plot --merge``) takes its keys from here:

- ``RUN``: which run, command and backend a row belongs to, and the run's non-default settings;
- ``ENVIRONMENT``: the machine and software (two runs are comparable or mergeable only where
  these agree); ``PROVENANCE``: the attnbench version and commit, the time;
- ``CASE``: ``problem``, ``case_id`` and every case field of every registered problem, derived
  from the problems' case types (:meth:`attnbench.problems.base.Case.columns`), so a new field
  or a new problem cannot be forgotten by a view;
- ``VERDICT``: the status and the accuracy of the row; ``METRIC``: what was timed;
  ``CEILING``: what the GPU was measured to reach in the run, and its telemetry.

``row_schema()`` and the module attributes ``SCHEMA``, ``COLUMNS`` and ``CASE`` are computed from the
problem registry when asked, so a problem registered later has its columns.
"""

from __future__ import annotations

import pyarrow as pa

STATUSES = ("ok", "unsupported", "oom", "error", "accuracy_failed")

RUN = [
    ("run_id", pa.string()),
    ("kind", pa.string()),  # accuracy | perf | dist_accuracy | dist_perf
    ("suite", pa.string()),
    ("backend", pa.string()),
    ("mode", pa.string()),  # fwd | bwd | fwd_bwd (accuracy rows: fwd or fwd_bwd)
    ("settings", pa.string()),  # the run's non-default settings, JSON (attnbench.run.settings)
    ("repro", pa.string()),  # the attnbench command that runs this case and backend again
    ("strategy", pa.string()),  # distributed runs
    ("world_size", pa.int64()),
    ("rank", pa.int64()),
]
VERDICT = [
    ("status", pa.string()),
    ("message", pa.string()),
    ("tensor", pa.string()),  # accuracy rows: out | lse | the problem's gradients; perf rows: null
    # accuracy rows: of the tensor; perf rows: of out, from the same-case check
    ("max_abs_err", pa.float64()),
    ("mean_abs_err", pa.float64()),
    # accuracy rows: same-dtype torch's error of the tensor against the same reference
    ("baseline_max_abs_err", pa.float64()),
    ("baseline_mean_abs_err", pa.float64()),
    ("accuracy_ok", pa.bool_()),
    # accuracy rows, every backend: fp64 against the same reference (attnbench.run.check);
    # perf rows: of out, from the same-case check
    ("cos_sim", pa.float64()),  # sum(x r) / sqrt(sum x^2 sum r^2)
    ("rel_l1", pa.float64()),  # sum |x - r| / sum |r|
    ("rmse", pa.float64()),  # sqrt(mean (x - r)^2)
    # accuracy rows: the rule that graded the tensor, "exact" or the backend's lossy precision
    # (fp8, int8, ...: cos_sim and rel_l1 tolerances, attnbench.rule); perf rows: the backend's
    # declared precision
    ("precision", pa.string()),
    # lossy rows: the limits of the rule that graded them (a config's ``lossy:`` included; perf
    # rows: out's); null on exact rows
    ("tol_cos_sim", pa.float64()),
    ("tol_rel_l1", pa.float64()),
]
METRIC = [
    ("latency_ms", pa.float64()),
    ("latency_ms_p20", pa.float64()),
    ("latency_ms_p80", pa.float64()),
    ("flops", pa.float64()),
    ("tflops", pa.float64()),
    ("bytes", pa.float64()),  # least memory traffic of the mode (the problem's byte count)
    ("gbps", pa.float64()),  # bytes / median time
    # dist_perf slowest-rank rows: single-device(S) / (P x time), and P x single(S/P) / time
    # (ring-flash-attention's "theoretic" baseline)
    ("efficiency", pa.float64()),
    ("efficiency_share", pa.float64()),
    ("reps", pa.int64()),  # timed reps of the timing
    # --repeat N: N timings of the case; min/max of their medians, (max - min) / median
    ("repeats", pa.int64()),
    ("latency_ms_min", pa.float64()),
    ("latency_ms_max", pa.float64()),
    ("repeat_spread", pa.float64()),
    ("pct_of_peak", pa.float64()),  # 100 x tflops / matmul_tflops
    ("pct_of_bw", pa.float64()),  # 100 x gbps / bw_gbps
    ("kernel_config", pa.string()),  # what a choosing backend ran (Triton config, SDPA kernel)
    ("peak_mem_mb", pa.float64()),
    # wall ms of the backend's untimed per-call preparation (packing, block tables, a plan)
    ("plan_ms", pa.float64()),
    # perf rows of a lossy backend that quantizes in prepare(): median ms of that quantization,
    # timed apart by the same timer (Backend.quant_fn); null otherwise
    ("quant_ms", pa.float64()),
    ("wall_s", pa.float64()),
    # perf rows: wall time of the backend's first call on the case (fwd+bwd when it times a
    # backward), untimed: compiles, autotuning, JIT, extension builds
    ("first_call_s", pa.float64()),
]
ENVIRONMENT = [
    ("device", pa.string()),
    ("gpu_name", pa.string()),
    ("cpu_name", pa.string()),
    ("torch_version", pa.string()),
    ("cuda_version", pa.string()),
    ("triton_version", pa.string()),
    ("flash_attn_version", pa.string()),
    ("flash_attn_4_version", pa.string()),
]
PROVENANCE = [
    ("attnbench_version", pa.string()),
    ("git_sha", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
]
CEILING = [
    # measured at the start of a GPU perf run (attnbench/run/ceiling.py), same on every row
    ("matmul_tflops", pa.float64()),  # dense matmul of the row's dtype
    ("copy_gbps", pa.float64()),  # device copy, read + write bytes
    ("read_gbps", pa.float64()),  # read-only pass
    ("bw_gbps", pa.float64()),  # memory-bandwidth ceiling: max(copy_gbps, read_gbps)
    ("ceiling_method", pa.string()),  # how the ceilings were measured
    ("sm_clock_mhz_start", pa.float64()),
    ("sm_clock_mhz_end", pa.float64()),
    ("gpu_temp_c_start", pa.float64()),
    ("gpu_temp_c_end", pa.float64()),
    ("gpu_power_w_start", pa.float64()),
    ("gpu_power_w_end", pa.float64()),
    ("env_note", pa.string()),  # why ceiling or telemetry columns are null
]
# Columns every results file has had, whatever attnbench version wrote it: a parquet file without
# one of them (or with a null run_id) is another tool's file, and ``load_results`` skips it.
REQUIRED_COLUMNS = ("run_id", "backend", "status")


def required_columns() -> tuple[str, ...]:
    """The columns a parquet file needs to be read as results (``run_id`` non-null on every row)."""
    return REQUIRED_COLUMNS


ENV_COLUMNS = [n for n, _ in ENVIRONMENT]
PROVENANCE_COLUMNS = [n for n, _ in PROVENANCE]


def arrow_type(annotation) -> pa.DataType:
    """The arrow type of a case field's annotation (a string under postponed evaluation)."""
    a = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    a = a.replace(" ", "").replace("|None", "").replace("Optional[", "")
    if a.startswith(("tuple[int", "list[int")):
        return pa.list_(pa.int64())
    if a.startswith(("tuple[float", "list[float")):
        return pa.list_(pa.float64())
    for prefix, t in (("bool", pa.bool_()), ("int", pa.int64()), ("float", pa.float64())):
        if a.startswith(prefix):
            return t
    if a.startswith("str"):
        return pa.string()
    raise TypeError(f"no result column type for a case field annotated {annotation!r}")


def case_fields() -> list[tuple[str, pa.DataType]]:
    """``problem``, ``case_id`` and the case columns of every registered problem (first seen
    first); a column two problems type differently is an error."""
    from ..problems import PROBLEMS

    cols: dict[str, pa.DataType] = {"problem": pa.string(), "case_id": pa.string()}
    owner: dict[str, str] = {}
    for prob in PROBLEMS.values():
        for name, ann in prob.case_type.columns().items():
            t = arrow_type(ann)
            if name in cols and cols[name] != t:
                raise TypeError(
                    f"case column {name!r}: {prob.name} makes it {t}, {owner[name]} {cols[name]}"
                )
            cols.setdefault(name, t)
            owner.setdefault(name, prob.name)
    return list(cols.items())


_cache: dict[tuple, pa.Schema] = {}


def row_schema() -> pa.Schema:
    """The schema of every row today: run, case, verdict, metric, environment, provenance,
    ceiling columns."""
    from ..problems import PROBLEMS

    key = tuple((n, p.case_type) for n, p in PROBLEMS.items())
    if key not in _cache:
        _cache.clear()
        _cache[key] = pa.schema(
            RUN + case_fields() + VERDICT + METRIC + ENVIRONMENT + PROVENANCE + CEILING
        )
    return _cache[key]


def case_columns() -> list[str]:
    """The case columns (``problem``, ``case_id``, every problem's fields and derived columns)."""
    return [n for n, _ in case_fields()]


def case_key_columns() -> list[str]:
    """The case columns that identify a case (``case_id`` is derived from them)."""
    return [c for c in case_columns() if c != "case_id"]


def __getattr__(name):
    if name == "SCHEMA":
        return row_schema()
    if name == "COLUMNS":
        return row_schema().names
    if name == "CASE_COLUMNS":
        return case_columns()
    raise AttributeError(name)
