"""``flashinfer``: FlashInfer's paged-KV attention wrappers on the decode problem::

    pip install -e ".[flashinfer]"      # or, on the GPU machine: tools/gpu/flashinfer.sh
    attnbench perf --sweep decode_seqlen --only flashinfer,flash_attn_kvcache,decode_triton

- q_len 1: ``BatchDecodeWithPagedKVCacheWrapper``; q_len > 1 (speculative decoding):
  ``BatchPrefillWithPagedKVCacheWrapper`` with ``causal=True``, whose mask is aligned
  bottom-right per request (its docstring's example builds the same mask as
  ``tril(diagonal=kv_len - qo_len)``): the decode problem's convention.
- The cache, in the ``NHD`` layout, is passed as the tuple ``(k_cache, v_cache)`` of
  (num_pages, page_size, Hkv, D) tensors; the pages in FlashInfer's CSR form
  (:meth:`~attnbench.problems.decode.DecodeInputs.page_csr`: ``kv_indptr``, ``kv_indices``,
  ``kv_last_page_len``, int32). A contiguous cache (B, S_max, Hkv, D) is that layout with one
  page of S_max slots per sequence (``indptr = 0..B``, ``indices = 0..B-1``,
  ``last_page_len`` = the lengths), no copy; ``kernel_config`` says so, as FlashInfer's
  schedulers split a sequence's KV in pages and may split such a cache less.
- ``prepare`` (untimed, the row's ``plan_ms``) allocates the 128 MB float workspace (zeros,
  as the constructor's docstring asks) and calls ``plan(...)`` with the CSR, the heads, the
  head dim, the page size, ``q_data_type``/``kv_data_type`` and ``sm_scale``; ``forward`` calls
  ``run(q, (k_cache, v_cache), return_lse=True)`` only.
- JIT: FlashInfer builds its kernel module (nvcc) inside ``plan()``, i.e. in the first
  ``prepare`` of a configuration, which the runner neither times nor records; ``first_call_s``
  is the first ``run`` only.
- lse: FlashInfer's is base 2 (``prefill.py``: "Kernels write base-2 LSE";
  ``BatchPrefillWithPagedKVCacheWrapper.run``'s ``lse_base`` defaults to ``"log2"``, "FlashInfer's
  convention, max + log2(sum(exp2(...)))"; the decode wrapper has no other base). ``forward``
  multiplies it by ln 2 (one elementwise kernel of B x Hq x q_len floats inside the timed
  call) and returns it as (B, Hq, q_len); out (B, q_len, Hq, D).
- fp16/bf16, head dims 64/128/256 (the ones FlashInfer ships and tests everywhere; others
  may JIT but are not declared), sm80 or newer. What FlashInfer refuses at run time
  (``NotImplementedError``/``ValueError`` from its Python wrappers, or an "unsupported" error of
  its kernels) becomes an ``unsupported`` row with its message.
"""

from __future__ import annotations

import importlib
import importlib.util
import math

import torch

from .base import Backend, Capabilities, Prepared, Unsupported, exception_chain, register

LN2 = math.log(2.0)
WORKSPACE_BYTES = 128 * 1024 * 1024  # FlashInfer's recommended float workspace

_module = None
_import_error: str | None = None


def flashinfer_module():
    """``flashinfer``, imported on first use (None when it cannot be imported)."""
    global _module, _import_error
    if _module is None and _import_error is None:
        if importlib.util.find_spec("flashinfer") is None:
            _import_error = "flashinfer not installed (pip install -e '.[flashinfer]')"
            return None
        try:
            _module = importlib.import_module("flashinfer")
        except Exception as e:  # a missing dependency, a CUDA mismatch, ...
            _import_error = f"flashinfer import failed: {type(e).__name__}: {e}"
    return _module


def page_metadata(inp) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(kv_indptr, kv_indices, kv_last_page_len, page_size)`` of ``inp``'s cache for
    FlashInfer, int32 on the device: a paged cache's CSR, or a contiguous (B, S_max, Hkv, D)
    cache as one page of S_max slots per sequence."""
    if inp.paged:
        indptr, indices, last = inp.page_csr()
        return indptr, indices, last, inp.page_size
    b, dev = inp.q.shape[0], inp.q.device
    indptr = torch.arange(b + 1, dtype=torch.int32, device=dev)
    indices = torch.arange(b, dtype=torch.int32, device=dev)
    return indptr, indices, inp.cache_lens, inp.k_cache.shape[1]


def _from_flashinfer(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if "/flashinfer/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


@register
class FlashInferDecode(Backend):
    name = "flashinfer"
    description = (
        "FlashInfer BatchDecodeWithPagedKVCacheWrapper (q_len 1) / "
        "BatchPrefillWithPagedKVCacheWrapper (q_len > 1, causal), NHD pages, plan() in prepare"
    )
    caps = Capabilities(
        problem="decode",
        devices={"cuda"},
        dtypes={"fp16", "bf16"},
        head_dims={64, 128, 256},
        backward=False,
        lse=True,
        features={"paged", "q_len_gt_1"},
    )

    def availability(self, device):
        if flashinfer_module() is None:
            return _import_error
        if device == "cuda" and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if major < 8:
                return f"flashinfer runs here on sm80 or newer (this GPU is sm{major}{minor})"
        return None

    def refusal(self, e):
        for err in exception_chain(e):
            text = str(err).strip()
            low = text.lower()
            refused = isinstance(err, NotImplementedError | ValueError) or (
                isinstance(err, RuntimeError) and ("not supported" in low or "unsupported" in low)
            )
            if refused and _from_flashinfer(err):
                line = text.splitlines()[0] if text else type(err).__name__
                return f"unsupported: flashinfer refused: {line[:300]}"
        return None

    def prepare(self, inp, case):
        fi = flashinfer_module()
        if fi is None:
            raise Unsupported(_import_error)
        q = inp.q
        b, q_len, hq, d = q.shape
        hkv = inp.k_cache.shape[2]
        indptr, indices, last, page_size = page_metadata(inp)
        workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
        common = dict(
            pos_encoding_mode="NONE",
            sm_scale=case.scale,
            q_data_type=q.dtype,
            kv_data_type=inp.k_cache.dtype,
        )
        if q_len == 1:
            wrapper = fi.BatchDecodeWithPagedKVCacheWrapper(workspace, kv_layout="NHD")
            wrapper.plan(indptr, indices, last, hq, hkv, d, page_size, **common)
            q_arg = q[:, 0]  # (B, Hq, D)
        else:
            wrapper = fi.BatchPrefillWithPagedKVCacheWrapper(workspace, kv_layout="NHD")
            qo_indptr = torch.arange(0, (b + 1) * q_len, q_len, dtype=torch.int32, device=q.device)
            wrapper.plan(
                qo_indptr, indptr, indices, last, hq, hkv, d, page_size, causal=True, **common
            )
            q_arg = q.reshape(b * q_len, hq, d)  # ragged (total_q, Hq, D), qo_indptr above
        args = dict(
            wrapper=wrapper,
            workspace=workspace,
            q=q_arg,
            kv=(inp.k_cache, inp.v_cache),
            shape=(b, q_len, hq, d),
            contiguous=not inp.paged,
        )
        return Prepared((q,), args)

    def forward(self, p, case):
        a = p.args
        b, q_len, hq, d = a["shape"]
        out, lse = a["wrapper"].run(a["q"], a["kv"], return_lse=True)
        out = out.view(b, q_len, hq, d)
        lse = lse.view(b, q_len, hq).transpose(1, 2) * LN2  # base 2 -> natural log
        return out, lse

    def kernel_config(self, p, case, mode):
        """The wrapper, the backend FlashInfer resolved (where it says), and the layout."""
        a = p.args
        w = a["wrapper"]
        kind = "decode" if a["shape"][1] == 1 else "prefill (causal)"
        try:
            backend = getattr(w, "resolved_backend", None)
        except Exception:  # a property that cannot answer: name none
            backend = None
        text = f"{kind} wrapper" + (f", backend {backend}" if backend else "")
        if a["contiguous"]:
            text += ", contiguous cache as 1 page per sequence"
        return text
