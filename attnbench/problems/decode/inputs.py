"""Seeded inputs of a decode case: q, the K/V cache (contiguous or paged), the lengths and the
block table.

Layouts (flash-attn's ``flash_attn_with_kvcache`` and vLLM's): q (B, q_len, Hq, D); a contiguous
cache (B, S_max, Hkv, D) with S_max the next multiple of 16 above ``cache_len``; a paged cache
(num_pages, page_size, Hkv, D) with an int32 block table (B, ceil(cache_len / page_size)) whose
entry ``[b, i]`` is the pool page holding keys ``[i * page_size, (i + 1) * page_size)`` of
sequence ``b``. Pages are handed out in a seeded random order (never the identity), so a kernel
that ignores the table fails.

Every slot no sequence owns holds NaN (fp16, bf16 and fp32 all have one): the slots past each
sequence's length in a contiguous cache, the rest of each sequence's last page, the pool's spare
pages (~3%, at least 2), and the pages that table entries past a sequence's last page point at
(spare pages, so such entries are valid page numbers). A kernel that reads outside the cache
gets NaN into its output, even where it masks the scores (0 x NaN is NaN in P @ V), and fails
accuracy instead of passing by luck.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..base import case_seed, seeded_randn
from .case import DecodeCase, cdiv, contiguous_slots, pages_per_seq, pool_pages


@dataclass
class DecodeInputs:
    q: torch.Tensor  # (B, q_len, Hq, D)
    k_cache: torch.Tensor  # (B, S_max, Hkv, D) or (num_pages, page_size, Hkv, D)
    v_cache: torch.Tensor
    cache_lens: torch.Tensor  # int32 (B,) on the device: keys per sequence, new tokens included
    block_table: torch.Tensor | None  # int32 (B, max_pages) on the device; None: contiguous
    lens: tuple[int, ...]  # cache_lens as python ints (no device sync to read them)
    dout: torch.Tensor  # shaped like out; unused (decode has no backward)

    @property
    def differentiable(self) -> tuple[torch.Tensor, ...]:
        """Nothing is differentiated; the runner resets the grads of these."""
        return (self.q,)

    @property
    def paged(self) -> bool:
        return self.block_table is not None

    @property
    def page_size(self) -> int:
        """Keys per page; 0 for a contiguous cache."""
        return self.k_cache.shape[1] if self.paged else 0

    @property
    def max_cache_len(self) -> int:
        """The longest cache length (for kernels that size their grid by it without a sync)."""
        return max(self.lens)

    def sequence_kv(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of sequence ``b``: (len_b, Hkv, D) each (views when contiguous,
        gathered from its pages when paged)."""
        n = self.lens[b]
        if not self.paged:
            return self.k_cache[b, :n], self.v_cache[b, :n]
        pages = self.block_table[b, : cdiv(n, self.page_size)].long()
        return self.k_cache[pages].flatten(0, 1)[:n], self.v_cache[pages].flatten(0, 1)[:n]

    def contiguous_kv(self, slots: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V gathered to (B, slots, Hkv, D) (default ``max_cache_len``), zeros past each
        sequence's length (never NaN: for backends that mask the padding themselves)."""
        slots = self.max_cache_len if slots is None else slots
        shape = (self.q.shape[0], slots, *self.k_cache.shape[2:])
        k, v = self.k_cache.new_zeros(shape), self.v_cache.new_zeros(shape)
        for i, n in enumerate(self.lens):
            k[i, :n], v[i, :n] = self.sequence_kv(i)
        return k, v

    def page_csr(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A paged cache in FlashInfer's CSR form, int32 on the device: ``kv_indptr`` (B + 1,)
        (each sequence's first entry in ``kv_indices``), ``kv_indices`` (the pages each sequence
        owns, in order) and ``kv_last_page_len`` (B,) (keys in each sequence's last page)."""
        if not self.paged:
            raise ValueError("page_csr: the cache is contiguous")
        ps, dev = self.page_size, self.q.device
        per = [cdiv(n, ps) for n in self.lens]
        indices = torch.cat([self.block_table[b, :p] for b, p in enumerate(per)])
        indptr = torch.tensor([0, *itertools.accumulate(per)], dtype=torch.int32, device=dev)
        last = [n - (p - 1) * ps for n, p in zip(self.lens, per)]
        return indptr, indices, torch.tensor(last, dtype=torch.int32, device=dev)


def page_order(case: DecodeCase, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(block table (B, max_pages) int32 on the CPU, spare pages): pool pages in a seeded random
    order, never the identity; entries past a sequence's pages point at spare (NaN) pages."""
    used, total = pool_pages(case)
    g = torch.Generator().manual_seed(case_seed(case, seed + 1))
    perm = torch.randperm(total, generator=g)
    if torch.equal(perm[:used], torch.arange(used)):
        perm = perm.roll(1)  # perm[-1] >= used comes first: not the identity
    per_seq = pages_per_seq(case)
    max_pages = cdiv(case.cache_len, case.page_size)
    spare = perm[used:]
    table = torch.empty(case.batch, max_pages, dtype=torch.int32)
    start = 0
    for b, n in enumerate(per_seq):
        table[b, :n] = perm[start : start + n]
        rest = max_pages - n
        table[b, n:] = spare[torch.arange(rest) % len(spare)]
        start += n
    return table, spare


def make_inputs(case: DecodeCase, device="cpu", seed: int = 0) -> DecodeInputs:
    """Standard-normal q, then each sequence's keys and values (sequence by sequence, so the
    fp32 draws stay one sequence large), in the case's dtype, seeded by (case, seed); every
    other cache slot NaN (see the module docstring)."""
    randn = seeded_randn(case, device, seed)  # validates the case
    b, hq, hkv, d = case.batch, case.heads_q, case.heads_kv, case.head_dim
    lens = case.lens
    q = randn(b, case.q_len, hq, d)
    nan = dict(fill_value=float("nan"), dtype=case.torch_dtype, device=device)
    if not case.paged:
        shape = (b, contiguous_slots(case), hkv, d)
        k_cache, v_cache = torch.full(shape, **nan), torch.full(shape, **nan)
        for i, n in enumerate(lens):
            k_cache[i, :n] = randn(n, hkv, d)
            v_cache[i, :n] = randn(n, hkv, d)
        table = None
    else:
        ps = case.page_size
        _, total = pool_pages(case)
        table_cpu, _ = page_order(case, seed)
        k_cache = torch.full((total, ps, hkv, d), **nan)
        v_cache = torch.full((total, ps, hkv, d), **nan)
        k_slots, v_slots = k_cache.view(total * ps, hkv, d), v_cache.view(total * ps, hkv, d)
        offs = torch.arange(ps)
        for i, n in enumerate(lens):
            pages = table_cpu[i, : cdiv(n, ps)].long()
            slots = (pages[:, None] * ps + offs[None, :]).flatten()[:n].to(device)
            k_slots[slots] = randn(n, hkv, d)
            v_slots[slots] = randn(n, hkv, d)
        table = table_cpu.to(device)
    return DecodeInputs(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        cache_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        block_table=table,
        lens=lens,
        dout=torch.zeros_like(q),
    )
