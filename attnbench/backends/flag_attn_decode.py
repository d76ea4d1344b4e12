"""FlagAttention's two decode kernels, benchmarked as shipped (comparison targets; nothing of
FlagAttention is part of attnbench). FlagAttention is not on the package registry: put its
``src`` on ``PYTHONPATH`` (see ``flag_attn_piecewise`` and the README); without it both
backends say ``flag_attn not installed``. CUDA only (its wrappers allocate on ``"cuda"``).

``flag_attn_split_kv``: ``flag_attn.flash_attention_split_kv(q, k, v, causal, sm_scale)``
(``split_kv.py``, "flash decoding") on a contiguous cache.

- Layout (B, H, S, D): ``prepare`` passes transposed views, no copies (its kernels take
  strides): q (B, Hq, q_len, D), k and v ``cache[:, :n]`` as (B, Hkv, n, D).
- One key length for the whole batch (``N = k.shape[2]``; no per-sequence lengths): cases whose
  sequences differ in length are refused, as are paged caches.
- ``causal=True`` with its ``P_SEQ = N - M``: bottom-right, the decode problem's convention;
  q_len > 1 runs.
- Head dims 16/32/64/128 (``assert Dk in {16, 32, 64, 128}``), GQA (``H % Hk == 0``).
- No lse: it computes the combined log-normalizer but returns only the output.
- Its split partials are hard-coded fp16 (``multiple_o = torch.empty(..., dtype=torch.float16)``),
  and with a single split it returns that fp16 buffer itself: for bf16 inputs the output is
  cast back to bf16 in ``forward`` (one elementwise kernel, timed), and the fp16 round trip is in
  the graded result. fp16/bf16 only (fp32 would go through those fp16 partials).

``flag_attn_paged``: ``flag_attn.paged_attention(query, key_cache, value_cache, context_lens,
block_tables, attn_scale, max_context_len, num_splits=0)`` (``paged.py``, vLLM's
PagedAttention v1/v2 in Triton).

- Layout: query (B, Hq, D), so q_len 1 only; caches (num_blocks, Hkv, block_size, D) (the
  signature's comments and the kernel's strides), K and V with the same strides. The decode
  problem's pages are (num_pages, page_size, Hkv, D): ``prepare`` copies them to
  ``permute(0, 2, 1, 3).contiguous()`` (untimed; the copy doubles the cache's memory). The
  block table and context lengths are the problem's int32 ones (a length includes the new
  token, which sees every key).
- Contiguous caches are refused (this is the paged kernel; ``flag_attn_split_kv`` runs them).
- Page sizes: powers of two (``tl.arange(0, KV_BLOCK_SIZE)`` tiles a page); with GQA
  (Hq != Hkv) at least 16 (``assert padded_group_size == 1 or kv_block_size >= 16``). GQA
  groups: powers of two (its split reduction tiles the group with
  ``tl.arange(0, QUERY_GROUP_SIZE)``). Head dims 16-256, powers of two
  (``assert head_size in (16, 32, 64, 128, 256, 512)``). No lse.
- ``num_splits=0``: its own heuristic (tuned for A100) picks the partitions; not reported.

Both: caches of 2^31 elements or more are refused: their Triton kernels form offsets as int32
products (program id x stride, block number x stride) that would wrap (an out-of-bounds access
can take the whole run's CUDA context down). An assert of FlagAttention, or a Triton error
compiling its kernel for a case, becomes an ``unsupported`` row with the message.
"""

from __future__ import annotations

from ..problems.decode import page_size_refusal
from ..problems.decode.case import cache_slots
from .base import Backend, Capabilities, Prepared, exception_chain, register
from .flag_attn_piecewise import FlagAttnPiecewise

INT32_ELEMENTS = 2**31

_piecewise = FlagAttnPiecewise()  # its availability: the same messages for every flag_attn backend


def flag_attn_availability(device: str, entry: str) -> str | None:
    """None when ``flag_attn`` imports and has ``entry``, else why not."""
    why = _piecewise.availability(device)
    if why:
        return why
    import flag_attn

    if not hasattr(flag_attn, entry):
        return f"flag_attn has no {entry} (an older FlagAttention)"
    return None


def flag_attn_refusal(e: BaseException) -> str | None:
    """The reason when ``e`` is FlagAttention refusing a case: an ``assert`` in its code, or a
    Triton error raised while its kernels compile or launch for this case."""
    for err in exception_chain(e):
        frames = []
        tb = err.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_filename.replace("\\", "/"))
            tb = tb.tb_next
        if not any("/flag_attn/" in f for f in frames):
            continue
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, AssertionError):
            return f"unsupported: flag_attn refused: {text[:300]}"
        if type(err).__module__.split(".")[0] == "triton":
            return f"unsupported: flag_attn's Triton kernel cannot run this case: {text[:300]}"
    return None


def _int32_refusal(case) -> str | None:
    n = cache_slots(case) * case.heads_kv * case.head_dim
    if n >= INT32_ELEMENTS:
        return (
            f"unsupported: a K cache of {n} elements (>= 2^31): FlagAttention's Triton kernels "
            "compute offsets in int32, which would wrap"
        )
    return None


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@register
class FlagAttnSplitKV(Backend):
    name = "flag_attn_split_kv"
    description = "FlagAttention's flash_attention_split_kv (Triton flash-decoding), as shipped"
    caps = Capabilities(
        problem="decode",
        devices={"cuda"},
        dtypes={"fp16", "bf16"},
        head_dims={16, 32, 64, 128},
        backward=False,
        lse=False,
        features={"q_len_gt_1"},
    )

    def availability(self, device):
        return flag_attn_availability(device, "flash_attention_split_kv")

    def extra_check(self, case, device, mode):
        if len(set(case.lens)) > 1:
            return (
                "unsupported: per-sequence cache lengths (flag_attn's split_kv attention takes "
                "one key length for the whole batch)"
            )
        return _int32_refusal(case)

    def refusal(self, e):
        return flag_attn_refusal(e)

    def prepare(self, inp, case):
        n = inp.lens[0]
        q = inp.q.transpose(1, 2)  # (B, Hq, q_len, D)
        k = inp.k_cache[:, :n].transpose(1, 2)  # (B, Hkv, n, D), a view
        v = inp.v_cache[:, :n].transpose(1, 2)
        return Prepared((inp.q,), {"q": q, "k": k, "v": v})

    def forward(self, p, case):
        import flag_attn

        a = p.args
        out = flag_attn.flash_attention_split_kv(
            a["q"], a["k"], a["v"], causal=True, sm_scale=case.scale
        )
        out = out.transpose(1, 2)  # (B, q_len, Hq, D)
        if out.dtype != a["q"].dtype:  # its single-split path returns its fp16 buffer
            out = out.to(a["q"].dtype)
        return out, None


@register
class FlagAttnPaged(Backend):
    name = "flag_attn_paged"
    description = "FlagAttention's paged_attention (Triton vLLM-style PagedAttention), as shipped"
    caps = Capabilities(
        problem="decode",
        devices={"cuda"},
        dtypes={"fp16", "bf16"},
        head_dims={16, 32, 64, 128, 256},
        backward=False,
        lse=False,
        features={"paged"},
    )

    def availability(self, device):
        return flag_attn_availability(device, "paged_attention")

    def extra_check(self, case, device, mode):
        if not case.paged:
            return (
                "unsupported: contiguous cache (flag_attn's paged_attention reads pages "
                "through a block table; flag_attn_split_kv runs contiguous caches)"
            )
        why = page_size_refusal(case, _is_pow2)
        if why:
            return f"{why} (flag_attn's paged_attention tiles a page with tl.arange: powers of two)"
        group = case.heads_q // case.heads_kv
        if group > 1 and case.page_size < 16:
            return (
                f"unsupported: page size {case.page_size} with GQA (flag_attn's "
                "paged_attention asserts pages of 16+ keys when Hq != Hkv)"
            )
        if not _is_pow2(group):
            return (
                f"unsupported: GQA group {group} (flag_attn's paged_attention reduces its "
                "splits with tl.arange over the group: powers of two)"
            )
        return _int32_refusal(case)

    def refusal(self, e):
        return flag_attn_refusal(e)

    def prepare(self, inp, case):
        # (num_pages, page_size, Hkv, D) -> its (num_blocks, Hkv, block_size, D), one copy each
        k = inp.k_cache.permute(0, 2, 1, 3).contiguous()
        v = inp.v_cache.permute(0, 2, 1, 3).contiguous()
        args = dict(
            q=inp.q[:, 0].contiguous(),  # (B, Hq, D): q_len is 1
            k=k,
            v=v,
            context_lens=inp.cache_lens,
            block_tables=inp.block_table,
            max_context_len=inp.max_cache_len,
        )
        return Prepared((inp.q,), args)

    def forward(self, p, case):
        import flag_attn

        a = p.args
        out = flag_attn.paged_attention(
            query=a["q"],
            key_cache=a["k"],
            value_cache=a["v"],
            context_lens=a["context_lens"],
            block_tables=a["block_tables"],
            attn_scale=case.scale,
            max_context_len=a["max_context_len"],
            num_splits=0,
        )
        return out[:, None], None  # (B, 1, Hq, D)
