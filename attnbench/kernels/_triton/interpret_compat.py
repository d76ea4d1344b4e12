"""Make triton 3.6's interpreter work with NumPy >= 2.3 (only imported under TRITON_INTERPRET=1).

The interpreter holds scalars as 1-element arrays and implements ``tensor.__index__`` as
``int(array)``, which NumPy 2.3+ rejects for arrays with ``ndim > 0`` ("only 0-dimensional arrays
can be converted to Python scalars"). Every ``tl.range`` with a run-time bound goes through it.
This wraps the interpreter's tensor patching so that ``__index__`` reads the single element.
Compiled (GPU) kernels are untouched.
"""

from __future__ import annotations

import numpy as np
from triton.runtime import interpreter


def _index(self):
    return int(np.asarray(self.handle.data).reshape(-1)[0])


def install() -> None:
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_attnbench_compat", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _index)

    patched._attnbench_compat = True
    interpreter._patch_lang_tensor = patched
