"""``fa4_fp8``: FlashAttention-4's FP8 forward (``flash_attn.cute``, PyPI ``flash-attn-4``) on
q, k, v quantized to float8_e4m3fn, a lossy kernel on purpose (``precision="fp8"``) graded by
the lossy rule (:mod:`attnbench.rule`)::

    pip install -e ".[fa4]"
    attnbench accuracy --suite lowp --only fa4_fp8,fa4

Where it runs: **sm100 only** (compute capability 10.x, B200/GB200). What flash_attn.cute's
source says (Dao-AILab/flash-attention, ``flash_attn/cute/interface.py``, FP8 added by PR #2109
"[Cute,Fwd,Sm100] fp8 e4m3 and e5m2 support"):

- the FP8 path is in the private ``_flash_attn_fwd(q, k, v, ..., softmax_scale, causal,
  window_size_left, window_size_right, return_lse, q_descale, k_descale, v_descale)``; the
  public ``flash_attn_func`` takes no descale tensors (it would run FP8 inputs with descale 1),
  so this backend calls ``flash_attn.cute.interface._flash_attn_fwd`` (its own FP8 benchmark,
  ``flash_attn/cute/benchmark_flash_attention_fp8.py``, does the same);
- ``assert arch // 10 == 10, "FP8 is only supported on SM100 (compute capability 10.x) for FA4
  CuTe."``: on Hopper (the H100/H200 here, sm90) and sm110 it is refused, which
  :meth:`FA4FP8.availability` says before anything runs;
- q, k, v all float8_e4m3fn (or e5m2; e4m3 here) of one dtype; descales float32 of shape
  ``(batch, num_heads_kv)`` (validated by ``_validate_tensor``), folded into the softmax scale
  (q, k) and the output normalisation (v);
- the output is **bf16** whatever the inputs (``out_torch_dtype = torch.bfloat16 if is_fp8``):
  this backend declares bf16 cases only, so no cast is timed; the lse is fp32 (B, Hq, Sq);
- forward only: ``NotImplementedError("FA4 CuTe FP8 backward is not supported yet
  (forward-only).")`` when an input requires grad; head dims on sm100 up to 128 (multiples of
  16: 16-byte alignment of 1-byte elements) or 256.

Quantization, in ``prepare`` (untimed): one scale per (batch, kv head), the granularity of the
descale tensors, for each of q (over the kv head's group of query heads), k and v: ``scale =
amax / 448`` (e4m3's largest finite value), ``x8 = (x / scale).to(float8_e4m3fn)``, descale =
scale. The timed call is the FP8 attention alone. Causal bottom-right, GQA, sliding window, as
``fa4``; no softcap (declared off: how FA4 applies it to descaled FP8 scores is not checked), no
varlen. What the library refuses at run time becomes an ``unsupported`` row (``fa4``'s rule).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

import torch

from .base import Backend, Capabilities, Prepared, Unsupported, register
from .fa4 import fa4_availability, fa4_refusal, window_size

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
FP8_ARCH = 10  # compute capability major of flash_attn.cute's FP8 forward (sm100, sm103)
ENTRY = "flash_attn.cute.interface._flash_attn_fwd"


def fp8_forward():
    """``(_flash_attn_fwd, None)`` when flash_attn.cute has its FP8 forward, else ``(None, why)``
    (call after :func:`~attnbench.backends.fa4.fa4_availability` found flash_attn.cute)."""
    try:
        iface = importlib.import_module("flash_attn.cute.interface")
    except Exception as e:
        return None, f"flash_attn.cute.interface import failed: {type(e).__name__}: {e}"
    fn = getattr(iface, "_flash_attn_fwd", None)
    try:
        params = inspect.signature(fn).parameters if fn is not None else {}
    except (TypeError, ValueError):
        params = {}
    if not {"q_descale", "k_descale", "v_descale"} <= set(params):
        return None, (
            f"flash-attn-4 {_version()}: {ENTRY} takes no q_descale/k_descale/v_descale "
            "(a version before its FP8 forward)"
        )
    return fn, None


def _version() -> str:
    try:
        return importlib.metadata.version("flash-attn-4")
    except Exception:
        return "(version unknown)"


def quantize(x: torch.Tensor, heads_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B, S, H, D) -> (float8_e4m3fn tensor of its shape, fp32 descale (B, heads_kv)):
    one scale per (batch, kv head) over its sequence, channels and (for q) its group of query
    heads, mapping the largest |x| to 448; ``x ~ x8 * descale``."""
    b, s, h, d = x.shape
    g = x.detach().float().reshape(b, s, heads_kv, h // heads_kv, d)
    amax = g.abs().amax(dim=(1, 3, 4))  # (B, Hkv)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    x8 = (g / scale[:, None, :, None, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return x8.reshape(b, s, h, d), scale.contiguous()


@register
class FA4FP8(Backend):
    name = "fa4_fp8"
    description = (
        "FlashAttention-4 FP8 forward (flash_attn.cute _flash_attn_fwd, e4m3 q/k/v with "
        "per-(batch, kv head) descales, bf16 out); sm100 only"
    )
    caps = Capabilities(
        devices={"cuda"},
        dtypes={"bf16"},  # its FP8 forward writes bf16
        max_head_dim=256,  # <= 128 or 256 (extra_check)
        causal=True,
        gqa=True,
        seqlen_q_ne_k=True,
        varlen=False,
        backward=False,
        lse=True,
        window=True,
        softcap=False,
        precision="fp8",
    )

    def availability(self, device):
        why = fa4_availability(device)
        if why:
            return why
        fn, why = fp8_forward()
        if fn is None:
            return why
        if device == "cuda" and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if major != FP8_ARCH:
                return (
                    f"flash_attn.cute's FP8 forward runs on sm100 only (this GPU is "
                    f"sm{major}{minor}): interface.py asserts arch // 10 == 10 for FP8"
                )
        return None

    def extra_check(self, case, device, mode):
        d = case.head_dim
        if d % 16:
            return f"unsupported: head dim {d} not a multiple of 16 (FP8: 16-byte alignment)"
        if 128 < d < 256:
            return f"unsupported: head dim {d} (FA4 on sm100: up to 128, or 256)"
        return None

    def refusal(self, e):
        return fa4_refusal(e)

    def prepare(self, inp, case):
        fn, why = fp8_forward()
        if fn is None:
            raise Unsupported(why)
        hkv = case.heads_kv
        (q, qd), (k, kd), (v, vd) = (quantize(t, hkv) for t in (inp.q, inp.k, inp.v))
        args = dict(fn=fn, q_descale=qd, k_descale=kd, v_descale=vd, inputs=(inp.q, inp.k, inp.v))
        return Prepared((q, k, v), args)

    def quant_fn(self, p, case):
        """The quantization ``prepare`` did (this module's torch ops, not a fused kernel), again
        from the same inputs: timed apart from the attention where the runner asks for it."""
        hkv, inputs = case.heads_kv, p.args["inputs"]
        return lambda: [quantize(t, hkv) for t in inputs]

    def forward(self, p, case):
        a = p.args
        left, right = window_size(case)
        res = a["fn"](
            *p.leaves,
            softmax_scale=case.scale,
            causal=case.causal,
            window_size_left=left,
            window_size_right=right,
            return_lse=True,
            q_descale=a["q_descale"],
            k_descale=a["k_descale"],
            v_descale=a["v_descale"],
        )
        return res[0], res[1]  # (out, lse, ...) : later versions add sparse-MLA outputs
