"""Sweeps: a failed job gets its row and does not stop the others; the summary holds this
sweep's jobs in order."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from runners.reports.plots import summary_figure
from tests.support.helpers import run_cli


@pytest.mark.slow
def test_a_job_whose_model_cannot_load_fails_alone(model_cache: Path, tmp_path: Path) -> None:
    result = run_cli(
        "--multirun",
        "model=qwen2_vl_2b,dummy",
        "runner.limit=2",
        "run_name=s",
        cwd=tmp_path,
        cache_dir=tmp_path / "empty_cache",
    )
    assert result.returncode == 1, result.stdout[-3000:]
    assert "1 of 2 runs did not end ok: 0_qwen2_vl_2b_sample_docs: failed" in result.stdout
    sweep = tmp_path / "outputs" / "multirun" / "s"
    summary = pd.read_csv(sweep / "summary.csv", keep_default_na=False)
    assert summary["job"].tolist() == ["0_qwen2_vl_2b_sample_docs", "1_dummy_sample_docs"]
    assert summary["status"].tolist() == ["failed", "ok"]
    assert (
        "python -m model_interface.cache download Qwen/Qwen2-VL-2B-Instruct"
        in (summary.loc[0, "error"])
    )
    assert summary.loc[0, "model"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert summary.loc[1, "n_samples"] == "2" and summary.loc[1, "error"] == ""
    assert (sweep / "summary.png").stat().st_size > 1000


@pytest.mark.slow
def test_jobs_are_ordered_by_number_and_earlier_sweeps_are_left_out(model_cache, tmp_path):
    first = run_cli(
        "--multirun",
        "model=dummy",
        "runner.limit=range(1,12)",
        "run_name=s",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert first.returncode == 0, first.stdout[-3000:]
    sweep = tmp_path / "outputs" / "multirun" / "s"
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["num"].tolist() == list(range(11))  # 10 after 9, not after 1
    assert summary["n_samples"].tolist() == list(range(1, 12))
    job_1_metrics = (sweep / "1_dummy_sample_docs" / "metrics.csv").read_bytes()

    again = run_cli(
        "--multirun",
        "model=dummy",
        "runner.limit=3,2",
        "run_name=s",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert again.returncode == 0, again.stdout[-3000:]
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["num"].tolist() == [0, 1]  # the 9 folders left by the first sweep are not
    # job 0 resumed the first sweep's job 0; job 1 found the first sweep's job 1 finished and
    # kept its files (answered_now is what answering it cost then)
    assert summary["answered_now"].tolist() == [2, 2]
    assert (sweep / "1_dummy_sample_docs" / "metrics.csv").read_bytes() == job_1_metrics
    assert summary["n_samples"].tolist() == [3, 2]


def test_the_summary_plot_says_what_its_axes_show() -> None:
    summary = pd.DataFrame(
        {
            "num": [0, 1, 2],
            "job": ["0_a", "1_b", "2_c"],
            "model": ["a", "b", "c"],
            "status": ["ok", "ok", "failed"],
            "s_per_sample": [0.5, 0.25, None],
            "anls": [0.4, 0.6, None],
            "cer": [0.7, 0.3, None],
        }
    )
    (axes,) = summary_figure(summary).axes
    assert axes.get_xlabel() == (
        "model seconds per sample (model time / samples that reached the model)"
    )
    assert axes.get_ylabel() == "anls, mean over samples"
    assert axes.get_ylim()[0] == 0
    assert [text.get_text() for text in axes.texts] == ["0_a", "1_b"]
    # Jobs are told apart by name, even two of the same model.
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["0_a", "1_b"]
    assert "1 job(s) without results not shown" in axes.get_title()
