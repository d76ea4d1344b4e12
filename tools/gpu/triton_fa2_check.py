"""One-call GPU check of the ``triton_fa2`` kernels: accuracy, then TFLOP/s next to SDPA.

Usage (on the GPU machine, from the repo root)::

    python tools/gpu/triton_fa2_check.py                 # ~2-4 min: checks + timings, no tuning
    python tools/gpu/triton_fa2_check.py --configs --head-dims 128 --seqlens 8192
                                                         # autotune; TFLOP/s of every candidate

1. Accuracy (flash-attention's rule, :mod:`attnbench.run.check`) on awkward shapes: batch > 1, odd
   lengths, Sq != Sk both ways with causal, GQA/MQA, head dims 64/96/128/256, varlen, bf16/fp16.
2. Timings (:func:`attnbench.run.timing.bench`, median; the numbers of ``attnbench perf --sweep
   seqlen --only triton_fa2,sdpa_cudnn,sdpa_flash`` for the same cases) of fwd and bwd at 16k
   tokens per batch, model width 2048 (B = 16384 // S, H = 2048 // D), bf16, causal and not, for
   triton_fa2, SDPA cuDNN and SDPA flash; FLOPs from :func:`attnbench.problems.attention.case.case_flops`. Each
   timed case also prints each backend's accuracy verdict (flash-attention's rule).

Without ``--configs`` the kernels run with the first surviving config of each table
(``ATTNBENCH_TRITON_FA2_TUNE=0``, quick); with it they autotune and every candidate's TFLOP/s is
printed (dkdv counted as 4 matmuls = 2x fwd FLOPs, dq as 3 = 1.5x).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", action="store_true", help="autotune and print every candidate")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--seqlens", default="2048,8192,16384")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    return ap.parse_args()


ARGS = parse()
os.environ["ATTNBENCH_TRITON_FA2_TUNE"] = "1" if ARGS.configs else "0"
if ARGS.configs:  # time every candidate again (kept choices would skip the timings printed here)
    os.environ["ATTNBENCH_RETUNE"] = "1"

import torch  # noqa: E402
from common import candidate_line, grade_cases  # noqa: E402  (tools/gpu/common.py)

from attnbench.backends import REGISTRY  # noqa: E402
from attnbench.kernels import switches  # noqa: E402
from attnbench.kernels._triton import tuning  # noqa: E402
from attnbench.kernels.triton_fa2 import bwd, configs, fwd  # noqa: E402
from attnbench.problems.attention import AttentionCase as Case  # noqa: E402
from attnbench.problems.attention.case import case_flops  # noqa: E402
from attnbench.problems.attention.inputs import make_inputs  # noqa: E402
from attnbench.run.check import check_backend, make_truth, verdict  # noqa: E402
from attnbench.run.timing import autotune_bench, bench, mode_fn, timing_columns  # noqa: E402

tuning.set_bench(autotune_bench)  # candidates timed as attnbench perf times them

DEV = torch.device("cuda")


def check_cases():
    c = dict
    return [
        Case(
            **c(
                batch=2,
                heads_q=16,
                heads_kv=4,
                seqlen_q=1000,
                seqlen_k=1000,
                head_dim=64,
                dtype="bf16",
                causal=True,
            )
        ),
        Case(
            **c(
                batch=1,
                heads_q=8,
                heads_kv=8,
                seqlen_q=777,
                seqlen_k=1537,
                head_dim=96,
                dtype="fp16",
                causal=True,
            )
        ),
        Case(
            **c(
                batch=2,
                heads_q=8,
                heads_kv=1,
                seqlen_q=1537,
                seqlen_k=777,
                head_dim=128,
                dtype="bf16",
                causal=True,
            )
        ),
        Case(
            **c(
                batch=2,
                heads_q=16,
                heads_kv=16,
                seqlen_q=1024,
                seqlen_k=1024,
                head_dim=128,
                dtype="fp16",
                causal=False,
            )
        ),
        Case(
            **c(
                batch=2,
                heads_q=4,
                heads_kv=4,
                seqlen_q=513,
                seqlen_k=513,
                head_dim=256,
                dtype="bf16",
                causal=False,
            )
        ),
        Case(
            **c(
                batch=4,
                heads_q=8,
                heads_kv=2,
                seqlen_q=1000,
                seqlen_k=1000,
                head_dim=128,
                dtype="bf16",
                causal=True,
                seqlens=(1, 129, 1000, 333),
            )
        ),
        Case(
            **c(
                batch=3,
                heads_q=4,
                heads_kv=4,
                seqlen_q=900,
                seqlen_k=700,
                head_dim=64,
                dtype="fp16",
                causal=False,
                seqlens=(300, 17, 900),
                seqlens_k=(500, 64, 700),
            )
        ),
    ]


def run_checks() -> bool:
    return grade_cases(REGISTRY["triton_fa2"], check_cases(), "cuda")


BENCHED = ("triton_fa2", "sdpa_cudnn", "sdpa_flash")


def bench_case(d, s, causal):
    """fwd and bwd TFLOP/s of triton_fa2, SDPA cuDNN and SDPA flash on one case, through
    attnbench's one timer exactly as ``attnbench perf`` times them, each with its verdict."""
    b, h = 16384 // s, 2048 // d
    case = Case(b, h, h, s, s, d, "bf16", causal)
    flops = case_flops(case, "fwd")
    inp = make_inputs(case, "cuda", seed=0)
    truth = make_truth(inp, case)
    cells, marks, lines = {}, [], []
    for name in BENCHED:
        be = REGISTRY[name]
        why = be.why_unsupported(case, "cuda", "bwd")
        if why:
            marks.append(f"{name}: {why}")
            continue
        ok, msg = verdict(check_backend(be, case, inp, truth), "bwd")
        marks.append(f"{name} {'ok' if ok else msg}")
        for mode in ("fwd", "bwd"):
            p = be.prepare(inp, case)
            t = bench(
                mode_fn(lambda p=p, be=be: be.forward(p, case), inp.dout, mode), p.leaves, DEV
            )
            cells[name, mode] = timing_columns(t, case_flops(case, mode))["tflops"]
            if ARGS.configs and name == "triton_fa2":
                if mode == "fwd":
                    lines.append(candidate_line(fwd._fwd_kernel, "fwd", flops))
                else:
                    lines.append(candidate_line(bwd._bwd_dkdv_kernel, "dkdv", 2 * flops))
                    lines.append(candidate_line(bwd._bwd_dq_kernel, "dq", 1.5 * flops))
    row = [
        f"{cells[n, m]:6.0f}" if (n, m) in cells else "     -"
        for m in ("fwd", "bwd")
        for n in BENCHED
    ]
    tag = "causal" if causal else "full  "
    head = f"D{d:<4}S{s:<6}{tag} B{b:<2}H{h:<3}|"
    print(
        head + " ".join(row[:3]) + " |" + " ".join(row[3:]) + " | " + "; ".join(marks), flush=True
    )
    for line in lines:
        print(line)


def main():
    dev = torch.cuda.get_device_name()
    tune = switches.on(configs.ENV_TUNE)
    print(f"{dev}  torch {torch.__version__}  arch-table {configs.ARCH}  tune {tune}")
    t0 = time.time()
    ok = True
    if not ARGS.skip_check:
        ok = run_checks()
        print(f"accuracy: {'all ok' if ok else 'FAILURES'} ({time.time() - t0:.0f}s)", flush=True)
    if not ARGS.skip_bench:
        print("== TFLOP/s, bf16, 16k tokens/batch, width 2048 (attnbench.run.timing median) ==")
        print(
            "case                      |  fwd: ours  cudnn  flash |  bwd: ours  cudnn  flash "
            "| accuracy"
        )
        for d in (int(x) for x in ARGS.head_dims.split(",")):
            for causal in (False, True):
                for s in (int(x) for x in ARGS.seqlens.split(",")):
                    bench_case(d, s, causal)
    print(f"total {time.time() - t0:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
