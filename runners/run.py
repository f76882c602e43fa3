"""Benchmark a vision-language model on a dataset: ``python -m runners.run [overrides]``.

The Hydra entry point is thin: it hands the composed config and the run's output directory to
:func:`run_experiment`, which tests call directly. Heavy imports (torch, the model's
framework) happen inside it, so ``--help`` stays fast.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import math
import os
import random
import sys
from collections.abc import Iterator
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


_current_model: _LoadedModel | None = None  # kept between the jobs of a sweep


def load_model(model_config: dict[str, Any]) -> tuple[_LoadedModel, bool]:
    """The model for ``model_config``; consecutive runs with the same config reuse it.

    Returns the loaded model and whether it was reused.
    """
    global _current_model
    from model_interface import ModelFactory, measure

    key = json.dumps(model_config, sort_keys=True, default=str)
    if _current_model is not None and _current_model.key == key:
        return _current_model, True
    if _current_model is not None:
        _current_model.model.close()
        _current_model = None
    with measure() as cost:
        model = ModelFactory.from_config(model_config)
    _current_model = _LoadedModel(key, model, cost.wall_s, cost.peak_rss_mb, cost.peak_gpu_mb)
    return _current_model, False


def plain_settings(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain dicts and lists, interpolations resolved; a ``???`` left unset is a
    :class:`RunnerError` naming the key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise RunnerError(
            f"{error.full_key} has no value; set it on the command line, e.g. {error.full_key}=..."
        ) from None


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
        write_csv,
        write_json,
    )
    from runners.pipeline import answer_samples

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = plain_settings(cfg)
    runner = settings["runner"]
    try:
        metric_names = list(runner["metrics"])
        quality.validate_names(metric_names)
        dataset = Dataset.from_config(settings["dataset"])
        if next(itertools.islice(dataset.samples(), runner["limit"]), None) is None:
            raise RunnerError(
                f"dataset {dataset.name!r} has no samples to run: check its filters "
                f"{ {name: sorted(values) for name, values in dataset.filters.items()} }, "
                "dataset.limit and runner.limit"
            )
        loaded, reused = load_model(settings["model"])
    except (DatasetError, ModelFactoryError, ModelCreationError, ValueError) as error:
        raise RunnerError(str(error)) from error
    model = loaded.model
    _seed_everything(settings["seed"])
    write_json(output_dir / "environment.json", environment_record(settings["seed"], PROJECT_ROOT))

    predictions = PredictionsFile(output_dir / "predictions.csv", PREDICTION_COLUMNS + metric_names)
    try:
        kept = predictions.open(resume=runner["resume"])
    except FileExistsError as error:
        raise RunnerError(str(error)) from error
    tally = quality.RunTally(metric_names)
    for row in kept:
        tally.add(row, processed=False)
    done = {row["sample_id"] for row in kept}
    del kept

    def todo() -> Iterator[tuple[int, Any]]:
        """(position in the dataset, sample) for every sample not answered yet."""
        samples = itertools.islice(dataset.samples(), runner["limit"])
        return ((index, s) for index, s in enumerate(samples) if s.id not in done)

    n_todo = sum(1 for _ in todo())  # reads the annotation text only, never an image
    if done:
        log.info("resuming: %d samples already answered, %d to go", len(done), n_todo)
    log.info(
        "%s (%s) on %s: %d samples, batch size %d",
        model.model_name,
        model.framework,
        dataset.name,
        n_todo,
        runner["batch_size"],
    )

    progress = _progress_bar(n_todo, enabled=runner["progress"])
    with measure() as cost:
        for answers in answer_samples(
            model,
            dataset,
            todo(),
            batch_size=runner["batch_size"],
            sort_window_batches=runner["sort_window_batches"],
            prefetch_workers=runner["prefetch_workers"],
            max_image_pixels=runner["max_image_pixels"],
            image_cache_mb=runner["image_cache_mb"],
        ):
            rows = [_row(answer, dataset.name, model, metric_names) for answer in answers]
            predictions.append(rows)
            for row in rows:
                tally.add(row, processed=True)
            progress.update(len(rows))
    progress.close()
    predictions.finish()

    row = {
        "model": model.model_name,
        "framework": model.framework,
        "dataset": dataset.name,
        "n_samples": tally.n_samples,
        "n_errors": tally.n_errors,
        "error_rate": tally.n_errors / tally.n_samples if tally.n_samples else 0.0,
        "n_processed": tally.n_processed,
        "batch_size": runner["batch_size"],
        "load_s": 0.0 if reused else loaded.load_s,
        "model_reused": reused,
        "cache_hit": model.cache_hit,
        "total_s": cost.wall_s,
        "samples_per_s": tally.n_processed / cost.wall_s if cost.wall_s else math.nan,
        **tally.latency_stats(),
        "prompt_tokens": tally.prompt_tokens,
        "completion_tokens": tally.completion_tokens,
        "tokens_per_s": tally.completion_tokens / cost.wall_s if cost.wall_s else math.nan,
        "peak_rss_mb": max(cost.peak_rss_mb, loaded.peak_rss_mb),
        "peak_gpu_mb": _max_or_none(cost.peak_gpu_mb, loaded.peak_gpu_mb),
    }
    overall = tally.quality.overall()
    row.update({name: overall[name] for name in metric_names})
    row["status"] = "ok" if row["error_rate"] <= runner["max_error_rate"] else "too_many_errors"
    write_csv(output_dir / "metrics.csv", [row])
    if groups := tally.groups():
        write_csv(output_dir / "metrics_by_group.csv", groups)
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


def cli() -> None:
    """``python -m runners.run`` and the ``vlm-run`` command: :func:`main`, then a fast exit.

    With torch and transformers loaded, the interpreter's own teardown (finalising every module)
    takes a second or more and does nothing a finished run needs, so once the model is closed
    and the exit handlers have run (log flushing), a single run leaves at once. Sweeps exit
    normally: their launchers (joblib, submitit) clean up worker resources in finalisers.
    """
    if {"-m", "--multirun"} & set(sys.argv[1:]):
        main()
        return
    try:
        main()
        code = 0
    except SystemExit as exit_request:
        code = exit_request.code
    if _current_model is not None:
        _current_model.model.close()  # engines with worker processes must stop them
    if isinstance(code, str):  # sys.exit("message") prints the message and exits with 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # what a normal exit runs first: logging.shutdown, ...
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    cli()
