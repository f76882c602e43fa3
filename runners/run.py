"""Benchmark a vision-language model on a dataset: ``python -m runners.run [overrides]``.

A run is seven steps, one function each: ``check`` (the config, the whole dataset:
:mod:`runners.execution.plan`) → :func:`claim` (the run directory: locked while the run
answers, its fingerprint compared) → :func:`load` (the model) → :func:`resume` (what is
answered already) → :func:`answer` → ``score`` (every row of predictions.csv) → ``write``
(metrics; both in :mod:`runners.execution.scoring`). Every mistake in the config or the dataset
is found by ``check``, before a model is loaded. A shard of a run
(:mod:`runners.execution.shards`) ends in ``finish_shard`` instead of the last two: the last
shard to end scores and writes the merged run.

The Hydra entry point is thin: it hands the composed config and the run's output directory to
:func:`run_experiment`, which tests call directly. Heavy imports (torch, the model's
framework) happen in ``load``, so ``--help`` and a refused config stay fast.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runners.callbacks import run_sweep_job
from runners.config.job import JobOutcome, hydra_main, run_hydra_command
from runners.config.paths import CONFIG_DIR, PROJECT_ROOT
from runners.errors import Interrupted, RunnerError
from runners.execution import fingerprint
from runners.execution.budget import Budget
from runners.execution.pipeline import answer_samples
from runners.execution.plan import Plan, check
from runners.execution.scoring import (
    Answered,
    LoadedModel,
    RunCost,
    finished_run,
    max_or_none,
    score,
    write,
)
from runners.execution.shards import finish_shard
from runners.metrics.summaries import Spending
from runners.rundir.environment import environment_record
from runners.rundir.files import (
    LOCK_FILE,
    exclusive,
    remove_stale_temporaries,
    write_error,
    write_json,
)
from runners.rundir.predictions import PredictionsFile, sample_columns

__all__ = ["CONFIG_DIR", "PROJECT_ROOT", "ModelCache", "RunnerError", "run_experiment"]

log = logging.getLogger("runners.run")


def run_experiment(
    cfg: DictConfig, output_dir: str | Path, models: ModelCache | None = None
) -> dict[str, Any]:
    """Run one model on one dataset; write predictions, metrics and environment to output_dir.

    ``models``: where the model is looked up and kept for the next run (the jobs of a sweep
    share one); without it, the model is loaded for this run and closed after it.

    Returns the metrics row (a shard that leaves others to finish: its own counts). Raises
    :class:`RunnerError` for mistakes in the config or the dataset (before the model loads) and
    for outputs that can't be written.
    """
    if models is None:
        with ModelCache() as models:
            return run_experiment(cfg, output_dir, models)

    run_dir = Path(output_dir)
    plan = check(cfg)
    answers_dir = plan.answers_dir(run_dir)
    try:
        answers_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(answers_dir, error) from None
    with exclusive(answers_dir / LOCK_FILE, f"the answers in {answers_dir}"):
        claim(run_dir, plan)
        if (finished := finished_run(run_dir, plan)) is not None:
            log.info(
                "every selected sample is answered and scored already: nothing to do (%s is "
                "kept; delete it to score the answers again)",
                run_dir / "metrics.csv",
            )
            return finished
        predictions, todo, n_todo, kept = resume(run_dir, plan)
        answered_row = kept[0] if kept else None
        random_weights = False
        if n_todo:
            spent = Spending(plan.pricing)
            spent.add(kept)
            budget = Budget(plan.settings.runner.max_cost, plan.settings.runner.max_tokens_total)
            budget.check(spent)  # spent already: stop before loading the model
            loaded, reused = models.get(plan.model)
            random_weights = getattr(loaded.model, "random_weights", False)
            _log_start(loaded.model, plan, n_todo)
            answered = answer(loaded.model, plan, predictions, todo, n_todo, spent, budget)
            cost = RunCost.of(loaded, reused, answered)
        else:
            predictions.close()
            log.info("every selected sample is answered already: nothing to load or answer")
            cost = RunCost.nothing_to_answer(answered_row)
        if plan.sharded:
            return finish_shard(run_dir, plan, cost)
        run_tally, quality = score(run_dir, predictions, plan)
        row = write(run_dir, plan, cost, run_tally, quality)
    if row.get("n_truncated"):
        log.warning(TRUNCATED_NOTE, row["n_truncated"], row["n_samples"])
    if random_weights:
        log.warning(RANDOM_WEIGHTS_NOTE, cost.model)
    return row


TRUNCATED_NOTE = (
    "%s of %s answers are truncated: the model's reasoning never ended within max_new_tokens, "
    "so they have no answer and score as empty ones (truncated=True in predictions.csv); "
    "raise model.init_params.max_new_tokens, or turn the thinking off where the chat template "
    "has a switch (chat_template_kwargs)"
)

# The tiny offline models answer gibberish: a default run's scores of 0 are theirs, not a bug.
RANDOM_WEIGHTS_NOTE = (
    "%s has random weights: its answers are gibberish and its scores mean nothing; it is here "
    "so that everything runs offline. Run a real model with e.g. model=qwen2_vl_2b (downloads "
    "Qwen/Qwen2-VL-2B-Instruct), model=openai_compatible model.init_params.base_url=URL, or "
    "model=custom model.class_path=pkg.module:Class"
)


def claim(run_dir: Path, plan: Plan) -> None:
    """Make the run directory this run's: refuse answers there from another configuration
    (any shard's), and record the fingerprint. Files a killed process was writing go."""
    for folder in {run_dir, plan.answers_dir(run_dir)}:
        remove_stale_temporaries(folder)  # what a killed attempt (or merge) was writing
    fingerprint.claim(
        run_dir,
        plan.fingerprint,
        resume=plan.settings.runner.resume,
        answers=plan.answers_dir(run_dir) / "predictions.csv",
    )


def load_model(model_config: dict[str, Any]) -> LoadedModel:
    """The model of a model config, with what importing and constructing it cost."""
    from model_interface import ModelCreationError, ModelFactory, ModelFactoryError, measure

    try:
        with measure() as imports:
            ModelFactory.config_class(model_config)
        with measure() as cost:
            model = ModelFactory.from_config(model_config)
    except (ModelFactoryError, ModelCreationError) as error:
        raise RunnerError(str(error)) from None
    peak_gpu = max_or_none(imports.peak_gpu_mb, cost.peak_gpu_mb)
    peak_rss = max(imports.peak_rss_mb, cost.peak_rss_mb)
    key = model_key(model_config)
    return LoadedModel(key, model, imports.wall_s, cost.wall_s, peak_rss, peak_gpu)


def model_key(model_config: dict[str, Any]) -> str:
    """Equal for equal model configs: the same model."""
    return json.dumps(model_config, sort_keys=True, default=str)


class ModelCache:
    """The last model loaded, kept for the next run: consecutive runs with the same model
    config (the jobs of a sweep over datasets, say) load it once. Closing closes the model
    (engines with worker processes must stop them)."""

    def __init__(self) -> None:
        self._loaded: LoadedModel | None = None

    @property
    def loaded(self) -> LoadedModel | None:
        """The model kept for the next run, if any."""
        return self._loaded

    def get(self, model_config: dict[str, Any]) -> tuple[LoadedModel, bool]:
        """The model; True if it was kept from the run before."""
        if self._loaded is not None and self._loaded.key == model_key(model_config):
            return self._loaded, True
        self.close()
        self._loaded = load_model(model_config)
        return self._loaded, False

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded.model.close()
            self._loaded = None

    def __enter__(self) -> ModelCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def resume(
    run_dir: Path, plan: Plan
) -> tuple[Any, Callable[[], Iterator[Any]], int, dict[str, str] | None]:
    """Open predictions.csv, keeping what an earlier attempt answered.

    Returns the file, a function giving the samples still to answer, their number, and the
    rows answered before.
    """
    settings = plan.settings
    _seed_everything(settings.seed)
    answers_dir = plan.answers_dir(run_dir)
    write_json(answers_dir / "environment.json", environment_record(settings.seed, PROJECT_ROOT))
    predictions = PredictionsFile(answers_dir / "predictions.csv")
    kept = predictions.open(resume=settings.runner.resume)
    done = {row["sample_id"] for row in kept}

    def todo() -> Iterator[Any]:
        return (sample for sample in plan.selected() if sample.id not in done)

    # Counting what is left reads the annotation again (text only, never an image).
    n_todo = sum(1 for _ in todo()) if done else plan.n_in_slice
    if done:
        log.info("resuming: %d samples already answered, %d to go", len(done), n_todo)
    return predictions, todo, n_todo, kept


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
    model: Any,
    plan: Plan,
    predictions: Any,
    todo: Callable[[], Iterator[Any]],
    n_todo: int,
    spent: Spending,
    budget: Budget,
) -> Answered:
    """Answer the samples still to do, appending each batch to predictions.csv as it comes;
    stop once the answers reach the budget."""
    from model_interface import ModelUnavailable, measure

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
                rows = [_row(answer, plan.dataset.name, model) for answer in answers]
                predictions.append(rows)
                progress.update(len(answers))
                spent.add(rows)
                budget.check(spent)
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


def _row(answer: Any, dataset_name: str, model: Any) -> dict[str, Any]:
    prediction = answer.prediction
    return {
        **sample_columns(answer.sample, dataset_name),
        "model": model.model_name,
        "framework": model.framework,
        "prompt": answer.prompt,
        "prediction": prediction.text,
        "reasoning": prediction.reasoning,
        "call_s": None if answer.call_s is None else round(answer.call_s, 6),
        "batch_size": answer.batch_size,
        "prompt_tokens": prediction.prompt_tokens,
        "completion_tokens": prediction.completion_tokens,
        "reasoning_tokens": prediction.reasoning_tokens,
        "truncated": prediction.truncated,
        "image_size": ";".join(f"{w}x{h}" for w, h in prediction.image_sizes or ()),
        "error": prediction.error or "",
    }


def _seed_everything(seed: int) -> None:
    # Seed only what is already imported (by the model): importing torch here would cost seconds.
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def _progress_bar(total: int, *, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, unit="sample", disable=not enabled, dynamic_ncols=True, mininterval=0.5
    )


def job(cfg: DictConfig, models: ModelCache, outcome: JobOutcome) -> dict[str, Any] | None:
    """One Hydra job: returns the metrics row; a single run that fails records its exit status
    in ``outcome`` (tracking logs failed runs too)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    if hydra_config.mode == RunMode.MULTIRUN:
        run = functools.partial(run_experiment, models=models)
        return run_sweep_job(run, cfg, output_dir, hydra_config)
    row = outcome.run(lambda: run_experiment(cfg, output_dir, models))
    if row is not None and row["status"] != "ok":
        log.error(
            "%d of %d samples failed (%.1f%%), over runner.max_error_rate=%s",
            row["n_errors"],
            row["n_samples"],
            100 * row["error_rate"],
            cfg.runner.max_error_rate,
        )
        outcome.exit_status = 1
    return row


def cli() -> None:
    """``python -m runners.run`` and the ``vlm-run`` command: the jobs, then a fast exit.

    With torch and transformers loaded, the interpreter's own teardown (finalising every module)
    takes a second or more and does nothing a finished run needs, so once the model is closed
    and the exit handlers have run (log flushing), a single run leaves at once. Sweeps exit
    normally: their launchers (joblib, submitit) clean up worker resources in finalisers.
    """
    outcome = JobOutcome()
    with ModelCache() as models:  # what the jobs of a sweep run in this process share
        main = hydra_main("config", lambda cfg: job(cfg, models, outcome))
        if {"-m", "--multirun"} & set(sys.argv[1:]):
            run_hydra_command(main)
            return
        try:
            run_hydra_command(main)
            code = outcome.exit_status
        except SystemExit as exit_request:
            code = exit_request.code
    if isinstance(code, str):  # sys.exit("message") prints the message and exits with 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # what a normal exit runs first: logging.shutdown, ...
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    cli()
