"""Where a ring/zigzag rank's time goes, on ONE GPU: the rank's compute with the transfers
replaced by no-ops, against the ideal (single-GPU time of the whole sequence / P).

    python tools/gpu/dist_profile.py --kernels triton_fa2,sdpa_flash --world 4

The ring code runs unchanged (``attnbench.distributed.ring``) with its ``RingComm`` swapped for one that
hands the block straight back, so what is left is the rank's own work: block kernels, merges,
slicing and gradient accumulation. ``merge`` = torch runs the eager merge instead of the fused
Triton one. Shape: ring-flash-attention's benchmark (8k tokens per rank, 32/8 heads, D128,
bf16, causal). Timed by :func:`attnbench.run.timing.bench` like every perf row (fwd: the forward;
bwd: ``out.backward`` alone). Not a substitute for ``attnbench dist perf`` (no communication).
"""

from __future__ import annotations

import argparse

import torch

import attnbench.distributed.merge as merge
import attnbench.distributed.ring as ring
from attnbench.distributed.local import get_local_kernel, local_attention
from attnbench.run.timing import bench, mode_fn


class NoComm:
    rank = 1

    def __init__(self, group=None, tag=0):
        self.world_size = NoComm.world
        self.rank = NoComm.rank

    def send_recv(self, t):
        return t

    def commit(self):
        pass

    def wait(self):
        pass


def _times(forward, leaves) -> tuple[float, float]:
    """(fwd, bwd) median ms through attnbench's one timer, timed as ``attnbench perf`` does."""
    dout = torch.randn_like(leaves[0])
    dev = leaves[0].device
    return tuple(bench(mode_fn(forward, dout, m), leaves, dev).median_ms for m in ("fwd", "bwd"))


def profile(kern, full, loc, p, scale):
    """Rows (kernel, strategy, merge, rank, ideal fwd, fwd, ideal bwd, bwd) in ms."""
    fl = tuple(t.clone().requires_grad_() for t in full)
    t_fwd1, t_bwd1 = _times(lambda: local_attention(*fl, kern, True, scale), fl)
    rows = []
    for strat in ("ring", "zigzag"):
        for impl in ("triton", "torch"):
            merge.use_triton = (lambda t: t.is_cuda) if impl == "triton" else (lambda t: False)
            for rank in range(p) if strat == "ring" else (1,):
                NoComm.rank = rank
                ll = tuple(t.clone().requires_grad_() for t in loc)
                zz = strat == "zigzag"
                t_f, t_b = _times(
                    lambda ll=ll, zz=zz: ring.ring_attention(*ll, kern, True, scale, zigzag=zz), ll
                )
                rows.append((kern.name, strat, impl, rank, t_fwd1 / p, t_f, t_bwd1 / p, t_b))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", default="triton_fa2,sdpa_flash,sdpa_efficient")
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--per-rank", type=int, default=8192)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    p, s = a.world, a.per_rank
    NoComm.world = p
    ring.RingComm = NoComm
    dev, dt = a.device, torch.bfloat16
    torch.manual_seed(0)
    hq, hkv, d = 32, 8, 128
    scale = d**-0.5
    full = [torch.randn(1, p * s, h, d, device=dev, dtype=dt) for h in (hq, hkv, hkv)]
    loc = [t[:, :s].clone() for t in full]
    rows = []
    for name in a.kernels.split(","):
        rows += profile(get_local_kernel(name), full, loc, p, scale)
    print(f"P={p}, {s} tokens per rank, 32/8 heads, D128, bf16, causal; no communication")
    print("kernel         strategy merge  rank  ideal_fwd  fwd ms  eff  | ideal_bwd  bwd ms  eff")
    for name, strat, impl, rank, i_f, t_f, i_b, t_b in rows:
        print(
            f"{name:14s} {strat:8s} {impl:6s} {rank:4d}  {i_f:8.3f} {t_f:7.3f} {i_f / t_f:4.0%}"
            f"  | {i_b:8.3f} {t_b:7.3f} {i_b / t_b:4.0%}"
        )


if __name__ == "__main__":
    main()
