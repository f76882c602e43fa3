"""A finished run read back from its directory for a report: metrics, fingerprint, score
guide, and its worst samples, the predictions streamed once.
"""

from __future__ import annotations

import csv
import functools
import heapq
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.errors import RunnerError
from runners.rundir.files import cell_number, iter_complete_rows, read_complete_rows, read_json
from runners.rundir.predictions import PREDICTION_COLUMNS
from runners.rundir.sweeps import SWEEP_FILE, sweep_runs
from runners.tasks.base import SCORE_GUIDE_FILE, ScoreGuide

MAX_GROUP_ROWS = 20  # a per-group table with more rows shows its worst 20

# What the report knew of the built-in tasks before each run wrote its score_guide.json
# (model-interface 0.2): runs made then are read with it. The first score a run has ranks it.
LEGACY_SCORES = {
    "anls": True,
    "field_f1": True,
    "correct": True,
    "exact_match": True,
    "all_fields_correct": True,
    "field_anls": True,
    "field_exact_match": True,
    "field_precision": True,
    "field_recall": True,
    "json_valid": True,
    "schema_valid": True,
    "cer": False,
    "wer": False,
    "field_cer": False,
}
LEGACY_CORRECTNESS = ("exact_match", "correct", "all_fields_correct")
LEGACY_GROUP_FILES = (
    "metrics_by_group.csv",
    "metrics_by_doc_class.csv",
    "metrics_by_field.csv",
    "metrics_by_label.csv",
    "confusion_matrix.csv",
    "metrics_by_document.csv",
)


class ReportError(RunnerError):
    """A report that can't be made: one line saying why."""


@dataclass
class GroupTable:
    """A per-group metrics file as a report shows it: its lowest-scoring rows (all, if it has
    no more than MAX_GROUP_ROWS), and how many rows it has. A run may have a group per document,
    so the file is read a row at a time, never held."""

    rows: list[dict[str, str]]
    total: int


@dataclass
class Run:
    """A finished run directory, as the report reads it."""

    path: Path
    name: str
    metrics: dict[str, str]
    # predictions.csv, read in one pass and not kept (a run may have millions of rows): ...
    n_rows: int
    scores: list[str]  # ... the per-sample score columns it has,
    call_times: list[float]  # ... each row's call_s,
    worst: list[dict[str, str]]  # ... and its worst rows (worst_samples)
    guide: ScoreGuide  # how its task's scores read
    tables: dict[str, GroupTable] = field(default_factory=dict)  # by group file
    config: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] | None = None

    @functools.cached_property
    def rows(self) -> list[dict[str, str]]:
        """Every row of predictions.csv, in its order: read (and kept) when a comparison asks."""
        return _read_csv(self.path / "predictions.csv")

    @property
    def dataset_format(self) -> str | None:
        return (self.fingerprint or {}).get("dataset", {}).get("format")

    @property
    def dataset_root(self) -> Path | None:
        root = (self.fingerprint or {}).get("dataset", {}).get("root")
        return Path(root) if root else None

    def number(self, key: str) -> float | None:
        return number_or_none(self.metrics.get(key))

    @property
    def rank_by(self) -> str | None:
        """The per-sample score its worst samples are ranked by, if the run has it."""
        return self.guide.rank_by if self.guide.rank_by in self.scores else None

    def higher_is_better(self, name: str) -> bool:
        return self.guide.higher_is_better.get(name, True)


def read_run(path: Path, name: str | None = None, *, worst: int = 12) -> Run:
    """The run in ``path``, keeping its ``worst`` worst rows; refuses a directory that holds no
    finished run."""
    missing = [file for file in ("metrics.csv", "predictions.csv") if not (path / file).is_file()]
    if missing:
        raise ReportError(
            f"{path} is not a finished run (no {' or '.join(missing)}): give a run's output "
            "directory, or a sweep's, e.g. outputs/<run_name> or outputs/multirun/<run_name>"
        )
    # A merged run's config is its shards' (runners/execution/shards.py), each in its own folder.
    configs = [path / ".hydra" / "config.yaml", *sorted(path.glob("shards/*/.hydra/config.yaml"))]
    hydra_config = next((config for config in configs if config.is_file()), configs[0])
    guide_file = path / SCORE_GUIDE_FILE
    try:
        guide = (
            ScoreGuide.from_json(read_json(guide_file))
            if guide_file.is_file()
            else _legacy_guide(_header(path / "predictions.csv"))
        )
    except ValueError as error:  # bad JSON included
        raise ReportError(
            f"{guide_file} is damaged ({error}); delete it to read the run with the built-in "
            "tasks' defaults"
        ) from None
    predictions = path / "predictions.csv"
    n_rows, scores, call_times, worst_rows = _read_predictions(predictions, guide, worst)
    return Run(
        path=path,
        name=name or path.name,
        metrics=_read_csv(path / "metrics.csv")[0],
        n_rows=n_rows,
        scores=scores,
        call_times=call_times,
        worst=worst_rows,
        tables={
            file: read_group_table(path / file, guide)
            for file in guide.group_files
            if (path / file).is_file()
        },
        config=hydra_config.read_text(encoding="utf-8") if hydra_config.is_file() else "",
        environment=_read_json_or_empty(path / "environment.json"),
        fingerprint=_read_json_or_empty(path / "fingerprint.json") or None,
        guide=guide,
    )


def _read_predictions(
    path: Path, guide: ScoreGuide, worst: int
) -> tuple[int, list[str], list[float], list[dict[str, str]]]:
    """One pass over predictions.csv: its number of rows, its score columns (those holding a
    number), each row's call_s, and its ``worst`` worst rows: failed ones first, then by the
    score its task ranks by, then in sample order."""
    rows = iter_complete_rows(path)
    first = next(rows, None)
    columns = [column for column in first or {} if column not in PREDICTION_COLUMNS]
    numeric: set[str] = set()
    call_times: list[float] = []
    n_rows = 0
    rank_by = guide.rank_by if guide.rank_by in columns else None
    sign = 1 if rank_by is None or guide.higher_is_better.get(rank_by, True) else -1

    def counted(row: dict[str, str]) -> dict[str, str]:
        nonlocal n_rows
        n_rows += 1
        if (seconds := number_or_none(row.get("call_s"))) is not None:
            call_times.append(seconds)
        numeric.update(
            column
            for column in columns
            if column not in numeric and number_or_none(row[column]) is not None
        )
        return row

    def badness(row: dict[str, str]) -> tuple[int, float, int]:
        value = number_or_none(row.get(rank_by)) if rank_by else None
        score = -math.inf if value is None else sign * value  # no score: as bad as can be
        return (0 if row.get("error") else 1, score, int(row["sample_index"]))

    every_row = map(counted, itertools.chain([first] if first else [], rows))
    worst_rows = heapq.nsmallest(worst, every_row, key=badness)
    return n_rows, [column for column in columns if column in numeric], call_times, worst_rows


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle), [])


def _legacy_guide(scores: list[str]) -> ScoreGuide:
    """How the scores of a run made before runs wrote score_guide.json read (``scores``: the
    columns of its predictions.csv)."""
    return ScoreGuide(
        higher_is_better=LEGACY_SCORES,
        rank_by=next((name for name in LEGACY_SCORES if name in scores), None),
        correctness=next((name for name in LEGACY_CORRECTNESS if name in scores), None),
        group_files=LEGACY_GROUP_FILES,
    )


def run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Each path as given, but a sweep's directory replaced by its jobs that left results."""
    found: list[Path] = []
    for path in paths:
        if (path / SWEEP_FILE).is_file() and not (path / "metrics.csv").is_file():
            jobs = [run for run in sweep_runs(path) if (run / "metrics.csv").is_file()]
            if not jobs:
                raise ReportError(f"no job of the sweep in {path} has results yet")
            found.extend(jobs)
        else:
            found.append(path)
    return found


def read_group_table(path: Path, guide: ScoreGuide) -> GroupTable:
    """The file's worst MAX_GROUP_ROWS rows by the first score the guide names that the file
    has (lowest first, or highest for a lower-is-better score), ties in file order; its first
    rows if it has no score."""
    header = _header(path)
    ranked = [guide.rank_by, *guide.higher_is_better]
    score = next((name for name in ranked if name and name in header), None)
    total = 0

    def counted(rows: Iterable[dict[str, str]]) -> Iterator[dict[str, str]]:
        nonlocal total
        for row in rows:
            total += 1
            yield row

    rows = counted(iter_complete_rows(path))
    if score is None:
        shown = list(itertools.islice(rows, MAX_GROUP_ROWS))
        for _ in rows:  # counted
            pass
    else:
        sign = 1 if guide.higher_is_better.get(score, True) else -1
        shown = heapq.nsmallest(
            MAX_GROUP_ROWS, rows, key=lambda row: sign * (number_or_none(row[score]) or 0)
        )
    return GroupTable(shown, total)


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(read_complete_rows(path))


def _read_json_or_empty(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def number_or_none(value: Any) -> float | None:
    """A value of a run's files as a report reads it: None for an empty cell, a bool, or text
    that is no number (a report shows a hand-edited file as it is rather than failing on it)."""
    if isinstance(value, bool):
        return None
    try:
        return cell_number(value)
    except (TypeError, ValueError):
        return None
