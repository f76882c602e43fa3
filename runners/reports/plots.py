"""A sweep's quality against speed, as a figure (matplotlib, imported only when drawn)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

QUALITY_PREFERENCE = ("anls", "exact_match", "cer", "wer")


def plot_summary(summary: Any, path: Path) -> None:
    """summary.png: :func:`summary_figure` saved."""
    import matplotlib.pyplot as plt

    figure = summary_figure(summary)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def summary_figure(summary: Any) -> Any:
    """Quality against model time per sample: one point per job, told apart by its job name
    (marker, colour, legend and label), the quality axis from 0."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    quality = next((name for name in QUALITY_PREFERENCE if name in summary), None)
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    finished = summary.dropna(subset=[c for c in ("s_per_sample", quality) if c in summary])
    if quality is not None and "s_per_sample" in finished:
        markers = "osD^v<>ph*"
        for number, job in enumerate(finished.itertuples()):
            point = (job.s_per_sample, getattr(job, quality))
            axes.scatter(*point, label=str(job.job), s=45, marker=markers[number % len(markers)])
            axes.annotate(
                str(job.job), point, fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        top = max(finished[quality].max(), 1.0 if quality in ("anls", "exact_match") else 0.0)
        axes.set_ylim(0, top * 1.05 if math.isfinite(top) and top > 0 else 1)
        axes.set_xlim(left=0)
        axes.legend(fontsize=8, title="job")
    failed = len(summary) - len(finished)
    axes.set_xlabel("model seconds per sample (model time / samples that reached the model)")
    axes.set_ylabel(f"{quality}, mean over samples" if quality else "(no quality metric)")
    note = f"; {failed} job(s) without results not shown" if failed else ""
    axes.set_title(f"quality against model time, one point per job{note}", fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure
