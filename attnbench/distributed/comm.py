"""Process groups, ring send/recv, the Ulysses all-to-alls, and the hang guard.

One process per device: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` come from torchrun, the GPU is
``cuda:LOCAL_RANK`` (so multi-node torchrun works unchanged), NCCL on GPUs and gloo on CPUs.
``NCCL_NVLS_ENABLE=0`` is always set: NVLink multicast stays off.

A collective that never completes (a dead peer, a rank that skipped a step) must not hang the
run: ``init_process_group`` gets a finite timeout (a rank that cannot join within it is a
:class:`DistTimeout` too), gloo raises on it (re-raised here as :class:`DistTimeout` naming the
rank and the phase), and :class:`Watchdog` ends a rank stuck
past the timeout (NCCL kernels can block the host without raising) with the same message.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DistTimeout(RuntimeError):
    """A collective did not complete within the process-group timeout."""


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: str  # "cpu" or "cuda:<local_rank>"
    backend: str  # "gloo" or "nccl"
    timeout_s: float
    nccl_high_priority: bool = True


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def nccl_options(high_priority: bool = True):
    """NCCL process-group options: communication on a high-priority stream, so a transfer's
    kernel is scheduled as soon as an SM frees up instead of after the whole attention kernel
    it should overlap (the default priority queues it behind every block of that kernel)."""
    opts = dist.ProcessGroupNCCL.Options()
    opts.is_high_priority_stream = high_priority
    return opts


def new_group(ranks: list[int], env: DistEnv):
    """A subgroup with the world group's NCCL options (the hybrid layouts' Ulysses/ring groups)."""
    if env.backend == "nccl":
        return dist.new_group(ranks, pg_options=nccl_options(env.nccl_high_priority))
    return dist.new_group(ranks)


def init(device: str, timeout_s: float = 120.0, high_priority: bool = True) -> DistEnv:
    """Join the process group described by torchrun's environment variables; NCCL
    communication runs on a high-priority stream unless ``high_priority`` is False."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"rank {rank}: LOCAL_RANK {local_rank} but only "
                f"{torch.cuda.device_count()} GPUs are visible"
            )
        torch.cuda.set_device(local_rank)
        dev, backend = f"cuda:{local_rank}", "nccl"
    else:
        dev, backend = "cpu", "gloo"
    if not dist.is_initialized():
        extra = {"pg_options": nccl_options(high_priority)} if backend == "nccl" else {}
        try:
            dist.init_process_group(
                backend, rank=rank, world_size=world, timeout=dt.timedelta(seconds=timeout_s),
                **extra,
            )  # fmt: skip
        except RuntimeError as e:  # DistNetworkError/DistStoreError included
            if "timed out" not in str(e).lower() and "timeout" not in str(e).lower():
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistTimeout(
                f"rank {rank} could not join the process group of {world} within "
                f"{timeout_s:g} s: {first}"
            ) from None
    return DistEnv(rank, world, local_rank, dev, backend, timeout_s, high_priority)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- ring point-to-point ----------------------------------------------------------------------
class RingComm:
    """Send to the next rank and receive from the previous one of ``group`` (batched
    ``isend``/``irecv``), so a transfer runs while the current block computes."""

    def __init__(self, group=None, tag: int = 0):
        self.group = group or dist.group.WORLD
        self.tag = tag
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self.next = dist.get_global_rank(self.group, (self.rank + 1) % self.world_size)
        self.prev = dist.get_global_rank(self.group, (self.rank - 1) % self.world_size)
        self._ops: list = []
        self._reqs: list = []

    def send_recv(self, t: torch.Tensor) -> torch.Tensor:
        """Queue sending ``t`` to the next rank; returns the buffer the previous rank's fills."""
        buf = torch.empty_like(t)
        self._ops.append(dist.P2POp(dist.isend, t.contiguous(), self.next, self.group, self.tag))
        self._ops.append(dist.P2POp(dist.irecv, buf, self.prev, self.group, self.tag))
        return buf

    def commit(self) -> None:
        self._reqs = dist.batch_isend_irecv(self._ops)
        self._ops = []

    def wait(self) -> None:
        for r in self._reqs:
            r.wait()
        self._reqs = []


# ---- Ulysses all-to-alls ------------------------------------------------------------------------
def _a2a(x: torch.Tensor, group) -> torch.Tensor:
    """all_to_all_single over dim 0 (size = group size): slot i goes to rank i."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def seq_to_head(x: torch.Tensor, group) -> torch.Tensor:
    """(B, S/P, H, D) sequence shard -> (B, S, H/P, D) head shard (rank order = sequence order)."""
    p = dist.get_world_size(group)
    b, s, h, d = x.shape
    y = _a2a(x.reshape(b, s, p, h // p, d).permute(2, 0, 1, 3, 4), group)  # (P, B, s, h/P, D)
    return y.permute(1, 0, 2, 3, 4).reshape(b, p * s, h // p, d)


def head_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    """(B, S, H/P, D) head shard -> (B, S/P, H, D) sequence shard; inverse of seq_to_head."""
    p = dist.get_world_size(group)
    b, S, h, d = x.shape
    y = _a2a(x.reshape(b, p, S // p, h, d).permute(1, 0, 2, 3, 4), group)  # (P, B, s, h, D)
    return y.permute(1, 2, 0, 3, 4).reshape(b, S // p, p * h, d)


def lse_head_to_seq(lse: torch.Tensor, group) -> torch.Tensor:
    """(B, H/P, S) -> (B, H, S/P)."""
    p = dist.get_world_size(group)
    b, h, S = lse.shape
    y = _a2a(lse.reshape(b, h, p, S // p).permute(2, 0, 1, 3), group)  # (P, B, h, s)
    return y.permute(1, 0, 2, 3).reshape(b, p * h, S // p)


class SeqToHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return seq_to_head(x, group)

    @staticmethod
    def backward(ctx, g):
        return head_to_seq(g, ctx.group), None


class HeadToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return head_to_seq(x, group)

    @staticmethod
    def backward(ctx, g):
        return seq_to_head(g, ctx.group), None


# ---- hang guard -------------------------------------------------------------------------------
def _store():
    """The default group's key-value store, or None (no process group yet)."""
    try:
        return dist.distributed_c10d._get_default_store() if dist.is_initialized() else None
    except Exception:
        return None


class Watchdog:
    """Names the rank(s) that stopped answering and ends the process, instead of hanging.

    ``with wd.phase("ring · B1-H4-S256 · forward"):`` marks what the rank is doing; every rank
    walks the same phases in the same order and records the count and name of the phase it
    entered in the process group's store. When a collective times out (gloo raises
    :class:`DistTimeout`; a blocked NCCL rank is ended by a daemon thread once a phase outlives
    ``timeout_s + grace_s``, exit code 124), the waiting rank reads that record and names the
    ranks that never reached its phase, and the phase each was last seen in.
    """

    KEY = "attnbench/phase/{}"

    def __init__(self, rank: int, timeout_s: float, grace_s: float = 15.0, store=None):
        self.rank, self.timeout_s, self.grace_s = rank, timeout_s, grace_s
        self.store = store if store is not None else _store()
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self._phase: str | None = None
        self._since = 0.0
        self._seq = 0
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def laggards(self) -> str:
        """Who never reached this rank's current phase, e.g. ``rank 1 never reached it (last
        seen in 'ring · ... forward')``, read from the store (a few seconds at most)."""
        if self.store is None or self.world_size < 2:
            return "the peer ranks are not known"
        behind, unknown = [], []
        try:
            self.store.set_timeout(dt.timedelta(seconds=5))
            for r in range(self.world_size):
                if r == self.rank:
                    continue
                key = self.KEY.format(r)
                if not self.store.check([key]):
                    behind.append(f"rank {r} never reached it (it started no phase)")
                    continue
                seq, _, name = self.store.get(key).decode().partition("\t")
                if int(seq) < self._seq:
                    behind.append(f"rank {r} never reached it (last seen in {name!r})")
        except Exception:
            unknown.append("the store is unreachable (rank 0 may have died)")
        if behind:
            return "; ".join(behind)
        return unknown[0] if unknown else "every rank reached it (a collective mismatch?)"

    def _stuck(self, phase: str) -> str:
        return f"rank {self.rank} waited {self.timeout_s:g} s in {phase!r}: {self.laggards()}"

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            phase, since = self._phase, self._since
            if phase is not None and time.monotonic() - since > self.timeout_s + self.grace_s:
                print(f"error: {self._stuck(phase)}; aborting", file=sys.stderr, flush=True)
                os._exit(124)

    @contextmanager
    def phase(self, name: str):
        prev, prev_since = self._phase, self._since
        self._seq += 1
        if self.store is not None:
            try:
                self.store.set(self.KEY.format(self.rank), f"{self._seq}\t{name}")
            except Exception:
                self.store = None
        self._phase, self._since = name, time.monotonic()
        try:
            yield
        except RuntimeError as e:
            text = str(e).lower()
            if not isinstance(e, DistTimeout) and ("timed out" in text or "timeout" in text):
                raise DistTimeout(f"collective timed out: {self._stuck(name)}") from e
            raise
        finally:
            self._phase, self._since = prev, prev_since
