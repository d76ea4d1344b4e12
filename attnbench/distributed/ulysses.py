"""DeepSpeed-Ulysses sequence parallelism (Jacobs et al., 2023, arXiv:2309.14509), and the
Ulysses x ring hybrid (USP, Fang & Zhao, 2024, arXiv:2405.07719).

Ulysses: each of the ``P`` ranks holds a sequence shard (B, S/P, H, D). An all-to-all turns it
into a head shard (B, S, H/P, D); every rank runs full attention on its heads; a second
all-to-all turns the output back into a sequence shard. The lse (B, H/P, S) goes back the same
way to (B, H, S/P). Query and kv heads are both split P ways (kv head group ``r`` serves query
group ``r``), so ``heads_q`` and ``heads_kv`` must both be divisible by ``P``. The backward is
the reverse all-to-alls around the local kernel's backward (autograd Functions).

Hybrid: ``world = U x R``; ranks ``j*U .. j*U+U-1`` form Ulysses group ``j`` (inside a node:
all-to-all wants the fastest links) and ranks ``u, U+u, 2U+u, ...`` form ring group ``u``. The
all-to-all inside the Ulysses group gathers ring chunk ``j`` for ``H/U`` heads, and ring (or
zigzag ring) attention runs across the ``R`` ring ranks that hold the same heads.
"""

from __future__ import annotations

import torch

from .comm import HeadToSeq, SeqToHead, lse_head_to_seq
from .local import LocalKernel, local_attention
from .ring import ring_attention


def ulysses_attention(
    q,
    k,
    v,
    kernel: LocalKernel,
    causal: bool,
    scale: float,
    group=None,
    ring_group=None,
    zigzag: bool = False,
):
    """``(out, lse)`` of this rank's sequence shard. With ``ring_group``, the attention on the
    head shard is ring attention across that group (the hybrid)."""
    qh, kh, vh = (SeqToHead.apply(t, group) for t in (q, k, v))
    if ring_group is None:
        out, lse = local_attention(qh, kh, vh, kernel, causal, scale)
    else:
        out, lse = ring_attention(qh, kh, vh, kernel, causal, scale, ring_group, zigzag)
    out = HeadToSeq.apply(out, group)
    with torch.no_grad():
        lse = lse_head_to_seq(lse, group)
    return out, lse
