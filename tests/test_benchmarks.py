"""Each benchmark script runs once at a tiny size, so none of them rots. Nothing here is timed:
the figures are only checked to be printed in the ``figure=value`` form scripts compare."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "figures"),
    [
        (
            "overhead.py",
            ["--models", "tiny-llava", "--samples", "8", "--repeats", "1"],
            ["overhead_batch1", "overhead_batch8"],
        ),
        ("batching.py", ["--samples", "8", "--repeats", "1"], ["batch8_speedup"]),
        (
            "scale.py",
            ["--sizes", "200", "2000"],
            [
                "samples_per_s_2k",
                "rss_largest_over_smallest",
                "resume_s_2k",
                "merge_over_shards_2k",
            ],
        ),
        (
            "startup.py",
            ["--samples", "8", "--repeats", "1"],
            ["help_s", "cfg_job_s", "end_to_end_s", "end_to_end_over_bare"],
        ),
        ("sweep_reuse.py", ["--limit", "2"], ["sweep_model_loads"]),
        (
            "hub_scale.py",
            ["--sizes", "20", "200"],
            ["run_rss_mb_200", "prepare_rss_mb_200", "run_rss_largest_over_smallest"],
        ),
        ("http_concurrency.py", ["--samples", "4", "--repeats", "1"], ["http_c8_speedup"]),
        (
            "kie_scoring.py",
            ["--documents", "50", "--repeats", "1"],
            ["kie_field_rows_per_s", "kie_scoring_over_bare"],
        ),
        (
            "report_scale.py",
            ["--samples", "60", "--repeats", "1"],
            ["report_over_run", "report_html_kb", "report_over_predictions_size"],
        ),
        (
            "shards.py",
            ["--samples", "40", "--repeats", "1"],
            [
                "dummy_shards2_joblib_over_single",
                "model_bound_shards4_joblib_over_single",
                "merged_identical",
            ],
        ),
        (
            "http_load.py",
            ["--requests", "64", "--concurrency", "8"],
            ["load_good_ok", "load_bad_4xx", "load_requests_per_s", "load_server_rss_growth_mb"],
        ),
    ],
)
def test_benchmark_runs_and_prints_its_figures(script, args, figures, model_cache) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MODEL_INTERFACE_CACHE": str(model_cache)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for figure in figures:
        assert re.search(rf"^{figure}=-?[0-9.]+$", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.vllm
@pytest.mark.slow
def test_the_vllm_benchmark_runs_and_prints_its_figures(model_cache) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "vllm_backend.py"), "--samples", "8", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "MODEL_INTERFACE_CACHE": str(model_cache)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for figure in ("vllm_runner_over_bare", "vllm_serve_over_in_process", "hf_over_vllm_batch8"):
        assert re.search(rf"^{figure}=[0-9.]+$", result.stdout, re.MULTILINE), result.stdout
