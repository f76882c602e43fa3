"""Timing and resource measurement for a block of work.

``measure`` never imports torch itself: it reads GPU memory only when the measured code has
already imported torch and initialised CUDA, so measuring a CPU-only run stays cheap.
"""

from __future__ import annotations

import os
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
def measure(
    *, sample_gpu_every_s: float = 0.05, sample_rss_every_s: float = 0.25
) -> Iterator[Measurement]:
    """Measure the enclosed block: wall time, peak RSS of this process and the processes it
    started, peak GPU memory.

    The record is filled in when the block exits::

        with measure() as m:
            model.predict_batch(requests)
        print(m.wall_s, m.peak_rss_mb, m.peak_gpu_mb)

    Wall time is ``perf_counter``, with CUDA synchronised at both ends when torch uses a GPU.
    Peak RSS is the block's own peak on Linux (the kernel's high-water mark is reset at the
    start); elsewhere it is the process's lifetime peak. Where the process has children (the
    engine processes of vLLM or SGLang), their memory counts too: the RSS of the whole process
    tree is sampled every ``sample_rss_every_s`` and its largest sum kept. Peak GPU memory is
    the larger of torch's peak allocation in this process and, where NVML is installed, the
    memory NVML sees this process and its child processes use on the physical GPU behind
    torch's current device, sampled every ``sample_gpu_every_s``. Other users of the same GPU
    are not counted. Where NVML can't see this process (a container
    with its own process ids), only torch's figure is left.
    """
    measurement = Measurement()
    cuda = _cuda_in_use()
    if cuda is not None:
        cuda.synchronize()
        cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    nvml_sampler = _NvmlPeakSampler.start(sample_gpu_every_s) if cuda is not None else None
    tree_sampler = _TreeRssSampler.start(sample_rss_every_s)
    start = time.perf_counter()
    try:
        yield measurement
    finally:
        if cuda is not None:
            cuda.synchronize()
        measurement.wall_s = time.perf_counter() - start
        measurement.peak_rss_mb = max(_peak_rss_mb(), tree_sampler.stop())
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


class _TreeRssSampler:
    """Samples the summed RSS of this process and its descendants, in a daemon thread; a
    process without descendants costs one walk of /proc per sample and nothing else."""

    def __init__(self, every_s: float) -> None:
        self._every_s = every_s
        self._peak_bytes = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @classmethod
    def start(cls, every_s: float) -> _TreeRssSampler:
        sampler = cls(every_s)
        sampler._thread.start()
        return sampler

    def _run(self) -> None:
        while True:
            self._sample()
            if self._done.wait(self._every_s):
                return

    def _sample(self) -> None:
        tree = process_tree(os.getpid())
        if len(tree) > 1:  # alone, the kernel's own high-water mark is exact
            self._peak_bytes = max(self._peak_bytes, sum(map(_rss_bytes, tree)))

    def stop(self) -> float:
        """The largest sum seen, in MB (0 where the process never had children)."""
        self._done.set()
        self._thread.join()
        self._sample()  # the children still there at the end
        return self._peak_bytes / 2**20


def _rss_bytes(pid: int) -> int:
    try:
        resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):  # ended meanwhile, or no /proc
        return 0
    return resident_pages * _PAGE_BYTES


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _NvmlPeakSampler:
    """Samples the GPU memory this process tree uses on one device, in a daemon thread."""

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
            handle = _nvml_handle(pynvml, sys.modules["torch"])
        except Exception:  # NVML missing or unusable: torch's own counter still applies
            return None
        sampler = cls(pynvml, handle, every_s)
        sampler._thread.start()
        return sampler

    def _run(self) -> None:
        while True:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
            used = memory_of_processes(processes, process_tree(os.getpid()))
            self._peak_bytes = max(self._peak_bytes, used)
            if self._done.wait(self._every_s):
                return

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self._peak_bytes / 2**20


def _nvml_handle(nvml: Any, torch: Any) -> Any:
    """NVML's handle for the physical GPU behind torch's current CUDA device.

    The GPU's UUID names it unambiguously; where torch can't give one, the index is mapped
    through ``CUDA_VISIBLE_DEVICES`` (device 0 of ``CUDA_VISIBLE_DEVICES=2,3`` is GPU 2).
    """
    index = torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except Exception:  # e.g. a MIG slice, whose UUID NVML names differently
            pass
    physical = physical_device(os.environ.get("CUDA_VISIBLE_DEVICES"), index)
    if isinstance(physical, str):
        return nvml.nvmlDeviceGetHandleByUUID(physical)
    return nvml.nvmlDeviceGetHandleByIndex(physical)


def physical_device(cuda_visible_devices: str | None, index: int) -> int | str:
    """The GPU that CUDA device ``index`` is: an NVML index, or a ``GPU-…``/``MIG-…`` UUID."""
    if cuda_visible_devices is None or not cuda_visible_devices.strip():
        return index
    entries = [entry.strip() for entry in cuda_visible_devices.split(",")]
    entry = entries[index]
    return int(entry) if entry.isdigit() else entry


def process_tree(root: int) -> set[int]:
    """``root`` and every process descended from it (Linux ``/proc``; just ``root`` elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces and parentheses; the parent id is the
            # second field after its closing parenthesis.
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    tree, pending = {root}, [root]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in tree:
                tree.add(child)
                pending.append(child)
    return tree


def memory_of_processes(processes: Any, pids: set[int]) -> int:
    """Bytes of GPU memory used by the processes in ``pids``, from NVML's process list."""
    return sum(process.usedGpuMemory or 0 for process in processes if process.pid in pids)
