from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import namedtuple

import pytest

from model_interface.model_utils import (
    measure,
    measure_inference_time,
    memory_of_processes,
    physical_device,
    process_tree,
)


def test_measure_inference_time_returns_the_wall_time() -> None:
    seconds = measure_inference_time(time.sleep, 0.05)
    assert seconds >= 0.05  # at least the sleep; how much more depends on the machine's load


def test_measure_records_peak_rss_of_the_block() -> None:
    with measure() as baseline:
        pass
    with measure() as measurement:
        block = bytearray(200 * 2**20)  # 200 MiB, touched so the pages are resident
        block[::4096] = b"x" * len(block[::4096])
        del block
    assert measurement.peak_rss_mb - baseline.peak_rss_mb > 150
    assert measurement.peak_gpu_mb is None  # no GPU was used
    assert set(measurement.as_dict()) == {"wall_s", "peak_rss_mb", "peak_gpu_mb"}


@pytest.mark.parametrize(
    ("visible", "index", "expected"),
    [
        (None, 1, 1),
        ("", 0, 0),
        ("2,3", 0, 2),
        ("2, 3", 1, 3),
        (
            "GPU-8f6a2c1e-0000-1111-2222-333344445555,1",
            0,
            "GPU-8f6a2c1e-0000-1111-2222-333344445555",
        ),
        ("MIG-0c5f,3", 1, 3),
    ],
)
def test_the_physical_gpu_behind_cuda_visible_devices(visible, index, expected) -> None:
    assert physical_device(visible, index) == expected


@pytest.mark.slow
def test_the_process_tree_holds_this_process_and_its_children_only() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = process_tree(os.getpid())
        assert os.getpid() in tree and child.pid in tree
        assert os.getppid() not in tree
    finally:
        child.kill()
        child.wait()


def test_gpu_memory_counts_only_the_given_processes() -> None:
    # The records NVML's nvmlDeviceGetComputeRunningProcesses returns: pid and usedGpuMemory
    # (None where the driver can't tell).
    Process = namedtuple("Process", "pid usedGpuMemory")
    processes = [
        Process(10, 3 * 2**30),
        Process(11, 2**30),
        Process(99, 40 * 2**30),
        Process(12, None),
    ]
    assert memory_of_processes(processes, {10, 11, 12}) == 4 * 2**30
    assert memory_of_processes(processes, {7}) == 0


@pytest.mark.gpu
def test_measure_sees_this_process_gpu_memory_on_its_own_device() -> None:
    import torch

    with measure() as measurement:
        block = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
        del block
    assert measurement.peak_gpu_mb is not None and measurement.peak_gpu_mb >= 512


@pytest.mark.slow
def test_measure_counts_the_memory_of_the_processes_it_started() -> None:
    """Engines run workers in processes of their own (vLLM, SGLang): their memory is the run's
    too. A child holding 300 MiB while the block runs shows in the block's peak."""
    holder = (
        "import sys\n"
        "block = bytearray(300 * 2**20)\n"
        "block[::4096] = b'x' * len(block[::4096])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    with measure() as alone:
        pass
    with measure(sample_rss_every_s=0.05) as measurement:
        child = subprocess.Popen(
            [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline() == "ready\n"  # its memory is resident now
        time.sleep(0.5)  # several samples while it holds it
        child.communicate("\n", timeout=30)
    assert measurement.peak_rss_mb - alone.peak_rss_mb > 250
