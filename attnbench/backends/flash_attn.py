"""Upstream flash-attn 2 (Dao-AILab/flash-attention), one backend per public entry point::

    attnbench run --only flash_attn_func,flash_attn_varlen_qkvpacked_func ...

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

from ..inputs import validate_cu_seqlens
from .base import Backend, Capabilities, Prepared, Unsupported, register

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


# ---- packing: pure functions, checked on CPU --------------------------------------------------
def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, S, H, D) x3 -> (B, S, 3, H, D); varlen (T, H, D) x3 -> (T, 3, H, D)."""
    return torch.stack((q, k, v), dim=-3)


def unpack_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return qkv.unbind(dim=-3)


def pack_kv(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, S, Hkv, D) x2 -> (B, S, 2, Hkv, D); varlen (T, Hkv, D) x2 -> (T, 2, Hkv, D)."""
    return torch.stack((k, v), dim=-3)


def unpack_kv(kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return kv.unbind(dim=-3)


def flatten_batch(x: torch.Tensor) -> torch.Tensor:
    """Dense (B, S, H, D) -> varlen (B * S, H, D)."""
    return x.flatten(0, 1)


def unflatten_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Varlen (B * S, H, D) of equal-length sequences -> dense (B, S, H, D)."""
    return x.unflatten(0, (batch, -1))


def unflatten_lse(lse: torch.Tensor, batch: int) -> torch.Tensor:
    """Varlen lse (H, B * S) of equal-length sequences -> dense (B, H, S)."""
    return lse.unflatten(1, (batch, -1)).transpose(0, 1)


def dense_cu_seqlens(batch: int, seqlen: int, device=None) -> torch.Tensor:
    """int32 ``[0, S, 2S, ..., B*S]``: a dense batch as equal-length varlen sequences."""
    return torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)


def validate_varlen(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) -> None:
    """ValueError for varlen inputs flash-attn would read out of bounds or silently misuse."""
    validate_cu_seqlens(cu_seqlens_q, q.shape[0], "cu_seqlens_q", max_seqlen=max_seqlen_q)
    validate_cu_seqlens(cu_seqlens_k, k.shape[0], "cu_seqlens_k", max_seqlen=max_seqlen_k)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(
            f"cu_seqlens_q has {cu_seqlens_q.numel() - 1} sequences but "
            f"cu_seqlens_k has {cu_seqlens_k.numel() - 1}"
        )


def varlen_inputs(inp, case):
    """q, k, v packed for a varlen entry point, and its arguments: ``cu_seqlens_q/k`` (int32),
    ``max_seqlen_q/k`` and ``dense_batch`` (B when a dense case runs as B equal-length
    sequences, else None). Validated, so malformed offsets raise ``ValueError`` here."""
    q, k, v = inp.q, inp.k, inp.v
    dense_batch = None
    if case.varlen:
        cu_q, cu_k = inp.cu_seqlens_q, inp.cu_seqlens_k
        max_q, max_k = inp.max_seqlen_q, inp.max_seqlen_k
    else:
        b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        cu_q, cu_k = dense_cu_seqlens(b, sq, q.device), dense_cu_seqlens(b, sk, q.device)
        max_q, max_k = sq, sk
        q, k, v = flatten_batch(q), flatten_batch(k), flatten_batch(v)
        dense_batch = b
    validate_varlen(q, k, cu_q, cu_k, max_q, max_k)
    args = dict(
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
        dense_batch=dense_batch,
    )
    return q, k, v, args


# ---- flash-attn's ALiBi convention --------------------------------------------------------------
def uses_causal_alibi(causal: bool, window_left: int, window_right: int, max_seqlen_k: int) -> bool:
    """Whether flash-attn takes its causal path (``params.is_causal`` in ``flash_api.cpp``), where
    ALiBi is applied as ``+slope * j``: windows of at least ``seqlen_k`` become -1, causal forces
    ``window_right = 0``, and causal means ``window_left < 0 and window_right == 0``."""
    if window_left >= max_seqlen_k:
        window_left = -1
    if window_right >= max_seqlen_k:
        window_right = -1
    if causal:
        window_right = 0
    return window_left < 0 and window_right == 0


def causal_alibi_lse_shift(
    slopes: torch.Tensor, seqlens_q, seqlens_k, varlen: bool
) -> torch.Tensor:
    """``-slope_h * (i + Sk - Sq)``: add to flash-attn's causal-ALiBi lse to get the reference's.

    For visible keys (``j <= i + Sk - Sq``), ``-slope |i + Sk - Sq - j| = slope j - slope (i + Sk
    - Sq)``, so flash-attn's scores are the reference's plus a per-row constant. ``slopes`` is
    (Hq,) or (B, Hq). Dense: ``seqlens_q``/``seqlens_k`` are ints, result (1 or B, Hq, Sq);
    varlen: per-sequence lengths, result (Hq, total_q).
    """
    slopes = slopes.float()
    if not varlen:
        diag = torch.arange(seqlens_q, device=slopes.device) + (seqlens_k - seqlens_q)
        per_batch = slopes if slopes.dim() == 2 else slopes[None]
        return -per_batch[:, :, None] * diag.float()
    parts = []
    for b, (sq, sk) in enumerate(zip(seqlens_q, seqlens_k, strict=True)):
        diag = torch.arange(sq, device=slopes.device) + (sk - sq)
        sl = slopes if slopes.dim() == 1 else slopes[b]
        parts.append(-sl[:, None] * diag.float())
    return torch.cat(parts, dim=1)


def to_ref_layout(out, lse, dense_batch: int | None, lse_shift: torch.Tensor | None):
    """flash-attn's (out, softmax_lse) -> attnbench layout (dense cases run as varlen reshaped
    back to (B, S, H, D) and (B, H, S)), with the causal-ALiBi lse shift applied."""
    if dense_batch is not None:
        out, lse = unflatten_batch(out, dense_batch), unflatten_lse(lse, dense_batch)
    if lse_shift is not None:
        lse = lse + lse_shift
    return out, lse


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


for _entry in ENTRY_POINTS:
    register(FlashAttn(_entry))
