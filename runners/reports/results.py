"""The results table of several runs: one row per model (configuration), one column per
dataset, each cell the run's headline score, the per-sample score its task ranks by (a
benchmark config's one metric: ``docvqa_anls`` for DocVQA, ...), averaged over its samples.

A row is named by the model and by whatever else its runs' Hydra overrides set differently
from the other runs' (``model.init_params.processor_kwargs.max_pixels=...`` in a resolution
sweep), so the runs of one configuration on several benchmarks share a row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from runners.reports.read import ReportError, Run


def spans_datasets(runs: Sequence[Run]) -> bool:
    """Whether ``runs`` are of more than one dataset: then they get a results table."""
    return len({run.metrics.get("dataset") for run in runs}) > 1


def results_table(runs: Sequence[Run]) -> list[dict[str, str]]:
    """The table's rows: ``{"model": ..., "<dataset> (<metric>)": "0.8123", ...}``."""
    overrides = [_job_overrides(run.path) for run in runs]
    shared = set.intersection(*map(set, overrides)) if overrides else set()
    columns: dict[str, None] = {}
    rows: dict[str, dict[str, str]] = {}
    for run, chosen in zip(runs, overrides, strict=True):
        own = [item for item in chosen if item not in shared and not _names_dataset(item)]
        label = " ".join([run.metrics.get("model", "?"), *own])
        headline = run.guide.rank_by
        value = run.number(headline) if headline else None
        column = f"{run.metrics.get('dataset', '?')} ({headline or 'no score'})"
        row = rows.setdefault(label, {"model": label})
        if column in row:
            raise ReportError(
                f"two runs of {label!r} on {column}: {run.path} and another; give one of them"
            )
        columns[column] = None
        row[column] = "" if value is None else f"{value:.4f}"
    return [
        {"model": row["model"], **{c: row.get(c, "") for c in columns}} for row in rows.values()
    ]


def results_csv(rows: Sequence[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def results_markdown(rows: Sequence[dict[str, str]]) -> str:
    columns = list(rows[0])
    lines = [columns, ["---"] * len(columns), *([row[c] for c in columns] for row in rows)]
    return "\n".join(
        "| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines
    )


def _job_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides the run was made with (Hydra keeps them per job)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        return [str(item) for item in OmegaConf.load(path)]
    except Exception:  # a damaged file names no configuration: the model alone does
        return []


def _names_dataset(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return key == "dataset" or key.startswith("dataset.")
