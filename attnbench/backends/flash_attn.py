"""Upstream flash-attn 2 (Dao-AILab/flash-attention), one backend per public entry point::

    attnbench perf --only flash_attn_func,flash_attn_varlen_qkvpacked_func ...

Backends and the leaves gradients are taken against:

- ``flash_attn_func``: q (B, Sq, Hq, D), k, v (B, Sk, Hkv, D)
- ``flash_attn_kvpacked_func``: q; kv (B, Sk, 2, Hkv, D)
- ``flash_attn_qkvpacked_func``: qkv (B, S, 3, H, D) (needs Hq == Hkv and Sq == Sk)
- ``flash_attn_varlen_func``: q (total_q, Hq, D), k, v (total_k, Hkv, D), int32 ``cu_seqlens``
- ``flash_attn_varlen_kvpacked_func``: q; kv (total_k, 2, Hkv, D)
- ``flash_attn_varlen_qkvpacked_func``: qkv (total, 3, H, D) (same q and k lengths)

FlashAttention-2 (Dao, 2023, arXiv:2307.08691) computes
``out = softmax(scale * q k^T + bias) v`` tile by tile with the online softmax, never storing the
(Sq, Sk) score matrix, and keeps ``softmax_lse_i = log sum_j exp(s_ij)`` per row for the backward.

- Packing (``pack_qkv``, ``pack_kv``, dense -> varlen flattening with int32 ``cu_seqlens``) happens
  in :meth:`FlashAttn.prepare`, outside the timed region; ``grads`` unpacks the packed leaves'
  gradients back to attnbench layout with the same functions.
- Varlen entry points run varlen cases and also dense cases, as B equal-length sequences
  (``cu_seqlens = 0, S, 2S, ...``), the way users feed them; the other entry points report varlen
  cases unsupported. Malformed ``cu_seqlens`` raise ``ValueError`` in ``prepare``.
- ``return_attn_probs=True`` returns ``(out, softmax_lse, S_dmask)``; ``S_dmask`` is only computed
  with dropout, so this costs nothing and the lse is checked too: fp32 (B, Hq, Sq), varlen
  (Hq, total_q), the reference's layouts (dense cases run through varlen are reshaped back).
- ALiBi with a causal mask: flash-attn adds ``+slope * j`` (softmax is shift-invariant per row)
  instead of ``-slope * |i + Sk - Sq - j|``. Out and gradients are the same, but its lse is larger
  by ``slope * (i + Sk - Sq)``; ``prepare`` precomputes that shift (:func:`causal_alibi_lse_shift`)
  and ``forward`` subtracts it, so the lse is the reference's.
- flash-attn is optional and imported lazily: without it every case is
  ``flash-attn not installed``.
"""

from __future__ import annotations

import importlib
import re

import torch

from .base import Backend, Capabilities, Prepared, Unsupported, register
from .flash_attn_layout import (  # noqa: F401  (re-exported: tests and tools use fa.pack_qkv, ...)
    causal_alibi_lse_shift,
    dense_cu_seqlens,
    flatten_batch,
    pack_kv,
    pack_qkv,
    to_ref_layout,
    unflatten_batch,
    unflatten_lse,
    unpack_kv,
    unpack_qkv,
    uses_causal_alibi,
    validate_varlen,
    varlen_inputs,
)

ENTRY_POINTS = (
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
)
MIN_VERSION = (2, 6)  # softcap and the unpadded (Hq, total_q) varlen lse arrived in 2.6

_module = None
_import_error: str | None = None


def _flash_attn():
    """The ``flash_attn`` package, imported on first use (None when it cannot be imported)."""
    global _module, _import_error
    if _module is None and _import_error is None:
        try:
            _module = importlib.import_module("flash_attn")
            if not hasattr(_module, "flash_attn_func"):  # only flash-attn-4's namespace package
                _module, _import_error = None, "flash-attn not installed"
        except ModuleNotFoundError:
            _import_error = "flash-attn not installed"
        except Exception as e:  # a broken build: undefined symbol, CUDA mismatch, ...
            _import_error = f"flash-attn import failed: {type(e).__name__}: {e}"
    return _module


def flash_attn_version() -> str | None:
    """flash-attn's ``__version__`` (for the environment columns), None when not importable."""
    mod = _flash_attn()
    return None if mod is None else str(getattr(mod, "__version__", "unknown"))


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


# ---- the backends -------------------------------------------------------------------------------
class FlashAttn(Backend):
    """One flash-attn entry point; ``packing`` is None, ``"kv"`` or ``"qkv"``."""

    def __init__(self, entry: str):
        if entry not in ENTRY_POINTS:
            raise ValueError(f"unknown flash-attn entry point {entry!r}")
        self.name = entry
        self.varlen_api = entry.startswith("flash_attn_varlen")
        self.packing = "qkv" if "qkvpacked" in entry else "kv" if "kvpacked" in entry else None
        packed = {"qkv": ", qkv packed", "kv": ", kv packed", None: ""}[self.packing]
        self.description = (
            f"flash-attn 2 {entry}"
            + packed
            + (" (dense cases as equal-length sequences)" if self.varlen_api else "")
        )
        same_qk = self.packing == "qkv"
        self.caps = Capabilities(
            devices={"cuda"},
            dtypes={"fp16", "bf16"},
            max_head_dim=256,
            gqa=not same_qk,
            seqlen_q_ne_k=not same_qk,
            varlen=self.varlen_api,
            backward=True,
            lse=True,
            window=True,
            softcap=True,
            alibi=True,
            deterministic=True,
            block=entry == "flash_attn_func",
            block_backward=entry == "flash_attn_func",
        )

    # ---- capability checks ------------------------------------------------------------------
    def availability(self, device):
        mod = _flash_attn()
        if mod is None:
            return _import_error
        version = flash_attn_version()
        if version != "unknown" and _version_tuple(version) < MIN_VERSION:
            return f"flash-attn {version} too old (needs >= {'.'.join(map(str, MIN_VERSION))})"
        if device == "cuda" and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if major < 8:
                return f"flash-attn 2 needs sm80 or newer (this GPU is sm{major}{minor})"
        return None

    def extra_check(self, case, device, mode):
        if case.head_dim % 8:
            return (
                f"unsupported: head dim {case.head_dim} not a multiple of 8 "
                "(flash-attn would pad it inside the timed call)"
            )
        if self.packing == "qkv" and case.varlen and tuple(case.k_lens) != tuple(case.seqlens):
            return "unsupported: qkvpacked needs the same q and k sequence lengths"
        return None

    # ---- running ----------------------------------------------------------------------------
    def prepare(self, inp, case):
        if case.varlen and not self.varlen_api:
            raise Unsupported("unsupported: varlen")
        q, k, v = inp.q, inp.k, inp.v
        args = dict(dense_batch=None, alibi_slopes=inp.alibi_slopes, lse_shift=None)
        if self.varlen_api:
            q, k, v, packed_args = varlen_inputs(inp, case)
            args.update(packed_args)
            max_k = args["max_seqlen_k"]
        else:
            max_k = k.shape[1]
        if case.alibi and uses_causal_alibi(
            case.causal, case.window_left, case.window_right, max_k
        ):
            if case.varlen:
                args["lse_shift"] = causal_alibi_lse_shift(
                    inp.alibi_slopes, case.seqlens, case.k_lens, varlen=True
                )
            else:
                args["lse_shift"] = causal_alibi_lse_shift(
                    inp.alibi_slopes, case.seqlen_q, case.seqlen_k, varlen=False
                )
        if self.packing == "qkv":
            packed = (pack_qkv(q, k, v),)
        elif self.packing == "kv":
            packed = (q, pack_kv(k, v))
        else:
            packed = (q, k, v)
        leaves = tuple(t.detach().clone().requires_grad_() for t in packed)
        return Prepared(leaves, args)

    def forward(self, p, case):
        mod = _flash_attn()
        if mod is None:
            raise Unsupported(_import_error)
        fn = getattr(mod, self.name)
        a = p.args
        kw = dict(
            softmax_scale=case.scale,
            causal=case.causal,
            window_size=(case.window_left, case.window_right),
            softcap=case.softcap,
            alibi_slopes=a["alibi_slopes"],
            deterministic=case.deterministic,
            return_attn_probs=True,
        )
        if not self.varlen_api:
            res = fn(*p.leaves, **kw)
        elif self.packing == "qkv":
            res = fn(*p.leaves, a["cu_seqlens_q"], a["max_seqlen_q"], **kw)
        else:
            res = fn(
                *p.leaves,
                a["cu_seqlens_q"],
                a["cu_seqlens_k"],
                a["max_seqlen_q"],
                a["max_seqlen_k"],
                **kw,
            )
        return to_ref_layout(res[0], res[1], a["dense_batch"], a["lse_shift"])

    def unpack(self, tensors, args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Leaves (or their gradients) -> q, k, v in attnbench layout (views, differentiable)."""
        if self.packing == "qkv":
            q, k, v = unpack_qkv(tensors[0])
        elif self.packing == "kv":
            q, (k, v) = tensors[0], unpack_kv(tensors[1])
        else:
            q, k, v = tensors
        if args["dense_batch"] is not None:
            q, k, v = (unflatten_batch(t, args["dense_batch"]) for t in (q, k, v))
        return q, k, v

    def grads(self, p):
        return self.unpack(tuple(t.grad for t in p.leaves), p.args)

    # ---- block API (flash_attn_func only): flash-attn 2's internal block functions ------------
    def _block_iface(self):
        """``flash_attn.flash_attn_interface``, whose ``_flash_attn_forward``/``_backward`` are
        the block API ring-flash-attention uses; called positionally in the installed version's
        layout (2.6 took a ``window_size`` tuple, 2.7+ takes ``window_size_left``/``_right``; the
        2.7+ functions are torch custom ops, so the layout is chosen by version, not inspect)."""
        mod = _flash_attn()
        if mod is None:
            raise Unsupported(_import_error)
        window = (-1, -1) if _version_tuple(flash_attn_version()) >= (2, 7) else ((-1, -1),)
        return importlib.import_module("flash_attn.flash_attn_interface"), window

    def block_forward(self, q, k, v, causal, softmax_scale):
        iface, window = self._block_iface()
        # (q, k, v, dropout_p, softmax_scale, causal, window..., softcap, alibi_slopes,
        #  return_softmax)
        res = iface._flash_attn_forward(
            q, k, v, 0.0, softmax_scale, causal, *window, 0.0, None, False
        )
        return res[0], res[-3] if len(res) > 4 else res[1]

    def block_backward(self, dout, q, k, v, out, lse, causal, softmax_scale):
        iface, window = self._block_iface()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dout, out = dout.to(q.dtype).contiguous(), out.to(q.dtype).contiguous()
        # (dout, q, k, v, out, lse, dq, dk, dv, dropout_p, softmax_scale, causal, window...,
        #  softcap, alibi_slopes, deterministic, rng_state)
        iface._flash_attn_backward(
            dout, q, k, v, out, lse.contiguous(), dq, dk, dv, 0.0, softmax_scale, causal,
            *window, 0.0, None, False, None,
        )  # fmt: skip
        return dq, dk, dv


for _entry in ENTRY_POINTS:
    register(FlashAttn(_entry))
