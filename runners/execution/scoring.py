"""The end of a run: every row of predictions.csv scored (:func:`score`), and the metrics
files written (:func:`write`), with what the run cost (:class:`RunCost`). A run ends here, and so
does the merge of a sharded run.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.errors import RunnerError
from runners.execution.plan import Plan, ids_digest
from runners.metrics.summaries import RunTally
from runners.reports.write import report_run
from runners.rundir.files import iter_complete_rows, read_metrics, write_csv, write_json
from runners.rundir.predictions import PREDICTION_COLUMNS, answers_stream
from runners.tasks.base import SCORE_GUIDE_FILE

log = logging.getLogger("runners.run")


@dataclass
class LoadedModel:
    key: str  # the model config, as JSON: a sweep's next job with the same key reuses the model
    model: Any
    import_s: float  # importing the model's class (and its framework: torch, transformers, ...)
    load_s: float  # constructing the model: weights, processor, engine
    peak_rss_mb: float
    peak_gpu_mb: float | None


@dataclass
class Answered:
    """What :func:`answer` did in this invocation."""

    n_samples: int
    wall_s: float
    peak_rss_mb: float
    peak_gpu_mb: float | None


@dataclass
class RunCost:
    """What this invocation cost and which model it ran: metrics.csv's columns beside the
    counts, timing and quality that come from the rows."""

    model: str
    framework: str
    answered_now: int
    import_s: float
    load_s: float
    model_reused: bool
    cache_hit: bool | None
    wall_s: float
    peak_rss_mb: float
    peak_gpu_mb: float | None

    @classmethod
    def of(cls, loaded: LoadedModel, reused: bool, answered: Answered) -> RunCost:
        model = loaded.model
        return cls(
            model=model.model_name,
            framework=model.framework,
            answered_now=answered.n_samples,
            import_s=0.0 if reused else loaded.import_s,
            load_s=0.0 if reused else loaded.load_s,
            model_reused=reused,
            cache_hit=model.cache_hit,
            wall_s=answered.wall_s,
            peak_rss_mb=max(answered.peak_rss_mb, loaded.peak_rss_mb),
            peak_gpu_mb=max_or_none(answered.peak_gpu_mb, loaded.peak_gpu_mb),
        )

    def columns(self, batch_size: int) -> dict[str, Any]:
        """The cost columns of metrics.csv, in their order."""
        return {
            "answered_now": self.answered_now,
            "batch_size": batch_size,
            "import_s": self.import_s,
            "load_s": self.load_s,
            "model_reused": self.model_reused,
            "cache_hit": self.cache_hit,
            "wall_s": self.wall_s,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_gpu_mb": self.peak_gpu_mb,
        }

    @classmethod
    def nothing_to_answer(cls, answered_row: dict[str, str] | None) -> RunCost:
        """An invocation that found every sample answered (or a shard with none to answer): no
        model loaded, nothing spent; the model named as the answers name it."""
        return cls(
            model=answered_row["model"] if answered_row else "",
            framework=answered_row["framework"] if answered_row else "",
            answered_now=0,
            import_s=0.0,
            load_s=0.0,
            model_reused=False,
            cache_hit=None,
            wall_s=0.0,
            peak_rss_mb=0.0,
            peak_gpu_mb=None,
        )


def score(run_dir: Path, predictions: Any, plan: Plan) -> tuple[Any, Any]:
    """Score every row of predictions.csv with the task, against the dataset's references, and
    write the file back in dataset order with the task's columns, and answers.csv beside it.
    Returns the run's tally of counts and timing, and the task's tally of quality."""
    for stale in FINISHED_RUN_FILES:  # written again below; until then the run is not finished
        (run_dir / stale).unlink(missing_ok=True)
    reference_of = references_in_order(plan.dataset)
    run_tally, quality = RunTally(plan.pricing), plan.task.tally(run_dir)
    if plan.judge is not None:  # every verdict asked (or found cached) before rows are scored
        plan.judge.judge_all(iter_complete_rows(predictions.path))
    answers = answers_stream(run_dir / "answers.csv")

    def scored(row: dict[str, str]) -> dict[str, Any]:
        reference = reference_of(row["sample_id"], int(row["sample_index"]))
        if plan.judge is not None:
            row = {**row, **plan.judge.verdict(row)}
        row = {**row, **plan.task.score_row(row, reference)}
        run_tally.add(row)
        quality.add(row, reference)
        answers.write({"id": row["sample_index"], "model_answer": row["prediction"]})
        return row

    try:
        predictions.rewrite_in_order(scored, prediction_columns(plan))
    except BaseException:
        answers.discard()
        raise
    finally:
        if plan.judge is not None:
            plan.judge.close()
    answers.close()
    quality.close()
    return run_tally, quality


def references_in_order(dataset: Any) -> Callable[[str, int], Any]:
    """The reference of a sample given its id and position, asked in ascending position order:
    one pass over the annotation file, holding one sample at a time (not a dict of them all)."""
    samples = dataset.all_samples()

    def reference_of(sample_id: str, position: int) -> Any:
        for sample in samples:
            if sample.position == position and sample.id == sample_id:
                return sample.reference
            if sample.position >= position:
                break
        raise RunnerError(
            f"predictions.csv answers sample {sample_id!r} at position {position}, which "
            f"{dataset.file} does not hold there; was the file edited? Start a new run"
        )

    return reference_of


# Written, in this order, after predictions.csv is scored; removed before it is scored again.
FINISHED_RUN_FILES = ("metrics.csv", "report.html")


def finished_run(run_dir: Path, plan: Plan) -> dict[str, Any] | None:
    """The metrics row of a run that a resume finds finished: every selected sample answered
    without an error, predictions.csv scored by this task, metrics.csv (and the report, if asked
    for) written since. None otherwise: the run answers what is left and scores everything.

    So a finished run (a sweep run again to retry its failed jobs, say) costs a read of its
    answers' ids, not a scoring pass and a report."""
    runner = plan.settings.runner
    wanted = FINISHED_RUN_FILES if runner.report else FINISHED_RUN_FILES[:1]
    predictions = run_dir / "predictions.csv"
    if not runner.resume or plan.sharded or not predictions.is_file():
        return None
    if not all((run_dir / name).is_file() for name in wanted):
        return None
    answered = []  # their ids
    try:
        with predictions.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            if next(reader, None) != prediction_columns(plan):
                return None  # answered since it was last scored
            id_column, error_column = (PREDICTION_COLUMNS.index(c) for c in ("sample_id", "error"))
            for record in reader:
                if record[error_column]:
                    return None
                answered.append(record[id_column])
    except (csv.Error, UnicodeDecodeError, IndexError):
        return None  # the usual path says what is wrong with the file
    if len(answered) != plan.n_selected or ids_digest(answered) != plan.selection_digest:
        return None
    return read_metrics(run_dir / "metrics.csv")


def write(run_dir: Path, plan: Plan, cost: RunCost, run_tally: Any, quality: Any) -> dict[str, Any]:
    """Write metrics.csv, metrics_by_group.csv and the task's own files; return the metrics
    row."""
    runner = plan.settings.runner
    identity = {
        "model": cost.model,
        "framework": cost.framework,
        "dataset": plan.dataset.name,
        "task": plan.task.name,
    }
    row = metrics_row(
        identity, run_tally, quality, cost=cost.columns(runner.batch_size), judge=plan.judge
    )
    row["status"] = "ok" if row["error_rate"] <= runner.max_error_rate else "too_many_errors"
    write_metrics(run_dir, row, quality, plan.task, report=runner.report)
    log.info("results in %s\n%s", run_dir, _table(row))
    return row


def prediction_columns(plan: Plan) -> list[str]:
    """predictions.csv's columns once scored: the run's, the judge's verdict, the task's."""
    judged = ["judge_reason", "judge_error"] if plan.judge is not None else []
    return PREDICTION_COLUMNS + judged + plan.task.columns


def metrics_row(
    identity: dict[str, Any],
    run_tally: Any,
    quality: Any,
    cost: dict[str, Any] | None = None,
    judge: Any = None,
) -> dict[str, Any]:
    """metrics.csv's one row, of a run or of answers scored by ``runners.evaluate``: what ran
    on what (``identity``), the tally of its answers, what it cost (a run only), mean quality,
    then what judging cost (with a judge)."""
    judging = judge.stats.columns() if judge is not None else {}
    return {**identity, **run_tally.summary(), **(cost or {}), **quality.summary(), **judging}


def write_metrics(
    run_dir: Path, row: dict[str, Any], quality: Any, task: Any, *, report: bool
) -> None:
    """metrics.csv (``row``), metrics_by_group.csv, the task's own small files, how its scores
    read (score_guide.json, for reports), and the report if asked for."""
    write_csv(run_dir / "metrics.csv", [row])
    write_csv(run_dir / "metrics_by_group.csv", quality.groups())
    for name, rows in quality.files().items():
        write_csv(run_dir / name, rows)
    write_json(run_dir / SCORE_GUIDE_FILE, task.score_guide().to_json())
    if report:
        report_run(run_dir)


def max_or_none(*values: float | None) -> float | None:
    present = [value for value in values if value is not None]
    return max(present) if present else None


def _table(row: dict[str, Any]) -> str:
    width = max(len(key) for key in row)
    lines = []
    for key, value in row.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)
