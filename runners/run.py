"""Benchmark a vision-language model on a dataset: ``python -m runners.run [overrides]``.

The Hydra entry point is thin: it hands the composed config and the run's output directory to
:func:`run_experiment`, which tests call directly. Heavy imports (pandas, torch, the model's
framework) happen inside it, so ``--help`` stays fast.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))

log = logging.getLogger("runners.run")


class RunnerError(Exception):
    """A mistake in the run's configuration or inputs; the message says how to fix it."""


@dataclass
class _LoadedModel:
    key: str
    model: Any
    load_s: float
    peak_rss_mb: float
    peak_gpu_mb: float | None


_current_model: _LoadedModel | None = None
model_loads = 0  # how many times this process loaded a model (sweeps reuse them)


def load_model(model_config: dict[str, Any]) -> tuple[_LoadedModel, bool]:
    """The model for ``model_config``; consecutive runs with the same config reuse it.

    Returns the loaded model and whether it was reused.
    """
    global _current_model, model_loads
    from model_interface import ModelFactory, measure

    key = json.dumps(model_config, sort_keys=True, default=str)
    if _current_model is not None and _current_model.key == key:
        return _current_model, True
    if _current_model is not None:
        _current_model.model.close()
        _current_model = None
    with measure() as cost:
        model = ModelFactory.from_config(model_config)
    model_loads += 1
    _current_model = _LoadedModel(key, model, cost.wall_s, cost.peak_rss_mb, cost.peak_gpu_mb)
    return _current_model, False


def run_experiment(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run one model on one dataset; write predictions, metrics and environment to output_dir.

    Returns the metrics row. Raises :class:`RunnerError` for configuration mistakes.
    """
    from model_interface import ModelCreationError, ModelFactoryError, measure
    from runners import metrics as quality
    from runners.datasets import Dataset, DatasetError
    from runners.outputs import (
        PREDICTION_COLUMNS,
        PredictionsFile,
        environment_record,
        write_json,
    )
    from runners.pipeline import answer_samples

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        settings = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise RunnerError(
            f"{error.full_key} has no value; set it on the command line, e.g. {error.full_key}=..."
        ) from None
    runner = settings["runner"]
    try:
        metric_names = list(runner["metrics"])
        quality.validate_names(metric_names)
        dataset = Dataset.from_config(settings["dataset"])
        loaded, reused = load_model(settings["model"])
    except (DatasetError, ModelFactoryError, ModelCreationError, ValueError) as error:
        raise RunnerError(str(error)) from error
    model = loaded.model
    _seed_everything(settings["seed"])
    write_json(output_dir / "environment.json", environment_record(settings["seed"], PROJECT_ROOT))

    predictions = PredictionsFile(output_dir / "predictions.csv", PREDICTION_COLUMNS + metric_names)
    try:
        done = predictions.open(resume=runner["resume"])
    except FileExistsError as error:
        raise RunnerError(str(error)) from error
    samples = itertools.islice(dataset.samples(), runner["limit"])
    todo = [(index, sample) for index, sample in enumerate(samples) if sample.id not in done]
    if not todo and not done:
        raise RunnerError(
            f"dataset {dataset.name!r} has no samples to run: check its filters "
            f"{ {name: sorted(values) for name, values in dataset.filters.items()} }, "
            "dataset.limit and runner.limit"
        )
    if done:
        log.info("resuming: %d samples already answered, %d to go", len(done), len(todo))
    log.info(
        "%s (%s) on %s: %d samples, batch size %d",
        model.model_name,
        model.framework,
        dataset.name,
        len(todo),
        runner["batch_size"],
    )

    processed = prompt_tokens = completion_tokens = 0
    progress = _progress_bar(len(todo), enabled=runner["progress"])
    with measure() as cost:
        for answers in answer_samples(
            model,
            dataset,
            todo,
            batch_size=runner["batch_size"],
            sort_window_batches=runner["sort_window_batches"],
            prefetch_workers=runner["prefetch_workers"],
            max_image_pixels=runner["max_image_pixels"],
        ):
            rows = [_row(answer, dataset.name, model, metric_names) for answer in answers]
            predictions.append(rows)
            processed += len(rows)
            prompt_tokens += sum(row["prompt_tokens"] or 0 for row in rows)
            completion_tokens += sum(row["completion_tokens"] or 0 for row in rows)
            progress.update(len(rows))
    progress.close()
    rows = predictions.sort_by("sample_index")

    import pandas as pd

    frame = pd.DataFrame(rows, columns=predictions.columns)
    for column in ["latency_s", "prompt_tokens", "completion_tokens", *metric_names]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    n_errors = int((frame["error"] != "").sum())
    latencies = frame.loc[frame["error"] == "", "latency_s"].dropna()
    row = {
        "model": model.model_name,
        "framework": model.framework,
        "dataset": dataset.name,
        "n_samples": len(frame),
        "n_errors": n_errors,
        "error_rate": n_errors / len(frame) if len(frame) else 0.0,
        "n_processed": processed,
        "batch_size": runner["batch_size"],
        "load_s": loaded.load_s,
        "model_reused": reused,
        "cache_hit": model.cache_hit,
        "total_s": cost.wall_s,
        "samples_per_s": processed / cost.wall_s if cost.wall_s else math.nan,
        "latency_mean_s": latencies.mean(),
        "latency_p50_s": latencies.quantile(0.5),
        "latency_p95_s": latencies.quantile(0.95),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "tokens_per_s": completion_tokens / cost.wall_s if cost.wall_s else math.nan,
        "peak_rss_mb": max(cost.peak_rss_mb, loaded.peak_rss_mb),
        "peak_gpu_mb": _max_or_none(cost.peak_gpu_mb, loaded.peak_gpu_mb),
    }
    overall = quality.summarize(frame, metric_names)
    row.update({name: overall[name].iloc[0] for name in metric_names})
    row["status"] = "ok" if row["error_rate"] <= runner["max_error_rate"] else "too_many_errors"
    pd.DataFrame([row]).to_csv(output_dir / "metrics.csv", index=False)
    by = [column for column in ("doc_class", "question_type") if (frame[column] != "").any()]
    if by:
        grouped = quality.summarize(frame, metric_names, by=by)
        grouped.to_csv(output_dir / "metrics_by_group.csv", index=False)
    log.info("results in %s\n%s", output_dir, _table(row))
    return row


def _row(answer: Any, dataset_name: str, model: Any, metric_names: list[str]) -> dict[str, Any]:
    from runners import metrics as quality

    sample, prediction = answer.sample, answer.prediction
    scores = {}
    if sample.reference is not None:
        scores = quality.score(prediction.text, sample.reference, metric_names)
    return {
        "sample_id": sample.id,
        "sample_index": answer.index,
        "dataset": dataset_name,
        "model": model.model_name,
        "framework": model.framework,
        "image_paths": json.dumps(list(sample.images), ensure_ascii=False),
        "prompt": sample.prompt,
        "prediction": prediction.text,
        "reference": sample.reference,
        "latency_s": None if answer.latency_s is None else round(answer.latency_s, 6),
        "batch_size": answer.batch_size,
        "prompt_tokens": prediction.prompt_tokens,
        "completion_tokens": prediction.completion_tokens,
        "error": prediction.error or "",
        "split": sample.split,
        "doc_class": sample.doc_class,
        "question_type": sample.question_type,
        **scores,
    }


def _seed_everything(seed: int) -> None:
    # Seed only what is already imported (by the model): importing torch here would cost seconds.
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def _max_or_none(*values: float | None) -> float | None:
    present = [value for value in values if value is not None]
    return max(present) if present else None


def _progress_bar(total: int, *, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, unit="sample", disable=not enabled, dynamic_ncols=True, mininterval=0.5
    )


def _table(row: dict[str, Any]) -> str:
    width = max(len(key) for key in row)
    lines = []
    for key, value in row.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_config = HydraConfig.get()
    try:
        row = run_experiment(cfg, hydra_config.runtime.output_dir)
    except RunnerError as error:
        log.error("%s", error)
        raise SystemExit(2) from None
    if row["status"] != "ok" and hydra_config.mode == RunMode.RUN:
        log.error(
            "%d of %d samples failed (%.1f%%), over runner.max_error_rate=%s",
            row["n_errors"],
            row["n_samples"],
            100 * row["error_rate"],
            cfg.runner.max_error_rate,
        )
        raise SystemExit(1)
    return row


if __name__ == "__main__":
    main()
