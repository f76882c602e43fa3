from __future__ import annotations

import time

from model_interface.model_utils import measure, measure_inference_time


def test_measure_inference_time_returns_the_wall_time() -> None:
    seconds = measure_inference_time(time.sleep, 0.05)
    assert 0.05 <= seconds < 1.0


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
