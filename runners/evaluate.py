"""Score answers without a model: ``python -m runners.evaluate predictions=PATH [overrides]``.

The answers are a run's ``predictions.csv`` (matched to the dataset by ``sample_id``) or a
VLMHyperBench answers file, ``id;model_answer`` with ``id`` the sample's 0-based row in the
annotation file. They are scored with the configured task and metrics (``dataset=``,
``task=``, ``runner.metrics=``, as for ``runners.run``) and written as a run writes them:
predictions.csv, metrics.csv, metrics_by_group.csv, the task's own files and answers.csv, in
Hydra's output directory (``outputs/evaluate/<run_name>/``). Timing and token figures come from
a predictions.csv's rows; an answers file has none.

Every answer must belong to a sample of the dataset, once; samples without an answer are not
scored (a line says how many).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from runners.config import CONFIG_DIR, EvaluateConfig, RunnerError, to_settings

log = logging.getLogger("runners.evaluate")


def evaluate(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Score the answers ``cfg.predictions`` names; write the run files to ``output_dir``.

    Returns the metrics row. Raises :class:`RunnerError` for a mistake in the config, the
    dataset or the answers file.
    """
    from runners.outputs import PredictionsFile
    from runners.run import Plan, dataset_and_task, score, write_metrics

    settings: EvaluateConfig = to_settings(cfg, EvaluateConfig)
    dataset, task = dataset_and_task(settings.dataset, settings.task, list(settings.runner.metrics))
    rows = read_answers(Path(settings.predictions).expanduser(), dataset)
    unanswered = sum(1 for _ in dataset.samples()) - len(rows)
    if unanswered > 0:
        log.warning("%d samples of the dataset have no answer in the file; not scored", unanswered)

    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    predictions = PredictionsFile(run_dir / "predictions.csv")
    predictions.open(resume=False)
    predictions.append(rows)
    predictions.close()
    run_tally, quality = score(run_dir, predictions, Plan(settings, {}, dataset, task, len(rows)))
    models = {row["model"] for row in rows}
    row = {
        "model": models.pop() if len(models) == 1 else "",
        "framework": rows[0]["framework"] if rows else "",
        "dataset": dataset.name,
        "task": task.name,
        "answers": str(settings.predictions),
        **run_tally.summary(),
        **quality.summary(),
    }
    write_metrics(run_dir, row, quality)
    if settings.runner.report:
        from runners.report import report_run

        report_run(run_dir)
    log.info("scored %d answers into %s", len(rows), run_dir)
    return row


def read_answers(path: Path, dataset: Any) -> list[dict[str, Any]]:
    """The answers as predictions.csv rows, in dataset order; refuses an answer that belongs
    to no sample, or a sample answered twice."""
    from runners.datasets import encode_reference
    from runners.outputs import read_complete_rows

    if not path.is_file():
        raise RunnerError(f"predictions={str(path)!r} does not exist; name a predictions.csv "
                          "or an answers file")  # fmt: skip
    samples = {sample.id: sample for sample in dataset.all_samples()}
    by_position = {sample.position: sample for sample in samples.values()}
    header = path.read_text(encoding="utf-8-sig").split("\n", 1)[0]
    if "model_answer" in header:
        pairs = _answers_file(path, by_position)
    elif "sample_id" in header and "prediction" in header:
        pairs = []
        for number, row in enumerate(read_complete_rows(path), start=2):
            sample = samples.get(row["sample_id"])
            if sample is None:
                raise RunnerError(f"{path.name} line {number}: sample_id {row['sample_id']!r} "
                                  f"is not in dataset {dataset.name!r}")  # fmt: skip
            pairs.append((sample, row))
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
        rows.append({
            **{key: row.get(key, "") for key in ("model", "framework", "prompt", "call_s",
                                                   "batch_size", "prompt_tokens",
                                                   "completion_tokens", "error")},
            "sample_id": sample.id, "sample_index": sample.position, "dataset": dataset.name,
            "image_paths": json.dumps(list(sample.images), ensure_ascii=False),
            "prediction": row.get("prediction", ""),
            "reference": encode_reference(sample.reference),
            "split": sample.split, "doc_class": sample.doc_class,
            "question_type": sample.question_type, "document_id": sample.document,
        })  # fmt: skip
    return rows


def _answers_file(path: Path, by_position: dict[int, Any]) -> list[tuple[Any, dict[str, Any]]]:
    """VLMHyperBench's ``id;model_answer``: ``id`` the 0-based row of the annotation file."""
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=";")
    if "id" not in (reader.fieldnames or []):
        raise RunnerError(f"{path.name} has no 'id' column; its header is {reader.fieldnames}")
    pairs = []
    for row in reader:
        where = f"{path.name} line {reader.line_num}"
        try:
            position = int(row["id"])
        except (TypeError, ValueError):
            raise RunnerError(f"{where}: id {row['id']!r} is not a row number") from None
        if position not in by_position:
            raise RunnerError(f"{where}: id {position} is no row of the annotation file "
                              f"(it has {len(by_position)}, numbered from 0)")  # fmt: skip
        pairs.append((by_position[position], {"prediction": row.get("model_answer") or ""}))
    return pairs


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return evaluate(cfg, HydraConfig.get().runtime.output_dir)
    except RunnerError as error:
        log.error("%s", error)
        raise SystemExit(error.exit_code) from None


def cli() -> None:
    """``python -m runners.evaluate``."""
    from runners.config import run_hydra_command

    run_hydra_command(main)


if __name__ == "__main__":
    cli()
