"""All backends, registered on import, in this order. One module per backend family; to add one,
write the module (see :mod:`attnbench.backends.base`) and add its import here."""

# isort: off
from . import naive, sdpa  # noqa: F401
from . import triton_fa2  # noqa: F401
from . import flash_attn  # noqa: F401
from . import cuda_fa  # noqa: F401
from . import fa4, flex  # noqa: F401
from . import piecewise_naive, piecewise_flex, piecewise_triton  # noqa: F401
from . import flag_attn_piecewise  # noqa: F401
from . import decode_naive, decode_sdpa, decode_triton  # noqa: F401
from . import flash_attn_kvcache  # noqa: F401
from . import fa4_decode  # noqa: F401
from . import flashinfer_decode  # noqa: F401
from . import flag_attn_decode  # noqa: F401
from . import flag_attn_flash  # noqa: F401
from . import sage, fa4_fp8  # noqa: F401
from . import triton_fp8  # noqa: F401

# isort: on
from .base import REGISTRY, Backend, Capabilities, Prepared, Unsupported, get_backends, register

__all__ = [
    "REGISTRY",
    "Backend",
    "Capabilities",
    "Prepared",
    "Unsupported",
    "get_backends",
    "register",
]
