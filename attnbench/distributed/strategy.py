"""Strategies, the token layout of each rank's shard, setup checks and process groups.

==================  ===========================================  ===============================
strategy            rank r of P holds (tokens of a length-S seq)  needs
==================  ===========================================  ===============================
``ring``            chunk r of P                                  S % P == 0
``zigzag``          chunks r and 2P-1-r of 2P                     S % 2P == 0
``ulysses``         chunk r of P (heads split inside)             S % P, Hq % P, Hkv % P == 0
``hybrid``          Ulysses groups of U inside, ring across R     S % P, Hq % U, Hkv % U == 0
``hybrid_zigzag``   same, zigzag ring across R                    S % 2P also
==================  ===========================================  ===============================

Every check runs before any collective, on every rank with the same inputs, so a bad setup is
the same clear :class:`DistSetupError` everywhere instead of a hang.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..problems.base import Case
from .comm import DistEnv, new_group
from .local import LocalKernel
from .ring import ring_attention
from .ulysses import ulysses_attention

STRATEGIES = ("ring", "zigzag", "ulysses", "hybrid", "hybrid_zigzag")


class DistSetupError(ValueError):
    """A strategy that cannot run this case on this world size; the message says why."""


@dataclass(frozen=True)
class Layout:
    strategy: str
    world_size: int
    ulysses_size: int = 1  # hybrid only: ranks per Ulysses group

    @property
    def hybrid(self) -> bool:
        return self.strategy.startswith("hybrid")

    @property
    def zigzag(self) -> bool:
        return self.strategy in ("zigzag", "hybrid_zigzag")

    @property
    def ring_size(self) -> int:
        return self.world_size // self.ulysses_size if self.hybrid else self.world_size

    def indices(self, rank: int, seqlen: int) -> torch.Tensor:
        """Positions (int64) of the tokens rank ``rank`` holds, in local order."""
        if self.strategy == "ulysses":
            n = seqlen // self.world_size
            return torch.arange(rank * n, (rank + 1) * n)
        r = self.ring_size
        ring_rank, sub = (
            (rank // self.ulysses_size, rank % self.ulysses_size) if self.hybrid else (rank, 0)
        )
        if self.zigzag:
            c = seqlen // (2 * r)
            idx = torch.cat(
                [
                    torch.arange(ring_rank * c, (ring_rank + 1) * c),
                    torch.arange((2 * r - 1 - ring_rank) * c, (2 * r - ring_rank) * c),
                ]
            )
        else:
            n = seqlen // r
            idx = torch.arange(ring_rank * n, (ring_rank + 1) * n)
        if not self.hybrid:
            return idx
        m = idx.numel() // self.ulysses_size
        return idx[sub * m : (sub + 1) * m]

    def shard(self, x: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
        """This rank's part of a full-sequence tensor (sequence along ``dim``), contiguous."""
        return x.index_select(dim, self.indices(rank, x.shape[dim]).to(x.device)).contiguous()


def check_setup(layout: Layout, case: Case, kernel: LocalKernel, device: str) -> None:
    """Raise :class:`DistSetupError` when ``layout`` cannot run ``case`` with ``kernel``."""
    s, p, name = case.seqlen_q, layout.world_size, layout.strategy

    def need(ok: bool, why: str):
        if not ok:
            raise DistSetupError(f"{name} (world size {p}) on {case.id}: {why}")

    need(name in STRATEGIES, f"unknown strategy; expected one of {', '.join(STRATEGIES)}")
    need(p >= 1, "world size must be >= 1")
    need(not case.varlen, "varlen cases are not sharded by the distributed strategies")
    need(
        not (case.windowed or case.softcap or case.alibi),
        "sliding window, softcap and ALiBi are not supported by the distributed strategies",
    )
    need(case.seqlen_q == case.seqlen_k, "seqlen_q must equal seqlen_k (self-attention)")
    if layout.hybrid:
        u = layout.ulysses_size
        need(
            u >= 2 and p % u == 0 and p // u >= 2,
            f"needs ulysses_size ({u}) >= 2 dividing the world size into >= 2 ring groups",
        )
        r = p // u
        need(
            case.heads_q % u == 0 and case.heads_kv % u == 0,
            f"heads_q={case.heads_q} and heads_kv={case.heads_kv} must be divisible by "
            f"ulysses_size {u}",
        )
        if layout.zigzag:
            need(
                s % (2 * r) == 0 and (s // r) % u == 0,
                f"seqlen {s} must split into {2 * r} zigzag chunks, and each ring rank's "
                f"{s // r if s % r == 0 else s / r:g} tokens {u} ways",
            )
        else:
            need(s % p == 0, f"seqlen {s} not divisible by the world size {p}")
    elif name == "zigzag":
        need(s % (2 * p) == 0, f"seqlen {s} not divisible into 2P = {2 * p} zigzag chunks")
    else:
        need(s % p == 0, f"seqlen {s} not divisible by the world size {p}")
        if name == "ulysses":
            need(
                case.heads_q % p == 0 and case.heads_kv % p == 0,
                f"heads_q={case.heads_q} and heads_kv={case.heads_kv} must both be divisible "
                f"by the world size {p}",
            )
    why = kernel.why_unsupported(case, device)
    if why:
        raise DistSetupError(f"{name}: local backend: {why}")


@dataclass
class Groups:
    """Process groups of one layout (None: the whole world)."""

    ulysses: object = None
    ring: object = None


def make_groups(layout: Layout, env: DistEnv) -> Groups:
    """Create the layout's groups (every rank must call this, in the same order)."""
    if not layout.hybrid:
        return Groups()
    u, r = layout.ulysses_size, layout.ring_size
    mine = Groups()
    for j in range(r):
        g = new_group([j * u + i for i in range(u)], env)
        if env.rank // u == j:
            mine.ulysses = g
    for i in range(u):
        g = new_group([j * u + i for j in range(r)], env)
        if env.rank % u == i:
            mine.ring = g
    return mine


def dist_attention(
    q, k, v, layout: Layout, groups: Groups, kernel: LocalKernel, causal: bool, scale: float
):
    """``(out, lse)`` of this rank's shard (B, S_local, H, D) under ``layout``; differentiable
    in q, k, v. Shapes are checked against the groups before any collective."""
    s, hq, hkv = q.shape[1], q.shape[2], k.shape[2]
    if k.shape[1] != s:
        raise DistSetupError(f"{layout.strategy}: local q has {s} tokens but k has {k.shape[1]}")
    if layout.strategy in ("ring", "zigzag"):
        if layout.zigzag and s % 2:
            raise DistSetupError(f"zigzag: local seqlen {s} must be even (two chunks per rank)")
        return ring_attention(q, k, v, kernel, causal, scale, groups.ring, layout.zigzag)
    u = dist.get_world_size(groups.ulysses or dist.group.WORLD)
    if hq % u or hkv % u:
        raise DistSetupError(
            f"{layout.strategy}: heads_q={hq} and heads_kv={hkv} must be "
            f"divisible by the Ulysses group size {u}"
        )
    if layout.strategy == "ulysses":
        return ulysses_attention(q, k, v, kernel, causal, scale, groups.ulysses)
    if layout.zigzag and (s * u) % 2:
        raise DistSetupError(f"{layout.strategy}: ring-local seqlen {s * u} must be even")
    return ulysses_attention(
        q, k, v, kernel, causal, scale, groups.ulysses, groups.ring, layout.zigzag
    )
