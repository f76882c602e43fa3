"""Score answers without a model: ``python -m runners.evaluate predictions=PATH [overrides]``.

The answers are a run's ``predictions.csv`` (matched to the dataset by ``sample_id``) or a
VLMHyperBench answers file, ``id;model_answer`` with ``id`` the sample's 0-based row in the
annotation file. They are scored with the configured task and metrics (``dataset=``,
``task=``, ``runner.metrics=``, as for ``runners.run``) and written as a run writes them:
predictions.csv, metrics.csv, metrics_by_group.csv, the task's own files and answers.csv, in
Hydra's output directory (``outputs/evaluate/<run_name>/``). Timing and token figures come from
a predictions.csv's rows; an answers file has none.

Every answer must belong to a sample of the dataset, once; samples without an answer are not
scored (a line says how many). A predictions.csv must have been made for these samples: ids
alone can't show it (another dataset numbers its samples alike), so a row whose prompt is not
the one the task sends for its sample, or whose reference is not the sample's, refuses the
file (:func:`_predictions_file`). The answers file has ids and answers only; the answers.csv
every run writes beside its predictions.csv is the way to score answers on purpose against
samples they were not made for. Either file must be UTF-8 and well-formed CSV: whatever is
not is refused in one line, never read in part.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runners.config.job import JobOutcome, hydra_main, run_hydra_command
from runners.config.schema import EvaluateConfig, to_settings
from runners.datasets import decode_reference, encode_reference
from runners.datasets.text import NotUtf8, read_utf8
from runners.errors import RunnerError
from runners.execution.plan import Plan, dataset_and_task, judge_of
from runners.execution.scoring import metrics_row, score, write_metrics
from runners.rundir.predictions import PredictionsFile, sample_columns

log = logging.getLogger("runners.evaluate")


def evaluate(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Score the answers ``cfg.predictions`` names; write the run files to ``output_dir``.

    Returns the metrics row. Raises :class:`RunnerError` for a mistake in the config, the
    dataset or the answers file.
    """
    settings: EvaluateConfig = to_settings(cfg, EvaluateConfig)
    dataset, task, selection = dataset_and_task(
        settings.dataset, settings.task, list(settings.runner.metrics), None
    )
    rows = read_answers(Path(settings.predictions).expanduser(), dataset, task)
    unanswered = selection.size - len(rows)
    if unanswered > 0:
        log.warning("%d samples of the dataset have no answer in the file; not scored", unanswered)

    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    predictions = PredictionsFile(run_dir / "predictions.csv")
    predictions.open(resume=False)
    predictions.append(rows)
    predictions.close()
    plan = Plan(settings, {}, dataset, task, len(rows), judge=judge_of(settings))
    run_tally, quality = score(run_dir, predictions, plan)
    models = {row["model"] for row in rows}
    identity = {
        "model": models.pop() if len(models) == 1 else "",
        "framework": rows[0]["framework"] if rows else "",
        "dataset": dataset.name,
        "task": task.name,
        "answers": str(settings.predictions),
    }
    row = metrics_row(identity, run_tally, quality, judge=plan.judge)
    write_metrics(run_dir, row, quality, task, report=settings.runner.report)
    log.info("scored %d answers into %s", len(rows), run_dir)
    return row


# The columns of predictions.csv that come from the answer (sample_columns gives the rest).
ANSWER_COLUMNS = (
    "model",
    "framework",
    "prompt",
    "prediction",
    "reasoning",
    "call_s",
    "batch_size",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "truncated",
    "image_size",
    "error",
)


def read_answers(path: Path, dataset: Any, task: Any) -> list[dict[str, Any]]:
    """The answers as predictions.csv rows, in dataset order.

    Refuses, in one line each: a file that is not UTF-8 or not well-formed CSV, an answer that
    belongs to no sample, a sample answered twice, and a predictions.csv made for other samples
    (:func:`_predictions_file`).
    """
    if not path.is_file():
        raise RunnerError(
            f"predictions={str(path)!r} does not exist; name a predictions.csv or an answers file"
        )
    samples = {sample.id: sample for sample in dataset.all_samples()}
    by_position = {sample.position: sample for sample in samples.values()}
    text = _utf8_text(path)
    header = text.split("\n", 1)[0]
    if "model_answer" in header:
        pairs = _answers_file(path, text, by_position)
    elif "sample_id" in header and "prediction" in header:
        pairs = _predictions_file(path, text, samples, dataset, task)
    else:
        raise RunnerError(
            f"{path.name} is neither a predictions.csv (sample_id, prediction, ...) nor an "
            f"answers file (id;model_answer); its header is {header[:100]!r}"
        )
    seen: set[str] = set()
    rows = []
    for sample, row in sorted(pairs, key=lambda pair: pair[0].position):
        if sample.id in seen:
            raise RunnerError(f"{path.name} answers sample {sample.id!r} twice; keep one")
        seen.add(sample.id)
        answered = {key: row.get(key, "") for key in ANSWER_COLUMNS}
        rows.append({**answered, **sample_columns(sample, dataset.name)})
    return rows


# What a refusal of answers made for other samples says the user can do instead. answers.csv,
# written beside every predictions.csv, holds only ids and answers: scoring it is the explicit
# way to say "these answers are for these samples", and nothing else is checked.
_OTHERWISE = (
    "or, if the answers do belong to these samples, score the answers.csv written beside the "
    "predictions.csv instead (id;model_answer: matched by row, nothing else checked)"
)


def _predictions_file(
    path: Path, text: str, samples: dict[str, Any], dataset: Any, task: Any
) -> list[tuple[Any, dict[str, str]]]:
    """A run's predictions.csv, each row matched to its sample by ``sample_id``.

    Ids alone don't show that a row answers the sample: another dataset (or another version of
    this one) numbers its samples the same way. So a row's ``prompt`` must be the prompt the
    task sends for the sample, and its ``reference`` the sample's, or the file is refused.
    Either column may be empty (an older run wrote no prompt; a run on an unlabelled copy of
    the dataset wrote no reference): an empty column shows nothing, and contradicts nothing.

    The ``dataset`` column is only a name (``dataset.name=`` renames a dataset), so a name of
    its own doesn't refuse the file when prompts or references show the answers belong here;
    it refuses only when no row's prompt or reference could be compared, as it is then the one
    thing the file says about where its answers come from.
    """
    columns, records = _csv_rows(path, text, delimiter=",")
    missing = [column for column in ("sample_id", "prediction") if column not in columns]
    if missing:
        raise RunnerError(f"{path.name} has no column(s) {missing}; its header is {columns}")
    pairs = []
    compared_any = False
    other_name = None  # the first row naming another dataset: (where, sample id, the name)
    for line, row in records:
        where = f"{path.name} line {line}"
        sample = samples.get(row["sample_id"])
        if sample is None:
            raise RunnerError(
                f"{where}: sample_id {row['sample_id']!r} is not in dataset {dataset.name!r}"
            )
        for column, written, expected, same in _compared(row, sample, task):
            compared_any = True
            if not same:
                raise RunnerError(
                    _contradiction(
                        where, sample.id, column, written, expected, dataset.name, task.name
                    )
                )
        if other_name is None and row.get("dataset") and row["dataset"] != dataset.name:
            other_name = (where, sample.id, row["dataset"])
        pairs.append((sample, row))
    if other_name is not None:
        where, sample_id, name = other_name
        if not compared_any:
            theirs, ours = _excerpts(name, dataset.name)
            raise RunnerError(
                f"{where}: sample {sample_id!r} has dataset {theirs} in the file, but the "
                f"dataset is {ours}, and the file's prompt and reference columns are empty, so "
                "nothing shows its answers belong to it: choose the dataset they were made for "
                f"(dataset.name={name} if it is this one, renamed), {_OTHERWISE}"
            )
        log.warning(
            "%s names dataset %r, not %r; its prompts and references are this "
            "dataset's, so it is scored as %r",
            path.name,
            name,
            dataset.name,
            dataset.name,
        )
    return pairs


def _contradiction(
    where: str, sample_id: str, column: str, written: str, expected: str, dataset: str, task: str
) -> str:
    """The refusal of a row whose ``column`` (prompt or reference) is not the sample's."""
    theirs, ours = _excerpts(written, expected)
    if column == "prompt":
        source, made_for = f"task={task} asks", "other prompts"
        fix = (
            "choose the dataset and task the run used (dataset=..., dataset.prompt_template"
            "=..., dataset.prompt_collection=..., task=... and its options)"
        )
    else:
        source, made_for = f"dataset {dataset!r} has", "other samples"
        fix = "choose the dataset they were made for (dataset=..., dataset.root=...)"
    return (
        f"{where}: sample {sample_id!r} has {column} {theirs} in the file, but {source} "
        f"{ours}; the answers were made for {made_for}: {fix}, {_OTHERWISE}"
    )


def _compared(row: dict[str, str], sample: Any, task: Any) -> list[tuple[str, str, str, bool]]:
    """The row's prompt and reference beside what they must be for ``sample``: ``(column, the
    file's value, the expected value as text, whether they agree)``. Only what both sides have
    is compared: an empty column in the file, or a sample without a reference, is left out."""
    compared = []
    if row.get("prompt"):
        # A run writes the prompt it sent: the task's, built from the sample (runners.run).
        sent = task.request(sample, []).prompt
        compared.append(("prompt", row["prompt"], sent, row["prompt"] == sent))
    if row.get("reference") and sample.reference is not None:
        same = _same_reference(row["reference"], sample.reference)
        compared.append(("reference", row["reference"], encode_reference(sample.reference), same))
    return compared


def _same_reference(written: str, reference: Any) -> bool:
    """Whether a reference cell says the dataset's reference. It is compared decoded, so that a
    list or an object of fields written as JSON equals the dataset's however it is spaced."""
    if isinstance(reference, Mapping):  # fields, written as a JSON object
        try:
            return json.loads(written) == reference
        except ValueError:
            return False
    return decode_reference(written) == reference


def _excerpts(first: str, second: str, width: int = 60) -> tuple[str, str]:
    """Two texts for a message, each as ``repr`` of about ``width`` characters. Both are cut
    from a little before where they first differ, so that two long prompts that differ only
    near their end don't show as the same excerpt."""
    pairs = zip(first, second, strict=False)  # up to the shorter text's end
    shared = next(
        (index for index, (a, b) in enumerate(pairs) if a != b), min(len(first), len(second))
    )
    start = max(0, shared - width // 3) if shared > width // 2 else 0

    def excerpt(text: str) -> str:
        piece = text[start : start + width]
        return ("..." if start else "") + repr(piece) + ("..." if start + width < len(text) else "")

    return excerpt(first), excerpt(second)


def _utf8_text(path: Path) -> str:
    """The file's text, UTF-8 with or without BOM; one line naming the first line that isn't."""
    try:
        return read_utf8(path)
    except NotUtf8 as error:
        raise RunnerError(
            f"{error}; re-save it as UTF-8 (with or without BOM) and run the same command again"
        ) from None


def _csv_rows(
    path: Path, text: str, delimiter: str
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV text's header, and its rows by the line each starts on (blank lines skipped).

    Refuses in one line what Python's tolerant reading would take apart without a word: a
    quote never closed (its field would swallow the rest of the file), text after a closing
    quote, a row with more or fewer fields than the header (a value holding the separator
    unquoted, a line cut short).
    """
    # Fields of any length are read: runners/__init__.py raises the csv module's field limit.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows = []
    line = 1  # where the next record starts
    try:
        for record in reader:
            start, line = line, reader.line_num + 1
            if not record:
                continue
            if header is None:
                header = record
            elif len(record) != len(header):
                raise RunnerError(
                    f"{path.name} line {start}: the header has {len(header)} fields, this "
                    f"line {len(record)}; quote a value that holds {delimiter!r}, and complete "
                    "or remove a line cut short"
                )
            else:
                rows.append((start, dict(zip(header, record, strict=True))))
    except csv.Error as error:
        raise RunnerError(
            f"{path.name} line {line} is not valid CSV ({error}): a quote that is never closed, "
            "or text after a closing quote; fix the quoting, or remove the line if the file "
            "was cut short"
        ) from None
    return header or [], rows


def _answers_file(path: Path, text: str, by_position: dict[int, Any]) -> list[tuple[Any, dict]]:
    """VLMHyperBench's ``id;model_answer``: ``id`` the 0-based row of the annotation file."""
    columns, records = _csv_rows(path, text, delimiter=";")
    if "id" not in columns:
        raise RunnerError(f"{path.name} has no 'id' column; its header is {columns}")
    pairs = []
    for line, row in records:
        where = f"{path.name} line {line}"
        try:
            position = int(row["id"])
        except ValueError:
            raise RunnerError(f"{where}: id {row['id']!r} is not a row number") from None
        if position not in by_position:
            raise RunnerError(
                f"{where}: id {position} is no row of the annotation file "
                f"(it has {len(by_position)}, numbered from 0)"
            )
        pairs.append((by_position[position], {"prediction": row.get("model_answer") or ""}))
    return pairs


def cli() -> None:
    """``python -m runners.evaluate``."""
    from hydra.core.hydra_config import HydraConfig

    outcome = JobOutcome()
    run_hydra_command(
        hydra_main(
            "evaluate",
            lambda cfg: outcome.run(lambda: evaluate(cfg, HydraConfig.get().runtime.output_dir)),
        )
    )
    sys.exit(outcome.exit_status)


if __name__ == "__main__":
    cli()
