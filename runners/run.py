"""Benchmark a vision-language model on a dataset: ``python -m runners.run [overrides]``.

A run is seven steps, one function each: :func:`check` (the config, the whole dataset) →
:func:`claim` (the run directory: locked while the run answers, its fingerprint compared) →
:func:`load` (the model) → :func:`resume` (what is answered already) → :func:`answer` →
:func:`score` (every row of predictions.csv) → :func:`write` (metrics). Every mistake in the
config or the dataset is found by ``check``, before a model is loaded. A shard of a run
(:mod:`runners.shards`) ends in ``finish_shard`` instead of the last two: the last shard to
end scores and writes the merged run.

The Hydra entry point is thin: it hands the composed config and the run's output directory to
:func:`run_experiment`, which tests call directly. Heavy imports (torch, the model's
framework) happen in ``load``, so ``--help`` and a refused config stay fast.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import logging
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from runners.config import (
    CONFIG_DIR,
    PROJECT_ROOT,
    Interrupted,
    RunConfig,
    RunnerError,
    model_config,
    shard_folder,
    to_settings,
)

__all__ = ["CONFIG_DIR", "PROJECT_ROOT", "RunnerError", "main", "run_experiment"]

log = logging.getLogger("runners.run")


@dataclass
class Plan:
    """What :func:`check` established: the settings, the dataset, the task and what to run."""

    settings: RunConfig
    model: dict[str, Any]  # the model config, a system_prompt_file read
    dataset: Any  # runners.datasets.Dataset
    task: Any  # runners.tasks.Task
    n_selected: int
    fingerprint: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def sharded(self) -> bool:
        return self.settings.runner.num_shards > 1

    def answers_dir(self, run_dir: Path) -> Path:
        """Where this run keeps its answers: the run directory, or its shard's folder in it."""
        runner = self.settings.runner
        return run_dir / shard_folder(runner.shard_index, runner.num_shards)

    def selected(self) -> Iterator[Any]:
        """The samples this run answers, in dataset order: the selection (filters, shuffling,
        limits), or this shard's slice of it."""
        from runners.shards import bounds

        runner = self.settings.runner
        start, stop = bounds(self.n_selected, runner.shard_index, runner.num_shards)
        return itertools.islice(self.dataset.samples(), start, stop)


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
            peak_gpu_mb=_max_or_none(answered.peak_gpu_mb, loaded.peak_gpu_mb),
        )

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


_current_model: LoadedModel | None = None  # kept between the jobs of a sweep


def run_experiment(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run one model on one dataset; write predictions, metrics and environment to output_dir.

    Returns the metrics row (a shard that leaves others to finish: its own counts). Raises
    :class:`RunnerError` for mistakes in the config or the dataset (before the model loads) and
    for outputs that can't be written.
    """
    from runners.outputs import LOCK_FILE, exclusive, write_error

    run_dir = Path(output_dir)
    plan = check(cfg)
    answers_dir = plan.answers_dir(run_dir)
    try:
        answers_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(answers_dir, error) from None
    with exclusive(answers_dir / LOCK_FILE, f"the answers in {answers_dir}"):
        claim(run_dir, plan)
        predictions, todo, n_todo, answered_row = resume(run_dir, plan)
        random_weights = False
        if n_todo:
            loaded, reused = load(plan.model)
            random_weights = getattr(loaded.model, "random_weights", False)
            _log_start(loaded.model, plan, n_todo)
            answered = answer(loaded.model, plan, predictions, todo, n_todo)
            cost = RunCost.of(loaded, reused, answered)
        else:
            predictions.close()
            log.info("every selected sample is answered already: nothing to load or answer")
            cost = RunCost.nothing_to_answer(answered_row)
        if plan.sharded:
            from runners.shards import finish_shard

            return finish_shard(run_dir, plan, cost)
        run_tally, quality = score(run_dir, predictions, plan)
        row = write(run_dir, plan, cost, run_tally, quality)
    if random_weights:
        log.warning(RANDOM_WEIGHTS_NOTE, cost.model)
    return row


# The tiny offline models answer gibberish: a default run's scores of 0 are theirs, not a bug.
RANDOM_WEIGHTS_NOTE = (
    "%s has random weights: its answers are gibberish and its scores mean nothing; it is here "
    "so that everything runs offline. Run a real model with e.g. model=qwen2_vl_2b (downloads "
    "Qwen/Qwen2-VL-2B-Instruct), model=openai_compatible model.init_params.base_url=URL, or "
    "model=custom model.class_path=pkg.module:Class"
)


def check(cfg: DictConfig) -> Plan:
    """Check the config and every record of the dataset against the task; the plan of the run,
    with its fingerprint. Reads the annotation file (never an image) and imports no model."""
    from model_interface import ModelFactoryError
    from runners.fingerprint import fingerprint
    from runners.shards import fingerprint_section

    settings: RunConfig = to_settings(cfg, RunConfig)
    runner = settings.runner
    model = model_config(settings.model, settings.dataset.root)
    dataset, task = dataset_and_task(settings.dataset, settings.task, list(runner.metrics))
    strata = Counter(
        task.stratum(sample) for sample in itertools.islice(dataset.samples(), runner.limit)
    )
    n_selected = sum(strata.values())
    if n_selected == 0:
        raise RunnerError(_nothing_to_run(dataset, runner.limit))
    if len(strata) == 1:
        _warn_if_one_stratum_of_several(dataset, task, runner.limit, strata)
    try:
        current = fingerprint(model, dataset, settings.task, task)
    except (ModelFactoryError, ValueError) as error:
        raise RunnerError(str(error)) from None
    if runner.num_shards > 1:
        current["shards"] = fingerprint_section(settings)
    return Plan(settings, model, dataset, task, n_selected, current)


def claim(run_dir: Path, plan: Plan) -> None:
    """Make the run directory this run's: refuse answers there from another configuration
    (any shard's), and record the fingerprint. Files a killed process was writing go."""
    from runners import fingerprint
    from runners.outputs import remove_stale_temporaries

    for folder in {run_dir, plan.answers_dir(run_dir)}:
        remove_stale_temporaries(folder)  # what a killed attempt (or merge) was writing
    fingerprint.claim(
        run_dir,
        plan.fingerprint,
        resume=plan.settings.runner.resume,
        answers=plan.answers_dir(run_dir) / "predictions.csv",
    )


def dataset_and_task(dataset_settings: Any, task_config: Any, metric_names: list[str]) -> Any:
    """The dataset and the task, every record of the dataset read and checked by the task."""
    from runners.datasets import Dataset, DatasetError
    from runners.tasks import make_task

    try:
        task = make_task(task_config, metric_names)
        dataset = Dataset.from_config(dataclasses.asdict(dataset_settings))
        for sample in dataset.all_samples():
            task.check(sample)
    except (DatasetError, ValueError) as error:
        raise RunnerError(str(error)) from None
    # The task has seen every sample (a classification task knows its classes now).
    return dataclasses.replace(dataset, stratum=task.stratum), task


def _nothing_to_run(dataset: Any, runner_limit: int | None) -> str:
    """Why a run has no samples, with the values the filters could have named."""
    what = f"dataset {dataset.name!r} has no samples to run"
    if not dataset.filters:
        if dataset.limit == 0 or runner_limit == 0:
            return f"{what}: dataset.limit={dataset.limit} and runner.limit={runner_limit}"
        return f"{what}: {dataset.file} holds no records"
    present: dict[str, Counter[str | None]] = {name: Counter() for name in dataset.filters}
    for sample in dataset.all_samples():
        for name, values in present.items():
            values[getattr(sample, name)] += 1
    clauses = []
    for name, wanted in dataset.filters.items():
        values = sorted(value for value in present[name] if value is not None)
        shown = ", ".join(map(repr, values[:20])) + (", ..." if len(values) > 20 else "")
        clauses.append(f"dataset.{name}={sorted(wanted)} (its {name} values: {shown or 'none'})")
    return f"{what}: no sample matches {' and '.join(clauses)}"


def _warn_if_one_stratum_of_several(
    dataset: Any, task: Any, runner_limit: int | None, selected: Counter[Any]
) -> None:
    """A limit that keeps one class of several makes scores that say nothing of the others
    (six invoices of a four-class dataset score accuracy 1.0 for a model that always says
    "invoice"): say so."""
    whole = Counter(task.stratum(sample) for sample in dataset.filtered())
    if len(whole) < 2:
        return
    ((kept, n_selected),) = selected.items()
    limits = " and ".join(
        f"{name}={value}"
        for name, value in (("dataset.limit", dataset.limit), ("runner.limit", runner_limit))
        if value is not None
    )
    shown = ", ".join(map(repr, sorted(map(str, whole))[:10]))
    log.warning(
        "%s keeps %d of %d samples, all of class %r (the dataset has %d: %s): their scores say "
        "nothing about the other classes; set dataset.shuffle=true for a subset holding each "
        "class in proportion",
        limits or "the selection",
        n_selected,
        sum(whole.values()),
        kept,
        len(whole),
        shown,
    )


def load(model_config: dict[str, Any]) -> tuple[LoadedModel, bool]:
    """The model; consecutive runs with the same model config reuse it (returns True then)."""
    from model_interface import ModelCreationError, ModelFactory, ModelFactoryError, measure

    global _current_model
    key = json.dumps(model_config, sort_keys=True, default=str)
    if _current_model is not None and _current_model.key == key:
        return _current_model, True
    if _current_model is not None:
        _current_model.model.close()
        _current_model = None
    try:
        with measure() as imports:
            ModelFactory.config_class(model_config)
        with measure() as cost:
            model = ModelFactory.from_config(model_config)
    except (ModelFactoryError, ModelCreationError) as error:
        raise RunnerError(str(error)) from None
    peak_gpu = _max_or_none(imports.peak_gpu_mb, cost.peak_gpu_mb)
    peak_rss = max(imports.peak_rss_mb, cost.peak_rss_mb)
    _current_model = LoadedModel(key, model, imports.wall_s, cost.wall_s, peak_rss, peak_gpu)
    return _current_model, False


def resume(
    run_dir: Path, plan: Plan
) -> tuple[Any, Callable[[], Iterator[Any]], int, dict[str, str] | None]:
    """Open predictions.csv, keeping what an earlier attempt answered.

    Returns the file, a function giving the samples still to answer, their number, and one
    row answered before (None if there is none).
    """
    from runners.outputs import PredictionsFile, environment_record, write_json

    settings = plan.settings
    _seed_everything(settings.seed)
    answers_dir = plan.answers_dir(run_dir)
    write_json(answers_dir / "environment.json", environment_record(settings.seed, PROJECT_ROOT))
    predictions = PredictionsFile(answers_dir / "predictions.csv")
    kept = predictions.open(resume=settings.runner.resume)
    done = {row["sample_id"] for row in kept}

    def todo() -> Iterator[Any]:
        return (sample for sample in plan.selected() if sample.id not in done)

    n_todo = sum(1 for _ in todo())  # reads the annotation text only, never an image
    if done:
        log.info("resuming: %d samples already answered, %d to go", len(done), n_todo)
    return predictions, todo, n_todo, (kept[0] if kept else None)


def _log_start(model: Any, plan: Plan, n_todo: int) -> None:
    log.info(
        "%s (%s) on %s: %d samples, batch size %d",
        model.model_name,
        model.framework,
        plan.dataset.name,
        n_todo,
        plan.settings.runner.batch_size,
    )


def answer(
    model: Any, plan: Plan, predictions: Any, todo: Callable[[], Iterator[Any]], n_todo: int
) -> Answered:
    """Answer the samples still to do, appending each batch to predictions.csv as it comes."""
    from model_interface import ModelUnavailable, measure
    from runners.pipeline import answer_samples

    runner = plan.settings.runner
    progress = _progress_bar(n_todo, enabled=runner.progress)
    try:
        with measure() as cost:
            for answers in answer_samples(
                model,
                plan.dataset,
                todo(),
                build_request=plan.task.request,
                batch_size=runner.batch_size,
                sort_window_batches=runner.sort_window_batches,
                prefetch_workers=runner.prefetch_workers,
                max_image_pixels=runner.max_image_pixels,
                image_cache_mb=runner.image_cache_mb,
            ):
                predictions.append([_row(answer, plan.dataset.name, model) for answer in answers])
                progress.update(len(answers))
    except ModelUnavailable as error:
        raise RunnerError(
            f"{error}. The {predictions.n_answered} answers of this run so far are kept: run "
            "the same command again to resume",
            exit_code=1,
        ) from None
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted: {predictions.n_answered} answers kept in {predictions.path.parent}, "
            "run the same command to resume"
        ) from None
    finally:
        progress.close()
        predictions.close()
    return Answered(n_todo, cost.wall_s, cost.peak_rss_mb, cost.peak_gpu_mb)


def score(run_dir: Path, predictions: Any, plan: Plan) -> tuple[Any, Any]:
    """Score every row of predictions.csv with the task, against the dataset's references, and
    write the file back in dataset order with the task's columns, and answers.csv beside it.
    Returns the run's tally of counts and timing, and the task's tally of quality."""
    from runners.metrics import RunTally
    from runners.outputs import PREDICTION_COLUMNS, write_answers

    references = plan.dataset.references()
    run_tally, quality = RunTally(), plan.task.tally(run_dir)
    answers: list[tuple[int, str]] = []

    def scored(row: dict[str, str]) -> dict[str, Any]:
        reference = references[row["sample_id"]]
        row = {**row, **plan.task.score(row["prediction"], reference)}
        run_tally.add(row)
        quality.add(row, reference)
        answers.append((int(row["sample_index"]), row["prediction"]))
        return row

    predictions.rewrite_in_order(scored, PREDICTION_COLUMNS + plan.task.columns)
    quality.close()
    write_answers(run_dir / "answers.csv", answers)
    return run_tally, quality


def write(run_dir: Path, plan: Plan, cost: RunCost, run_tally: Any, quality: Any) -> dict[str, Any]:
    """Write metrics.csv, metrics_by_group.csv and the task's own files; return the metrics
    row."""
    runner = plan.settings.runner
    row = {
        "model": cost.model,
        "framework": cost.framework,
        "dataset": plan.dataset.name,
        "task": plan.task.name,
        **run_tally.summary(),
        "answered_now": cost.answered_now,
        "batch_size": runner.batch_size,
        "import_s": cost.import_s,
        "load_s": cost.load_s,
        "model_reused": cost.model_reused,
        "cache_hit": cost.cache_hit,
        "wall_s": cost.wall_s,
        "peak_rss_mb": cost.peak_rss_mb,
        "peak_gpu_mb": cost.peak_gpu_mb,
        **quality.summary(),
    }
    row["status"] = "ok" if row["error_rate"] <= runner.max_error_rate else "too_many_errors"
    write_metrics(run_dir, row, quality)
    if runner.report:
        from runners.report import report_run

        report_run(run_dir)
    log.info("results in %s\n%s", run_dir, _table(row))
    return row


def write_metrics(run_dir: Path, row: dict[str, Any], quality: Any) -> None:
    """metrics.csv (``row``), metrics_by_group.csv and the task's own small files."""
    from runners.outputs import write_csv

    write_csv(run_dir / "metrics.csv", [row])
    if groups := quality.groups():
        write_csv(run_dir / "metrics_by_group.csv", groups)
    for name, rows in quality.files().items():
        if rows:
            write_csv(run_dir / name, rows)


def _row(answer: Any, dataset_name: str, model: Any) -> dict[str, Any]:
    from runners.datasets import encode_reference

    sample, prediction = answer.sample, answer.prediction
    return {
        "sample_id": sample.id,
        "sample_index": sample.position,
        "dataset": dataset_name,
        "model": model.model_name,
        "framework": model.framework,
        "image_paths": json.dumps(list(sample.images), ensure_ascii=False),
        "prompt": answer.prompt,
        "prediction": prediction.text,
        "reference": encode_reference(sample.reference),
        "call_s": None if answer.call_s is None else round(answer.call_s, 6),
        "batch_size": answer.batch_size,
        "prompt_tokens": prediction.prompt_tokens,
        "completion_tokens": prediction.completion_tokens,
        "error": prediction.error or "",
        "split": sample.split,
        "doc_class": sample.doc_class,
        "question_type": sample.question_type,
        "document_id": sample.document,
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
    """The job: returns the metrics row; a single run that fails sets :data:`exit_status`.

    The status is set, not raised: a ``SystemExit`` inside the job would skip Hydra's
    ``on_job_end`` callbacks, and tracking logs failed runs too. :func:`cli` exits with it.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from runners.callbacks import run_sweep_job

    global exit_status
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    if hydra_config.mode == RunMode.MULTIRUN:
        return run_sweep_job(run_experiment, cfg, output_dir, hydra_config)
    try:
        row = run_experiment(cfg, output_dir)
    except RunnerError as error:
        log.error("%s", error)
        exit_status = error.exit_code
        return None
    if row["status"] != "ok":
        log.error(
            "%d of %d samples failed (%.1f%%), over runner.max_error_rate=%s",
            row["n_errors"],
            row["n_samples"],
            100 * row["error_rate"],
            cfg.runner.max_error_rate,
        )
        exit_status = 1
    return row


exit_status = 0  # of the last single run :func:`main` ran


def cli() -> None:
    """``python -m runners.run`` and the ``vlm-run`` command: :func:`main`, then a fast exit.

    With torch and transformers loaded, the interpreter's own teardown (finalising every module)
    takes a second or more and does nothing a finished run needs, so once the model is closed
    and the exit handlers have run (log flushing), a single run leaves at once. Sweeps exit
    normally: their launchers (joblib, submitit) clean up worker resources in finalisers.
    """
    from runners.config import run_hydra_command

    if {"-m", "--multirun"} & set(sys.argv[1:]):
        run_hydra_command(main)
        return
    try:
        run_hydra_command(main)
        code = exit_status
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
