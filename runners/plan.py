"""The plan of a run, made before any model loads: :func:`check` reads the config and every
record of the dataset (never an image), checks each against the task, counts the selection and
takes the run's fingerprint. A run, each of its shards and ``runners.evaluate`` start from one.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runners.config import RunConfig, RunnerError, model_config, shard_folder, to_settings
from runners.tasks.base import TaskError

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
        runner = self.settings.runner
        start, stop = bounds(self.n_selected, runner.shard_index, runner.num_shards)
        return itertools.islice(self.dataset.samples(), start, stop)


def check(cfg: DictConfig) -> Plan:
    """Check the config and every record of the dataset against the task; the plan of the run,
    with its fingerprint. Reads the annotation file (never an image) and imports no model."""
    from model_interface import ModelFactoryError
    from runners.fingerprint import fingerprint

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
    except (ModelFactoryError, TaskError) as error:
        raise RunnerError(str(error)) from None
    if runner.num_shards > 1:
        current["shards"] = fingerprint_section(settings)
    return Plan(settings, model, dataset, task, n_selected, current)


def dataset_and_task(dataset_settings: Any, task_config: Any, metric_names: list[str]) -> Any:
    """The dataset and the task, every record of the dataset read and checked by the task."""
    from runners.datasets import Dataset, DatasetError
    from runners.tasks import make_task

    try:
        task = make_task(task_config, metric_names)
        dataset = Dataset.from_config(dataclasses.asdict(dataset_settings))
        for sample in dataset.all_samples():
            task.check(sample)
    except (DatasetError, TaskError) as error:
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


def bounds(n_selected: int, index: int, count: int) -> tuple[int, int]:
    """Shard ``index`` of ``count`` answers positions ``[start, stop)`` of the selection."""
    return n_selected * index // count, n_selected * (index + 1) // count


def fingerprint_section(settings: Any) -> dict[str, Any]:
    """What a sharded run adds to its fingerprint: all that decides which samples each shard
    answers (the shard index aside, so that every shard of a run has the same)."""
    runner, dataset = settings.runner, settings.dataset
    return {
        "num_shards": runner.num_shards,
        "selection": {
            "runner_limit": runner.limit,
            "dataset_limit": dataset.limit,
            "shuffle": dataset.shuffle,
            "shuffle_seed": dataset.seed if dataset.shuffle else None,
        },
    }
