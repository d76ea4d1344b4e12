"""What this GPU can do and how it was doing: the measured ceiling and NVML telemetry of a run.

- ``ceiling(device, dtype)``: dense matmul TFLOP/s (an 8192^3 ``torch.matmul`` in that dtype) and
  copy bandwidth (a 1 GiB ``copy_``, read + write bytes), timed with :func:`attnbench.run.timing.bench`
  like every case; measured once per process (a run) and dtype. Attention at S >= 1k is
  compute-bound, so ``pct_of_peak`` = TFLOP/s / ``matmul_tflops`` is its honest utilisation.
- ``telemetry(device)``: SM clock (MHz), temperature (C) and power (W) from NVML
  (``nvidia-ml-py``, optional), taken at the start and the end of a run so that a throttled run
  shows in its rows.

On the CPU, or without NVML, the columns are null and ``env_note`` says why.
"""

from __future__ import annotations

import functools

import torch

from ..problems.base import DTYPES
from .timing import bench, tflops

MATMUL_N = 8192
COPY_BYTES = 1 << 30
CEILING_COLUMNS = ("matmul_tflops", "copy_gbps")
TELEMETRY = ("sm_clock_mhz", "gpu_temp_c", "gpu_power_w")


@functools.cache
def ceiling(device: str, dtype: str) -> dict:
    """{matmul_tflops, copy_gbps} of ``device`` in ``dtype`` (None on the CPU)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dict.fromkeys(CEILING_COLUMNS)
    n = MATMUL_N
    matmul = tflops(2 * n**3, _time_matmul(dev, DTYPES[dtype], n))
    gbps = 2 * COPY_BYTES / (_time_copy(dev) * 1e-3) / 1e9
    torch.cuda.empty_cache()
    return dict(matmul_tflops=matmul, copy_gbps=gbps)


def _time_matmul(dev, dtype, n) -> float:
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    return bench(lambda: torch.matmul(a, b), (), dev, warmup_ms=100, rep_ms=300).median_ms


def _time_copy(dev) -> float:
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src), (), dev, warmup_ms=50, rep_ms=200).median_ms


def _nvml_handle(device: torch.device):
    import pynvml

    pynvml.nvmlInit()
    idx = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(idx), "uuid", None)
    if uuid is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(idx)


def telemetry(device: str) -> tuple[dict, str | None]:
    """({sm_clock_mhz, gpu_temp_c, gpu_power_w}, None) now, or (nulls, why not)."""
    empty = dict.fromkeys(TELEMETRY)
    dev = torch.device(device)
    if dev.type != "cuda":
        return empty, "cpu run: no GPU ceiling or telemetry"
    try:
        import pynvml

        h = _nvml_handle(dev)
        return (
            dict(
                sm_clock_mhz=float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                gpu_temp_c=float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
                gpu_power_w=pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
            ),
            None,
        )
    except Exception as e:  # optional: no NVML is a note, never a failed run
        return (
            empty,
            f"no NVML telemetry ({type(e).__name__}: {str(e)[:80]}; pip install nvidia-ml-py)",
        )


def columns(snap: dict, when: str) -> dict:
    """Telemetry as row columns: ``sm_clock_mhz_start`` ..."""
    return {f"{k}_{when}": v for k, v in snap.items()}


def pct_of_peak(tflops: float | None, matmul_tflops: float | None) -> float | None:
    if tflops is None or not matmul_tflops:
        return None
    return 100.0 * tflops / matmul_tflops
