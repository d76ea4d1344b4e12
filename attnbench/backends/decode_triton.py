"""``decode_triton``: attnbench's own split-KV ("flash-decoding") kernel in Triton
(:func:`attnbench.kernels.decode.decode_attention`), contiguous or paged caches of any page
size, q_len >= 1, GQA/MQA, fp16/bf16/fp32, head dims 16-256 (powers of two), with the lse.

The timed call passes ``max_cache_len`` (the python lengths' max) so the kernel does not read
the lengths back from the device. Runs on CUDA; on the CPU only through Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported), fp16/fp32 (the interpreter's bf16
``tl.dot`` is wrong in triton 3.6). ``kernel_config`` names the heuristic's split plan.
"""

from __future__ import annotations

from ..problems.decode import page_size_refusal
from . import triton_common
from .base import Backend, Capabilities, Prepared, register


def _kernels():
    return triton_common.kernels("decode")


@register
class DecodeTriton(Backend):
    name = "decode_triton"
    description = "split-KV flash-decoding in Triton (attnbench's own; contiguous or paged)"
    caps = Capabilities(
        problem="decode",
        devices={"cuda", "cpu"},
        dtypes={"fp16", "bf16", "fp32"},
        head_dims={16, 32, 64, 128, 256},  # kernels.decode.interface.HEAD_DIMS
        backward=False,
        lse=True,
        features={"paged", "q_len_gt_1"},
    )
    page_sizes = None  # every page size >= 1 (the table is read per key when pages are small)

    def availability(self, device):
        return triton_common.availability(self.name, "decode", device)

    def extra_check(self, case, device, mode):
        return triton_common.interpreter_refusal(case, device) or page_size_refusal(
            case, self.page_sizes
        )

    def prepare(self, inp, case):
        """Untimed: the split plan for this shape class (kept tuning; tuned on first use)."""
        from ..kernels.decode.tuning import tuned_config

        config = tuned_config(
            inp.q,
            inp.k_cache,
            inp.v_cache,
            inp.cache_lens,
            block_table=inp.block_table,
            softmax_scale=case.scale,
            max_cache_len=inp.max_cache_len,
        )
        return Prepared((inp.q,), {"inputs": inp, "config": config})

    def forward(self, p, case):
        (q,) = p.leaves
        inp = p.args["inputs"]
        return _kernels().decode_attention(
            q,
            inp.k_cache,
            inp.v_cache,
            inp.cache_lens,
            block_table=inp.block_table,
            softmax_scale=case.scale,
            config=p.args["config"],
            max_cache_len=inp.max_cache_len,
        )

    def kernel_config(self, p, case, mode):
        """The split plan that ran, with the split length the kernel uses for the longest
        cache, e.g. ``split 8x4096 BN64 w4 s2``."""
        return str(_kernels().resolve_config(p.args["config"], p.args["inputs"].max_cache_len))
