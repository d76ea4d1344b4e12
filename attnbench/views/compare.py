"""A/B comparison of two runs (or of two backends in one run): speedups, accuracy changes,
cases found on one side only.

    attnbench compare BASE NEW [--threshold 3%] [--json] [--plot speedup.png]
    attnbench compare RUN --backend triton_fa2 --vs sdpa_cudnn

BASE/NEW are run ids (looked up in ``--results``), parquet files or folders. Rows are joined on
problem, backend, mode and every case parameter; where a side holds the same point several times
the newest row counts. speedup = NEW TFLOP/s / BASE TFLOP/s (> 1: NEW is faster), one geometric
mean per backend. ``--threshold 3%`` makes the command exit 1 when a matched case got slower by
more than 3% or lost its accuracy verdict. An accuracy change carries both sides' cosine
similarity, relative L1 and RMSE where the rows have them (``cos_sim_base``, ``cos_sim_new``, ...).
A case column a run lacks (written before that field existed) reads as the field's default.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import load_results
from ..results.schema import ENV_COLUMNS as _ENV
from ..results.schema import PROVENANCE_COLUMNS, case_columns
from ..settings import describe

# every environment column (a difference is printed in yellow) and the run's settings
ENV_COLUMNS = (*_ENV, "settings")
INFO_COLUMNS = tuple(c for c in PROVENANCE_COLUMNS if c != "timestamp")


def _positive(s: pd.Series) -> pd.Series:
    """Where ``s`` is a finite number above zero (a throughput or time a ratio can use)."""
    x = pd.to_numeric(s, errors="coerce").astype(float)
    return (x > 0) & np.isfinite(x)


def _case_columns() -> list[str]:
    """Rows are joined on these: every case column of every registered problem, and tensor."""
    return list(dict.fromkeys([*case_columns(), "tensor"]))


def resolve(spec: str, results: Path, warn=None) -> pd.DataFrame:
    """Rows of a run id, a parquet file or a folder; FileNotFoundError with a one-line reason
    (a file that is not attnbench results is named as such). ``warn`` gets one line per file
    skipped in a folder (default: printed on stderr)."""
    p = Path(spec)
    if p.exists():
        return _load(p, warn)
    matches = sorted(Path(results).glob(f"*{spec}*.parquet"))
    exact = [m for m in matches if m.stem == spec]
    if exact or len(matches) == 1:
        return _load((exact or matches)[0], warn)
    if not matches:
        raise FileNotFoundError(f"{spec!r}: no such file, folder or run id in {results}/")
    names = ", ".join(m.stem for m in matches[:4])
    raise FileNotFoundError(f"{spec!r} matches {len(matches)} runs in {results}/: {names}, ...")


def _load(p: Path, warn=None) -> pd.DataFrame:
    """The rows of one results file or folder; one file that is not results (another tool's
    parquet, no parquet at all) is one line naming it, with the store's reason."""
    if p.is_dir():
        return load_results(p, warn)
    why: list[str] = []
    try:
        df = load_results(p, warn=why.append)
    except FileNotFoundError:
        df = None
    if df is None or df.empty or not df["run_id"].notna().any():
        reason = why[0].removeprefix(f"skipping {p}: ") if why else ""
        for prefix in ("not a results file: ", "not a readable results file "):
            reason = reason.removeprefix(prefix)
        reason = reason.strip().removeprefix("(").removesuffix(")")
        raise FileNotFoundError(
            f"{p}: not an attnbench results file" + (f" ({reason})" if reason else "")
        )
    return df


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["kind"].isin(["perf", "accuracy"])].copy()
    if "problem" not in df:
        df["problem"] = "attention"
    df["problem"] = df["problem"].fillna("attention")
    case_cols = _case_columns()
    for c in case_cols:
        if c in df and df[c].map(lambda v: hasattr(v, "__len__") and not isinstance(v, str)).any():
            df[c] = df[c].map(lambda v: None if v is None else tuple(v))  # lists cannot be joined
    for c in case_cols:
        if c not in df:
            df[c] = None
    df = df.astype({c: object for c in case_cols}).where(df.notna(), None)
    _fill_defaults(df, case_cols)
    if "timestamp" in df:
        df = df.sort_values("timestamp")
    return df.drop_duplicates(["kind", "backend", "mode", *case_cols], keep="last")


def _fill_defaults(df: pd.DataFrame, case_cols: list[str]) -> None:
    """A case column a row's problem has but the row lacks (written before the field existed:
    ``q_std`` of a run older than the input distributions) reads as the field's default, so old
    and new runs of the same case still join; another problem's columns stay empty."""
    from ..problems import PROBLEMS

    for name, prob in PROBLEMS.items():
        mine = (df["problem"] == name).to_numpy()
        if not mine.any():
            continue
        for f in fields(prob.case_type):
            if f.name not in case_cols or f.default is MISSING or f.default is None:
                continue
            gap = mine & df[f.name].isna().to_numpy()
            if gap.any():
                df.loc[gap, f.name] = f.default


def _env(df: pd.DataFrame, cols) -> dict[str, list[str]]:
    """The distinct values of each column (settings: ``defaults`` for rows with none)."""
    out = {c: sorted(map(str, df[c].dropna().unique())) for c in cols if c in df}
    if "settings" in out:
        out["settings"] = sorted(set(map(describe, df["settings"])))
    return out


def _verdict(r, side: str):
    st = r.get(f"status_{side}")
    if st in ("ok", "accuracy_failed"):
        return bool(r.get(f"accuracy_ok_{side}"))
    return None  # nothing measured: error, oom, unsupported


METRICS = ("cos_sim", "rel_l1", "rmse")


def _metrics(r) -> dict:
    """A row's relative metrics on both sides (``cos_sim_base``, ``cos_sim_new``, ...: of the
    tensor, or of out on a perf row; None where a side has none: a run older than them)."""
    out = {}
    for m in METRICS:
        for side in ("base", "new"):
            v = r.get(f"{m}_{side}")
            out[f"{m}_{side}"] = None if v is None or v != v else float(v)
    return out


@dataclass
class Comparison:
    base_label: str
    new_label: str
    threshold: float | None
    env_differences: dict[str, tuple[list[str], list[str]]]
    info: dict[str, tuple[list[str], list[str]]]
    cases: pd.DataFrame  # matched perf rows with speedups
    accuracy_changes: list[dict] = field(default_factory=list)
    base_only: list[str] = field(default_factory=list)
    new_only: list[str] = field(default_factory=list)

    @property
    def geomean(self) -> dict[str, float]:
        """Geometric mean speedup per backend over the pairs that have one (:attr:`no_speedup`
        left out)."""
        ok = self.cases[_positive(self.cases.speedup)]
        return {
            b: math.exp(g.speedup.map(math.log).mean())
            for b, g in ok.groupby("backend", sort=False)
        }

    def agreement(self, tolerances=(0.02, 0.05)) -> list[dict]:
        """Per seqlen_q and over all: matched ok pairs, how many lie within each tolerance
        (|speedup - 1|), the worst; for two runs of the same code, this is repeatability."""
        d = self.cases.dropna(subset=["speedup"])
        out = []
        for s, g in [*d.groupby("seqlen_q"), ("all", d)]:
            dev = (g.speedup - 1).abs()
            row = {"seqlen_q": s if s == "all" else int(s), "pairs": len(g)}
            row |= {f"within_{t:.0%}": int((dev <= t).sum()) for t in tolerances}
            row["worst"] = float(dev.max()) if len(g) else None
            out.append(row)
        return out

    @property
    def no_speedup(self) -> list[str]:
        """Pairs measured ok on both sides whose throughput is zero or missing on a side: they
        get no speedup and are left out of the geometric mean."""
        c = self.cases
        both_ok = (c.status_base == "ok") & (c.status_new == "ok")
        return c[both_ok & c.speedup.isna()].case_key.tolist()

    @property
    def regressions(self) -> pd.DataFrame:
        if self.threshold is None:
            return self.cases.iloc[0:0]
        return self.cases[self.cases.speedup < 1 - self.threshold]

    @property
    def lost(self) -> list[dict]:
        return [c for c in self.accuracy_changes if c["base"] is True and c["new"] is not True]

    @property
    def failed(self) -> bool:
        return self.threshold is not None and (len(self.regressions) > 0 or bool(self.lost))

    def to_json(self) -> dict:
        cols = ["backend", "mode", "case_id", "ms_base", "ms_new", "tflops_base", "tflops_new"]
        cols += ["speedup", "ms_ratio", "kernel_config_base", "kernel_config_new"]
        cases = self.cases[cols].astype(object).where(self.cases[cols].notna(), None)
        return dict(
            base=self.base_label,
            new=self.new_label,
            threshold=self.threshold,
            env_differences={
                k: {"base": a, "new": b} for k, (a, b) in self.env_differences.items()
            },
            accuracy_changes=self.accuracy_changes,
            cases=cases.to_dict("records"),
            geomean_speedup=self.geomean,
            agreement=self.agreement(),
            config_changed=self.cases[self.cases.config_changed].case_key.tolist(),
            regressions=self.regressions.case_key.tolist(),
            no_speedup=self.no_speedup,
            lost_verdicts=[c["case"] for c in self.lost],
            base_only=self.base_only,
            new_only=self.new_only,
            failed=self.failed,
        )


def _key_label(r) -> str:
    t = f" {r['tensor']}" if r.get("tensor") else ""
    prob = "" if r.get("problem") in (None, "attention") else f"{r['problem']} "
    return f"{prob}{r['backend']} {r['mode']} {r['case_id']}{t}"


def compare_frames(
    base: pd.DataFrame,
    new: pd.DataFrame,
    base_label: str,
    new_label: str,
    threshold: float | None = None,
    join_backend: bool = True,
) -> Comparison:
    """Join two result frames; ``join_backend=False`` pairs rows of different backends (the
    backend of NEW names the row, as ``A vs B``)."""
    b, n = _prepare(base), _prepare(new)
    keys = ["kind", "mode", *_case_columns()] + (["backend"] if join_backend else [])
    m = b.merge(n, on=keys, how="outer", suffixes=("_base", "_new"), indicator=True)
    if join_backend:
        m["backend_base"] = m["backend_new"] = m["backend"]
    m["backend"] = m["backend_new"].fillna(m["backend_base"])
    if not join_backend:
        m["backend"] = m["backend_new"].fillna("?") + " vs " + m["backend_base"].fillna("?")
    m["case_key"] = [_key_label(r) for r in m.to_dict("records")]
    recs = m.to_dict("records")
    one = {"left_only": [], "right_only": [], "both": []}
    for r in recs:
        one[r["_merge"]].append(r["case_key"])
    changes = []
    for r in recs:
        if r["_merge"] != "both":
            continue
        vb, vn = _verdict(r, "base"), _verdict(r, "new")
        if vb != vn:
            changes.append(
                dict(
                    case=r["case_key"],
                    base=vb,
                    new=vn,
                    status_base=r["status_base"],
                    status_new=r["status_new"],
                    message=r.get("message_new") or r.get("message_base"),
                    **_metrics(r),
                )
            )
    perf = m[(m["_merge"] == "both") & (m["kind"] == "perf")].copy()
    good = (perf.status_base == "ok") & (perf.status_new == "ok")
    tb, tn, mb, mn = (
        pd.to_numeric(perf[c], errors="coerce").astype(float)
        for c in ("tflops_base", "tflops_new", "latency_ms_base", "latency_ms_new")
    )
    # a zero or missing throughput (or time) on a side: no ratio, never 0, inf or a log error
    perf["speedup"] = (tn / tb).where(good & _positive(tb) & _positive(tn))
    perf["ms_ratio"] = (mn / mb).where(good & _positive(mb) & _positive(mn))
    perf = perf.rename(columns={"latency_ms_base": "ms_base", "latency_ms_new": "ms_new"})
    for side in ("base", "new"):
        if f"kernel_config_{side}" not in perf:
            perf[f"kernel_config_{side}"] = None
    kb, kn = perf.kernel_config_base, perf.kernel_config_new
    # another backend runs another kernel anyway: only a change within a backend is news
    perf["config_changed"] = kb.notna() & kn.notna() & (kb != kn) & join_backend
    envd, info = {}, {}
    eb, en = _env(b, ENV_COLUMNS + INFO_COLUMNS), _env(n, ENV_COLUMNS + INFO_COLUMNS)
    for c in eb.keys() & en.keys():
        if eb[c] != en[c]:
            (envd if c in ENV_COLUMNS else info)[c] = (eb[c], en[c])
    return Comparison(
        base_label,
        new_label,
        threshold,
        envd,
        info,
        perf.reset_index(drop=True),
        changes,
        sorted(one["left_only"]),
        sorted(one["right_only"]),
    )


def parse_threshold(v: str | None) -> float | None:
    """``3%`` or ``3`` -> 0.03; ValueError with a one-line reason otherwise."""
    if v is None:
        return None
    try:
        x = float(v.strip().rstrip("%"))
    except ValueError:
        raise ValueError(f"--threshold {v!r}: expected a percentage such as 3%") from None
    if not 0 <= x < 100:
        raise ValueError(f"--threshold {v!r}: expected a percentage in [0, 100)")
    return x / 100
