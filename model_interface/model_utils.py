"""Timing and resource measurement for a block of work.

``measure`` never imports torch itself: it reads GPU memory only when the measured code has
already imported torch and initialised CUDA, so measuring a CPU-only run stays cheap.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Measurement:
    """What one block of work cost. ``peak_gpu_mb`` is ``None`` when no GPU was in use."""

    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_inference_time(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Wall-clock seconds ``fn(*args, **kwargs)`` takes (its result is discarded)."""
    with measure() as measurement:
        fn(*args, **kwargs)
    return measurement.wall_s


@contextmanager
def measure(*, sample_gpu_every_s: float = 0.05) -> Iterator[Measurement]:
    """Measure the enclosed block: wall time, peak process RSS, peak GPU memory.

    The record is filled in when the block exits::

        with measure() as m:
            model.predict_batch(requests)
        print(m.wall_s, m.peak_rss_mb, m.peak_gpu_mb)

    Wall time is ``perf_counter``, with CUDA synchronised at both ends when torch uses a GPU.
    Peak RSS is the block's own peak on Linux (the kernel's high-water mark is reset at the
    start); elsewhere it is the process's lifetime peak. Peak GPU memory is the larger of
    torch's peak allocation in this process and, where NVML is installed, the device's used
    memory sampled every ``sample_gpu_every_s`` (which also sees worker processes, as vLLM
    and SGLang use).
    """
    measurement = Measurement()
    cuda = _cuda_in_use()
    if cuda is not None:
        cuda.synchronize()
        cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    nvml_sampler = _NvmlPeakSampler.start(sample_gpu_every_s) if cuda is not None else None
    start = time.perf_counter()
    try:
        yield measurement
    finally:
        if cuda is not None:
            cuda.synchronize()
        measurement.wall_s = time.perf_counter() - start
        measurement.peak_rss_mb = _peak_rss_mb()
        if cuda is not None:
            peaks = [cuda.max_memory_allocated() / 2**20]
            if nvml_sampler is not None:
                peaks.append(nvml_sampler.stop())
            measurement.peak_gpu_mb = max(peaks)


def _cuda_in_use() -> Any:
    """``torch.cuda`` if the process already imported torch and initialised CUDA, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def _reset_peak_rss() -> None:
    # Writing "5" resets the kernel's peak-RSS counter (VmHWM) for this process (Linux >= 4.0).
    with suppress(OSError):
        _PROC_CLEAR_REFS.write_text("5")


def _peak_rss_mb() -> float:
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # reported in kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else kB


class _NvmlPeakSampler:
    """Samples the current CUDA device's used memory in a daemon thread."""

    def __init__(self, nvml: Any, handle: Any, every_s: float) -> None:
        self._nvml, self._handle, self._every_s = nvml, handle, every_s
        self._peak_bytes = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)

    @classmethod
    def start(cls, every_s: float) -> _NvmlPeakSampler | None:
        try:
            import pynvml  # provided by the nvidia-ml-py package

            pynvml.nvmlInit()
            torch = sys.modules["torch"]
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:  # NVML missing or unusable: torch's own counter still applies
            return None
        sampler = cls(pynvml, handle, every_s)
        sampler._thread.start()
        return sampler

    def _run(self) -> None:
        while True:
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
            self._peak_bytes = max(self._peak_bytes, used)
            if self._done.wait(self._every_s):
                return

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self._peak_bytes / 2**20
