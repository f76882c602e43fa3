"""Hydra callbacks: a summary of every job when a sweep ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Writes summary.csv (every job's metrics row) and summary.png at the sweep root."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = write_summary(sweep_dir)
        if summary is None:
            log.warning("no metrics.csv found under %s; nothing to summarise", sweep_dir)
            return
        failed = summary[summary["status"] != "ok"]
        log.info("sweep summary: %s (%d jobs)", sweep_dir / "summary.csv", len(summary))
        if len(failed):
            log.error(
                "%d job(s) exceeded runner.max_error_rate: %s",
                len(failed),
                ", ".join(f"{row.model} on {row.dataset}" for row in failed.itertuples()),
            )
            raise SystemExit(1)


def write_summary(sweep_dir: Path) -> Any:
    """Concatenate the jobs' metrics.csv into summary.csv and plot summary.png."""
    import pandas as pd

    files = sorted(sweep_dir.glob("*/metrics.csv"))
    if not files:
        return None
    summary = pd.concat(
        [pd.read_csv(path).assign(job=path.parent.name) for path in files], ignore_index=True
    )
    summary.to_csv(sweep_dir / "summary.csv", index=False)
    plot_summary(summary, sweep_dir / "summary.png")
    return summary


QUALITY_PREFERENCE = ("anls", "exact_match", "cer", "wer")


def plot_summary(summary: Any, path: Path) -> None:
    """Quality against mean latency, one point per job, labelled model @ dataset."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    quality = next((name for name in QUALITY_PREFERENCE if name in summary), None)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for model, jobs in summary.groupby("model"):
        y = jobs[quality] if quality else [0] * len(jobs)
        axes.scatter(jobs["latency_mean_s"], y, label=model, s=40)
        for job in jobs.itertuples():
            axes.annotate(
                str(job.dataset),
                (job.latency_mean_s, getattr(job, quality) if quality else 0),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    axes.set_xlabel("mean latency per sample (s)")
    axes.set_ylabel(quality or "(no quality metric)")
    axes.set_title("quality vs latency per model and dataset")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
