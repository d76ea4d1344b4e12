"""Tables for the closing note from distributed results (parquet):

python tools/gpu/dist_summary.py RESULTS_DIR [--case-like H32]

1. perf: efficiency = single-device ms / (P x slowest-rank ms) per strategy x local kernel,
   fwd / bwd / fwd_bwd, with the single-device TFLOP/s;
2. accuracy: per strategy, rank: max |diff| vs the fp32 reference of out, lse, dq, dk, dv
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
df = pd.read_parquet(a.results)
df = df[df.case_id.str.contains(a.case_like, regex=False)]

perf = df[(df.kind == "dist_perf")]
if len(perf):
    single = perf[(perf.strategy == "single") & (perf.status == "ok")]
    single = single.set_index(["world_size", "case_id", "backend", "mode"]).latency_ms
    grp = perf[(perf.strategy != "single") & perf["rank"].isna()]
    cells = []
    for _, r in grp.iterrows():
        key = (1, r.case_id, r.backend, r["mode"])
        if r.status != "ok" or key not in single.index:
            cell = "WRONG" if r.status == "accuracy_failed" else r.status[:11]
        else:
            cell = f"{single[key] / (r.world_size * r.latency_ms):.0%}"
        cells.append((r.world_size, r.backend, r.strategy, r["mode"], cell))
    t = pd.DataFrame(cells, columns=["P", "local", "strategy", "mode", "eff"])
    print("efficiency vs single-device / P (slowest rank):")
    print(
        t.pivot_table(
            index=["P", "local", "strategy"], columns="mode", values="eff", aggfunc="last"
        )
        .reindex(columns=["fwd", "bwd", "fwd_bwd"])
        .to_string()
    )
    s = perf[(perf.strategy == "single") & (perf.status == "ok")]
    print("single-device TFLOP/s:")
    print(
        s.pivot_table(index=["case_id", "backend"], columns="mode", values="tflops", aggfunc="last")
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
allacc = pd.read_parquet(a.results)
allacc = allacc[allacc.kind == "dist_accuracy"]
if len(allacc):
    print("accuracy verdicts (rows):")
    print(
        allacc.groupby(["world_size", "backend", "status"]).size().unstack(fill_value=0).to_string()
    )
