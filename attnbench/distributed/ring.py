"""Ring attention and zigzag ring attention (forward and backward) over torch.distributed.

Ring attention (Liu, Zaharia, Abbeel, 2023, arXiv:2310.01889): rank ``r`` of ``P`` holds a
shard of q, k, v. For ``P`` steps it attends its queries to the k/v block it holds while the
block travels on to rank ``r + 1`` (batched ``isend``/``irecv``, started before the block's
compute so the transfer overlaps it); partial results are merged by their lse
(:func:`attnbench.distributed.merge.merge_into`, in place, one fused pass on the GPU). At step ``s`` the block comes from rank
``src = r - s (mod P)``.

Causal, contiguous shards (rank r holds chunk r): blocks from later ranks (``src > r``) are
skipped and the diagonal block (``src == r``) is causal, so rank P-1 works P times as long as
rank 0 (the load imbalance zigzag removes).

Zigzag (ring-flash-attention's ``zigzag_ring_flash_attn``): the sequence is cut into ``2P``
chunks and rank ``r`` holds chunks ``r`` and ``2P-1-r``. Step 0 is causal over the rank's own
two chunks; a block from ``src < r`` is seen by all local queries through its first chunk only;
a block from ``src > r`` is seen fully by the second local chunk only. Every rank does the same
work at every step.

Backward: the same ring. dq accumulates locally in fp32; each k/v block travels with its fp32
dk/dv accumulator, every rank adds its block gradient (``LocalKernel.backward`` with the global
out and lse), and after ``P`` hops the accumulator is back on the block's owner.
"""

from __future__ import annotations

import torch

from .comm import RingComm
from .local import LocalKernel
from .merge import merge_into, start_from

_KV_TAG, _DKV_TAG = 0, 1


def _blocks(rank: int, src: int, step: int, causal: bool, zigzag: bool, seqlen: int):
    """Which part of this step's block to compute: ``(q rows, kv rows, causal)`` as slices of the
    local sequence, or None to skip."""
    every = slice(0, seqlen)
    if not causal:
        return every, every, False
    if step == 0:
        return every, every, True
    if not zigzag:
        return (every, every, False) if src < rank else None
    half = seqlen // 2
    if src < rank:
        return every, slice(0, half), False
    return slice(half, seqlen), every, False


class RingAttnFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kernel: LocalKernel, causal: bool, scale: float, zigzag: bool, group):
        comm = RingComm(group, _KV_TAG)
        p, rank, s = comm.world_size, comm.rank, q.shape[1]
        out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.empty(q.shape[0], q.shape[2], s, dtype=torch.float32, device=q.device)
        kb, vb = k, v
        for step in range(p):
            if step + 1 < p:
                nk, nv = comm.send_recv(kb), comm.send_recv(vb)
                comm.commit()
            blk = _blocks(rank, (rank - step) % p, step, causal, zigzag, s)
            if blk is not None:
                qs, ks, c = blk
                bo, bl = kernel.forward(q[:, qs], kb[:, ks], vb[:, ks], c, scale)
                if step == 0:
                    start_from(out[:, qs], lse[:, :, qs], bo, bl)
                else:
                    merge_into(out[:, qs], lse[:, :, qs], bo, bl)
            if step + 1 < p:
                comm.wait()
                kb, vb = nk, nv
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.kernel, ctx.causal, ctx.scale, ctx.zigzag, ctx.group = (
            kernel,
            causal,
            scale,
            zigzag,
            group,
        )
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        kernel, causal, scale, zigzag = ctx.kernel, ctx.causal, ctx.scale, ctx.zigzag
        kv_comm, dkv_comm = RingComm(ctx.group, _KV_TAG), RingComm(ctx.group, _DKV_TAG)
        p, rank, s = kv_comm.world_size, kv_comm.rank, q.shape[1]
        dout = dout.contiguous()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        kb, vb = k, v
        dk = dv = rk = rv = None
        for step in range(p):
            if step + 1 < p:
                nk, nv = kv_comm.send_recv(kb), kv_comm.send_recv(vb)
                kv_comm.commit()
            blk = _blocks(rank, (rank - step) % p, step, causal, zigzag, s)
            part = None
            if blk is not None:
                qs, ks, c = blk
                bdq, bdk, bdv = kernel.backward(
                    dout[:, qs],
                    q[:, qs],
                    kb[:, ks],
                    vb[:, ks],
                    out[:, qs],
                    lse[:, :, qs].contiguous(),
                    c,
                    scale,
                )
                dq[:, qs].add_(bdq)
                part = (ks, bdk, bdv)
            if step > 0:
                dkv_comm.wait()
                dk, dv = rk, rv  # received in the previous step
            else:
                dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
                dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
            if part is not None:
                ks, bdk, bdv = part
                dk[:, ks].add_(bdk)
                dv[:, ks].add_(bdv)
            if p > 1:
                rk, rv = dkv_comm.send_recv(dk), dkv_comm.send_recv(dv)
                dkv_comm.commit()
            if step + 1 < p:
                kv_comm.wait()
                kb, vb = nk, nv
        if p > 1:
            dkv_comm.wait()
            dk, dv = rk, rv
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def ring_attention(
    q, k, v, kernel: LocalKernel, causal: bool, scale: float, group=None, zigzag: bool = False
):
    """``(out, lse)`` of this rank's query shard; q, k, v (B, S_local, H, D) shards of ``group``
    (contiguous for ``zigzag=False``, chunks r and 2P-1-r for ``zigzag=True``)."""
    return RingAttnFunc.apply(q, k, v, kernel, causal, scale, zigzag, group)
