"""Decode: inference attention of ``q_len`` new tokens per sequence (1; 2-16 for speculative
decoding) against each sequence's KV cache, contiguous or paged, with per-sequence lengths.

The cache length of a sequence counts its new tokens (their keys are its last ``q_len``): query
token ``i`` of a sequence of length ``n`` sees keys ``j <= n - q_len + i`` (bottom-right causal
among the new tokens). Graded: out and lse, forward only (no gradients; modes ``[fwd]``).
FLOPs: 4 x Hq x D x attended pairs. Bytes: K and V of the attended keys once per KV head, q, out,
the fp32 lse, the lengths and the block-table entries read (:func:`.case.decode_bytes`).

The case :class:`DecodeCase` (id e.g. ``B16-H32/8-q1-kv32768u-p16-D128-bf16``), the grid
:class:`DecodeGrid`, inputs :class:`DecodeInputs` (NaN in every slot no sequence owns; pages in
a random order), the reference :func:`reference`. Backends declare ``Capabilities(problem=
"decode", backward=False, features={"paged", "q_len_gt_1"})`` and may refuse page sizes with
:func:`page_size_refusal`::

    problem: decode
    cases:
      - {batch: 16, heads_q: 32, heads_kv: 8, head_dim: 128, q_len: 1,
         cache_len: [4096, 32768], cache_dist: uniform, page_size: [0, 16]}
"""

from __future__ import annotations

from ..base import Problem
from .case import (
    DecodeCase,
    attended_pairs,
    cache_lengths,
    decode_bytes,
    decode_flops,
    memory_estimate,
)
from .grid import DecodeConfigFile, DecodeGrid
from .inputs import DecodeInputs, make_inputs, page_order
from .reference import DecodeRef, decode_ref, reference, sequence_attention


def needs(case: DecodeCase, mode: str) -> list[tuple[str, str]]:
    """The capabilities a decode case asks of a backend (``Capabilities`` field or feature,
    reason)."""
    wants = [
        (mode != "fwd", "backward", "backward (decode is forward-only: run --modes fwd)"),
        (case.paged, "paged", "paged KV cache"),
        (case.q_len > 1, "q_len_gt_1", "q_len > 1 (speculative decoding)"),
        (case.gqa, "gqa", "GQA/MQA (heads_kv != heads_q)"),
    ]
    return [(cap, why) for wanted, cap, why in wants if wanted]


def page_size_refusal(case: DecodeCase, page_sizes) -> str | None:
    """The ``unsupported`` reason of a backend that takes only ``page_sizes`` (a set of page
    sizes, or a callable ``page_size -> bool``; None: every page size >= 1) for a paged case."""
    if not case.paged or page_sizes is None:
        return None
    ok = page_sizes(case.page_size) if callable(page_sizes) else case.page_size in page_sizes
    if ok:
        return None
    has = "" if callable(page_sizes) else f" (takes {', '.join(map(str, sorted(page_sizes)))})"
    return f"unsupported: page size {case.page_size}{has}"


DECODE = Problem(
    name="decode",
    description="inference attention of q_len new tokens against a KV cache (contiguous/paged)",
    case_type=DecodeCase,
    config=DecodeConfigFile,
    grads=(),
    make_inputs=make_inputs,
    reference=reference,
    flops=decode_flops,
    bytes=decode_bytes,
    needs=needs,
    # GB/s along the cache length, a line per batch; latency along the batch, a line per length
    plot_axes=(("cache_len", "gbps", "batch"), ("batch", "latency_ms", "cache_len")),
)

__all__ = [
    "DECODE",
    "DecodeCase",
    "DecodeConfigFile",
    "DecodeGrid",
    "DecodeInputs",
    "DecodeRef",
    "attended_pairs",
    "cache_lengths",
    "decode_bytes",
    "decode_flops",
    "decode_ref",
    "make_inputs",
    "memory_estimate",
    "needs",
    "page_order",
    "page_size_refusal",
    "reference",
    "sequence_attention",
]
