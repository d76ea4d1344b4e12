"""Make triton 3.6's interpreter run our kernels right (only imported under TRITON_INTERPRET=1).
Compiled (GPU) kernels are untouched.

1. NumPy >= 2.3: the interpreter holds scalars as 1-element arrays and implements
   ``tensor.__index__`` as ``int(array)``, which NumPy 2.3+ rejects for arrays with ``ndim > 0``
   ("only 0-dimensional arrays can be converted to Python scalars"). Every ``tl.range`` with a
   run-time bound goes through it. The patch reads the single element.
2. Down-casts to FP8 (``x.to(tl.float8e4nv)``, ``tl.float8e5``): the interpreter's bit-level
   conversion rounds the mantissa without carrying into the exponent (7.86 -> 4.0 instead of
   8.0 in e4m3) and does not saturate. The patch converts through torch (round to nearest even)
   after clamping to the format's largest finite value, which is what the GPU's
   ``cvt.rn.satfinite`` does.
"""

from __future__ import annotations

import numpy as np
from triton.runtime import interpreter


def _index(self):
    return int(np.asarray(self.handle.data).reshape(-1)[0])


def _fp8_downcast(convert):
    import torch
    import triton.language as tl

    targets = {"fp8e4nv": (torch.float8_e4m3fn, 448.0), "fp8e5": (torch.float8_e5m2, 57344.0)}
    sources = {
        "fp32": (np.float32, None),
        "fp16": (np.float16, None),
        "fp64": (np.float64, None),
        "bf16": (np.int16, torch.bfloat16),
    }

    def patched(input, input_dtype, output_dtype, rounding_mode):
        target = targets.get(getattr(output_dtype, "name", ""))
        source = sources.get(getattr(input_dtype, "name", ""))
        if target is None or source is None:
            return convert(input, input_dtype, output_dtype, rounding_mode)
        np_type, view = source
        x = torch.from_numpy(np.ascontiguousarray(input).view(np_type).copy())
        if view is not None:
            x = x.view(view)
        dtype, largest = target
        y = x.float().clamp(-largest, largest).to(dtype).view(torch.uint8).numpy()
        return y.reshape(np.shape(input))

    patched._attnbench_compat = True
    assert tl.float8e4nv.name == "fp8e4nv"
    return patched


def install() -> None:
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is not None and not getattr(original, "_attnbench_compat", False):

        def patched(tensor, scope):
            original(tensor, scope)
            scope.set_attr(tensor, "__index__", _index)

        patched._attnbench_compat = True
        interpreter._patch_lang_tensor = patched
    convert = getattr(interpreter, "_convert_float", None)
    if convert is not None and not getattr(convert, "_attnbench_compat", False):
        interpreter._convert_float = _fp8_downcast(convert)
