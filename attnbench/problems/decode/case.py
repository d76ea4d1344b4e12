"""The decode case (inference attention of a few new tokens against a KV cache), its cache
lengths, FLOPs, bytes and the device-memory estimate behind its refusal of oversized caches."""

from __future__ import annotations

import functools
import random
import zlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..base import BWD_FLOP_FACTOR, Case

CACHE_DISTS = ("fixed", "uniform")
SLOT_ALIGN = 16  # a contiguous cache has the next multiple of 16 above cache_len slots (1-16 spare)


@dataclass(frozen=True)
class DecodeCase(Case):
    """One decode step of ``batch`` sequences: each has ``q_len`` new query tokens (1; 2-16 for
    speculative decoding) whose keys and values are already the last ``q_len`` entries of its
    cache. A sequence of cache length ``n`` (new tokens included) lets its query token ``i`` see
    keys ``j <= n - q_len + i`` (causal among the new tokens, aligned bottom-right).

    Cache lengths: ``cache_lens`` lists them (batch = its length, cache_len = its max); else
    ``cache_dist`` ``fixed`` gives every sequence ``cache_len`` keys and ``uniform`` gives
    sequence 0 ``cache_len`` keys and draws the others uniformly in ``[q_len, cache_len]`` with a
    generator seeded by (batch, q_len, cache_len) alone: the lengths are a property of the case
    (the same on every run, seed, device and dtype), so FLOPs and bytes follow from the case.

    ``page_size`` 0: a contiguous cache (B, S_max, Hkv, D); else pages (num_pages, page_size,
    Hkv, D) addressed through an int32 block table (see :mod:`.inputs`).
    """

    problem: ClassVar[str] = "decode"
    batch: int
    heads_q: int
    heads_kv: int
    cache_len: int  # the longest cache (new tokens included)
    head_dim: int
    dtype: str = "bf16"
    softmax_scale: float | None = None
    q_len: int = 1
    cache_dist: str = "fixed"  # fixed | uniform (ignored when cache_lens is given)
    cache_lens: tuple[int, ...] | None = None  # explicit per-sequence lengths
    page_size: int = 0  # 0: contiguous cache

    # ---- derived -------------------------------------------------------------------------
    @property
    def lens(self) -> tuple[int, ...]:
        """Every sequence's cache length (new tokens included)."""
        if self.cache_lens is not None:
            return tuple(self.cache_lens)
        return cache_lengths(self.batch, self.q_len, self.cache_len, self.cache_dist)

    @property
    def paged(self) -> bool:
        return self.page_size > 0

    @property
    def id(self) -> str:
        """e.g. ``B16-H32/8-q1-kv32768u-p16-D128-bf16`` (``u``: uniform lengths; ``kv[5,17]``:
        explicit ones; ``p16``: pages of 16 keys, no ``p``: a contiguous cache)."""
        if self.cache_lens is not None:
            kv = "kv[" + ",".join(map(str, self.cache_lens)) + "]"
        else:
            kv = f"kv{self.cache_len}" + ("u" if self.cache_dist == "uniform" else "")
        parts = [f"B{self.batch}", self.heads_id(), f"q{self.q_len}", kv]
        if self.page_size:
            parts.append(f"p{self.page_size}")
        parts += [f"D{self.head_dim}", self.dtype]
        if self.cache_lens is None and self.cache_dist not in CACHE_DISTS:
            parts.append(f"dist-{self.cache_dist}")
        if self.softmax_scale is not None:
            parts.append(f"scale{self.softmax_scale:g}")
        return "-".join(parts)

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for an impossible case: a length below 1, a
        q_len above a cache length, a negative page size, or (on a machine with a CUDA GPU) a
        case whose inputs and reference do not fit the GPU's memory."""
        super().validate()
        if self.q_len < 1:
            raise ValueError(f"{self.id}: q_len must be >= 1, got {self.q_len}")
        if self.page_size < 0:
            raise ValueError(
                f"{self.id}: page_size must be >= 0 (0 = contiguous cache), got {self.page_size}"
            )
        if self.cache_lens is not None:
            if not self.cache_lens:
                raise ValueError(f"{self.id}: cache_lens is empty")
            if len(self.cache_lens) != self.batch:
                raise ValueError(
                    f"{self.id}: batch={self.batch} but cache_lens has {len(self.cache_lens)} lengths"
                )
            if min(self.cache_lens) < 1:
                raise ValueError(f"{self.id}: cache lengths must be >= 1, got {min(self.cache_lens)}")  # fmt: skip
            if self.cache_len != max(self.cache_lens):
                raise ValueError(
                    f"{self.id}: cache_len={self.cache_len} must be the longest of cache_lens "
                    f"({max(self.cache_lens)})"
                )
        else:
            if self.cache_dist not in CACHE_DISTS:
                raise ValueError(
                    f"{self.id}: cache_dist {self.cache_dist!r} not one of {', '.join(CACHE_DISTS)}"
                )
            if self.cache_len < 1:
                raise ValueError(f"{self.id}: cache_len must be >= 1, got {self.cache_len}")
        shortest = min(self.lens)
        if self.q_len > shortest:
            raise ValueError(
                f"{self.id}: q_len={self.q_len} exceeds a cache length ({shortest}); a cache "
                "length counts the q_len new tokens"
            )
        why = device_memory_refusal(self)
        if why:
            raise ValueError(f"{self.id}: {why}")


@functools.lru_cache(maxsize=4096)
def cache_lengths(batch: int, q_len: int, cache_len: int, dist: str) -> tuple[int, ...]:
    """The lengths of ``cache_dist`` (see :class:`DecodeCase`): ``fixed`` all ``cache_len``;
    ``uniform`` sequence 0 ``cache_len``, the rest uniform in ``[q_len, cache_len]`` (Python's
    ``random.Random`` seeded by crc32 of ``decode-uniform-B{batch}-q{q_len}-kv{cache_len}``)."""
    if dist != "uniform" or batch < 1:
        return (cache_len,) * max(batch, 0)
    rng = random.Random(zlib.crc32(f"decode-uniform-B{batch}-q{q_len}-kv{cache_len}".encode()))
    lo = min(q_len, cache_len)
    return (cache_len, *(rng.randint(lo, cache_len) for _ in range(batch - 1)))


# ---- the cache layout (shared with inputs.py: the estimate and the tensors agree) -------------
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def contiguous_slots(case: DecodeCase) -> int:
    """S_max of a contiguous cache: the next multiple of 16 above cache_len (1-16 NaN slots)."""
    return (case.cache_len // SLOT_ALIGN + 1) * SLOT_ALIGN


def pages_per_seq(case: DecodeCase) -> list[int]:
    return [cdiv(n, case.page_size) for n in case.lens]


def pool_pages(case: DecodeCase) -> tuple[int, int]:
    """(pages the sequences use, pages in the pool): the pool has ~3% spare NaN pages, 2 at
    least, so a kernel that follows a wrong table entry reads NaN."""
    used = sum(pages_per_seq(case))
    return used, used + max(2, used // 32)


def cache_slots(case: DecodeCase) -> int:
    """Key slots of the whole K (or V) cache tensor."""
    if case.paged:
        return pool_pages(case)[1] * case.page_size
    return case.batch * contiguous_slots(case)


# ---- FLOPs and bytes ---------------------------------------------------------------------------
def attended_pairs(case: DecodeCase) -> int:
    """(query token, key) pairs: token i of a length-n sequence sees n - q_len + i + 1 keys."""
    q = case.q_len
    return sum(q * n - q * (q - 1) // 2 for n in case.lens)


def decode_flops(case: DecodeCase, mode: str = "fwd") -> float:
    """4 x heads_q x head_dim x attended pairs (one QK and one PV product per pair). Decode is
    forward-only; other modes (never run) scale by flash-attention's backward factors."""
    return 4.0 * case.heads_q * case.head_dim * attended_pairs(case) * BWD_FLOP_FACTOR[mode]


def decode_bytes(case: DecodeCase, mode: str = "fwd") -> float | None:
    """The least memory traffic of one decode step: K and V of every attended key, read once per
    KV head (sum of lengths x Hkv x D x 2 tensors x itemsize), q read and out written (B x q_len x
    Hq x D x itemsize each), the fp32 lse written (B x Hq x q_len x 4), the int32 cache lengths
    (B x 4) and, for a paged cache, the block-table entries of the attended pages (x 4). None for
    the backward modes (decode has none)."""
    if mode != "fwd":
        return None
    size = case.torch_dtype.itemsize
    kv = 2 * sum(case.lens) * case.heads_kv * case.head_dim * size
    qo = 2 * case.batch * case.q_len * case.heads_q * case.head_dim * size
    lse = 4 * case.batch * case.heads_q * case.q_len
    table = 4 * sum(pages_per_seq(case)) if case.paged else 0
    return float(kv + qo + lse + 4 * case.batch + table)


# ---- device memory -----------------------------------------------------------------------------
def memory_estimate(case: DecodeCase) -> int:
    """Bytes a run of the case holds at once on its device, about: the inputs (K and V caches
    with their spare slots, q, an unused out-shaped dout, lengths, block table) and the largest
    reference workspace (one sequence's K and V upcast, its scores and probabilities). Backends'
    own working sets (decode_sdpa's gathered copy) come on top: they OOM as rows, not here."""
    size = case.torch_dtype.itemsize
    up = 8 if case.dtype == "fp32" else 4
    hkv, hq, d = case.heads_kv, case.heads_q, case.head_dim
    caches = 2 * cache_slots(case) * hkv * d * size
    q_like = 2 * case.batch * case.q_len * hq * d * size
    table = 4 * case.batch * (cdiv(case.cache_len, case.page_size) if case.paged else 1)
    n = case.cache_len
    ref = 2 * n * hkv * d * up + 3 * hq * case.q_len * n * up + 2 * n * hkv * d * size
    return caches + q_like + table + ref


@functools.lru_cache(maxsize=1)
def _gpu_memory() -> tuple[str, int] | None:
    if not torch.cuda.is_available():
        return None
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    return f"cuda:{dev} ({props.name})", int(props.total_memory)


def device_memory_refusal(case: DecodeCase) -> str | None:
    """Why the case cannot fit the GPU (:func:`memory_estimate` against the current CUDA
    device's total memory); None when it fits or this machine has no CUDA GPU (CPU-only machines
    are not checked; on a GPU machine every case of a config is, ``--device cpu`` too)."""
    gpu = _gpu_memory()
    if gpu is None:
        return None
    name, total = gpu
    need = memory_estimate(case)
    if need <= total:
        return None
    gib = 2.0**30
    caches = 2 * cache_slots(case) * case.heads_kv * case.head_dim * case.torch_dtype.itemsize
    return (
        f"the KV cache is too large for {name}: about {need / gib:.1f} GiB needed (K+V caches "
        f"{caches / gib:.1f} GiB), {total / gib:.1f} GiB on the device"
    )
