"""Tables for the closing note from distributed results (parquet):

python tools/gpu/dist_summary.py RESULTS_DIR [--case-like H32] [--local flash_attn_func]

1. perf: the stored efficiencies of the slowest-rank rows (``efficiency``: single-device(S) /
   (P x time), the issue's; ``efficiency_share``: P x single-device(S/P) / time,
   ring-flash-attention's), TFLOP/s per GPU, and the single-device baselines;
2. accuracy: per strategy and rank, max |diff| vs the fp32 reference of out, lse, dq, dk, dv
   (the non-distributed run's own error is in baseline_max_abs_err), and the verdict counts.
"""

import argparse

import pandas as pd

ap = argparse.ArgumentParser()
ap.add_argument("results")
ap.add_argument("--case-like", default="H32")
ap.add_argument("--local", default=None, help="accuracy table for this local kernel")
a = ap.parse_args()
pd.set_option("display.width", 250, "display.max_columns", 40, "display.max_rows", 400)
everything = pd.read_parquet(a.results)
df = everything[everything.case_id.str.contains(a.case_like, regex=False)]
MODES = ["fwd", "bwd", "fwd_bwd"]
IDX = ["world_size", "backend", "strategy"]


def table(rows, values, fmt):
    t = rows.assign(cell=[fmt(v, s) for v, s in zip(rows[values], rows.status)])
    return t.pivot_table(index=IDX, columns="mode", values="cell", aggfunc="last").reindex(
        columns=MODES
    )


def pct(v, status):
    return f"{v:.0%}" if status == "ok" and pd.notna(v) else status[:11]


perf = df[(df.kind == "dist_perf") & (df.strategy != "single") & df["rank"].isna()]
if len(perf):
    print("efficiency = single-device(S) / (P x slowest rank)   [issue 6's definition]")
    print(table(perf, "efficiency", pct).to_string())
    print("efficiency_share = P x single-device(S/P) / slowest rank   [ring-flash-attention's]")
    print(table(perf, "efficiency_share", pct).to_string())
    print("TFLOP/s per GPU (slowest rank):")
    print(table(perf, "tflops", lambda v, s: f"{v:.0f}" if s == "ok" else s[:11]).to_string())
single = everything[(everything.kind == "dist_perf") & (everything.strategy == "single")]
if len(single):
    print("single-device TFLOP/s:")
    print(
        single[single.status == "ok"]
        .pivot_table(index=["case_id", "backend"], columns="mode", values="tflops", aggfunc="last")
        .round(0)
        .to_string()
    )

acc = df[(df.kind == "dist_accuracy") & df["rank"].notna()]
if len(acc):
    loc = a.local or acc.backend.iloc[0]
    x = acc[acc.backend == loc]
    print(f"accuracy, local {loc}: max |distributed - fp32 reference| per rank")
    print(
        x.pivot_table(
            index=["world_size", "case_id", "strategy", "rank"],
            columns="tensor",
            values="max_abs_err",
            aggfunc="max",
        ).to_string(float_format="%.2g")
    )
verdicts = everything[everything.kind == "dist_accuracy"]
if len(verdicts):
    print("accuracy verdicts (rows):")
    print(
        verdicts.groupby(["world_size", "backend", "status"])
        .size()
        .unstack(fill_value=0)
        .to_string()
    )
