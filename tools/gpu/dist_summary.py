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
df = df[df.case_id.str.contains(a.case_like, regex=False) | (df.strategy == "single")]

perf = df[(df.kind == "dist_perf")]
if len(perf):
    ok_single = perf[(perf.strategy == "single") & (perf.status == "ok")]
    shape = ["backend", "mode", "heads_q", "heads_kv", "head_dim", "dtype", "causal", "batch"]
    single = ok_single.set_index([*shape, "seqlen_q"]).latency_ms
    grp = perf[(perf.strategy != "single") & perf["rank"].isna()]
    cells = []
    for _, r in grp.iterrows():
        base = tuple(r[c] for c in shape)
        full, share = (*base, r.seqlen_q), (*base, r.seqlen_q // r.world_size)
        if r.status != "ok" or full not in single.index:
            e1 = e2 = "WRONG" if r.status == "accuracy_failed" else r.status[:11]
        else:
            e1 = f"{single[full] / (r.world_size * r.latency_ms):.0%}"
            e2 = (
                f"{r.world_size * single[share] / r.latency_ms:.0%}"
                if share in single.index
                else "-"
            )
        cells.append((r.world_size, r.backend, r.strategy, r["mode"], e1, e2, r.tflops))
    t = pd.DataFrame(cells, columns=["P", "local", "strategy", "mode", "eff", "eff_rfa", "tflops"])
    idx = ["P", "local", "strategy"]
    cols = ["fwd", "bwd", "fwd_bwd"]
    print("efficiency = single-device(S) / (P x slowest rank)   [issue 6's definition]")
    print(
        t.pivot_table(index=idx, columns="mode", values="eff", aggfunc="last")
        .reindex(columns=cols)
        .to_string()
    )
    print("efficiency = P x single-device(S/P) / slowest rank   [ring-flash-attention's]")
    print(
        t.pivot_table(index=idx, columns="mode", values="eff_rfa", aggfunc="last")
        .reindex(columns=cols)
        .to_string()
    )
    print("TFLOP/s per GPU (slowest rank):")
    print(
        t.pivot_table(index=idx, columns="mode", values="tflops", aggfunc="last")
        .reindex(columns=cols)
        .round(0)
        .to_string()
    )
    print("single-device TFLOP/s:")
    print(
        ok_single.pivot_table(
            index=["case_id", "backend"], columns="mode", values="tflops", aggfunc="last"
        )
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
