"""The plan of a run, made before any model loads: :func:`check` reads the config and every
record of the dataset (never an image), checks each against the task, counts the selection and
takes the run's fingerprint. A run, each of its shards and ``runners.evaluate`` start from one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runners.config.schema import RunConfig, model_config, to_settings
from runners.datasets import Dataset, DatasetError
from runners.errors import RunnerError
from runners.execution.fingerprint import fingerprint
from runners.execution.judge import Judge
from runners.metrics.summaries import Pricing
from runners.rundir.naming import shard_folder
from runners.tasks import make_task
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
    selection_digest: int = 0  # of the selected samples' ids (ids_digest), order aside
    judge: Judge | None = None  # the model that scores answers, where runner.metrics has judge

    @property
    def pricing(self) -> Pricing | None:
        """The model's prices (``model.pricing``), if its config has them."""
        return Pricing.of(self.model)

    @property
    def sharded(self) -> bool:
        return self.settings.runner.num_shards > 1

    def answers_dir(self, run_dir: Path) -> Path:
        """Where this run keeps its answers: the run directory, or its shard's folder in it."""
        runner = self.settings.runner
        return run_dir / shard_folder(runner.shard_index, runner.num_shards)

    @property
    def n_in_slice(self) -> int:
        """How many samples :meth:`selected` gives."""
        start, stop = self._slice()
        return stop - start

    def selected(self) -> Iterator[Any]:
        """The samples this run answers, in dataset order: the selection (filters, shuffling,
        limits), or this shard's slice of it."""
        return itertools.islice(self.dataset.samples(), *self._slice())

    def _slice(self) -> tuple[int, int]:
        runner = self.settings.runner
        return bounds(self.n_selected, runner.shard_index, runner.num_shards)


def check(cfg: DictConfig) -> Plan:
    """Check the config and every record of the dataset against the task; the plan of the run,
    with its fingerprint. Reads the annotation file (never an image) and imports no model."""
    from model_interface import ModelFactoryError

    settings: RunConfig = to_settings(cfg, RunConfig)
    runner = settings.runner
    model = model_config(settings.model, settings.dataset.root)
    try:
        pricing = Pricing.of(model)
    except ValueError as error:
        raise RunnerError(str(error)) from None
    if runner.max_cost is not None and pricing is None:
        raise RunnerError(
            "runner.max_cost is set but the model config has no pricing; add "
            "+model.pricing.input_per_million=... +model.pricing.output_per_million=..."
        )
    dataset, task, selection = dataset_and_task(
        settings.dataset, settings.task, list(runner.metrics), runner.limit
    )
    strata, n_selected = selection.strata, selection.size
    if n_selected == 0:
        raise RunnerError(_nothing_to_run(dataset, runner.limit))
    if len(strata) == 1:
        _warn_if_one_stratum_of_several(dataset, runner.limit, strata, selection.kept_strata)
    try:
        current = fingerprint(model, dataset, settings.task, task)
    except (ModelFactoryError, TaskError) as error:
        raise RunnerError(str(error)) from None
    if runner.num_shards > 1:
        current["shards"] = fingerprint_section(settings)
    judge = judge_of(settings)
    if judge is not None:
        try:
            current["judge"] = judge.fingerprint()
        except Exception as error:  # a judge model that can't be named: the config to fix
            raise RunnerError(f"judge.model: {error}") from None
    return Plan(settings, model, dataset, task, n_selected, current, selection.digest, judge)


def judge_of(settings: Any) -> Judge | None:
    """The run's judge: set exactly when runner.metrics asks for its score."""
    wanted = "judge" in settings.runner.metrics
    if wanted and not settings.judge:
        raise RunnerError(
            "runner.metrics has judge but no judge is set; choose one, e.g. "
            "judge=openai_compatible judge.model.init_params.base_url=URL"
        )
    if settings.judge and not wanted:
        raise RunnerError(
            "a judge is set but runner.metrics does not ask for it; add judge to "
            "runner.metrics, or drop judge=..."
        )
    return Judge.from_config(settings.judge, settings.paths.cache_dir) if wanted else None


@dataclass
class Selection:
    """The samples a run selects, counted: by stratum, and a digest of their ids; and the
    strata of every sample the filters keep, the whole it was selected from."""

    strata: Counter[Any] = dataclasses.field(default_factory=Counter)
    kept_strata: Counter[Any] = dataclasses.field(default_factory=Counter)
    digest: int = 0
    size: int = 0

    def add(self, sample: Any, stratum: Any) -> None:
        self.strata[stratum] += 1
        self.digest = (self.digest + id_hash(sample.id)) % DIGEST_MODULUS
        self.size += 1


DIGEST_MODULUS = 2**128


def id_hash(sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=16).digest(), "big")


def ids_digest(ids: Iterable[str]) -> int:
    """A digest of a set of sample ids whatever their order (a sum of their hashes): a finished
    run's answers are this run's when their digest and number equal its selection's."""
    return sum(map(id_hash, ids)) % DIGEST_MODULUS


def dataset_and_task(
    dataset_settings: Any, task_config: Any, metric_names: list[str], runner_limit: int | None
) -> tuple[Any, Any, Selection]:
    """The dataset, the task and the run's selection (``runner.limit`` samples of the dataset's
    own selection), every record of the dataset read and checked by the task on the way."""
    selection = Selection()
    try:
        task = make_task(task_config, metric_names)
        # A shuffled selection is stratified by the task's stratum (the document class, or a
        # classification's reference class).
        dataset = Dataset.from_config(dataclasses.asdict(dataset_settings))
        dataset = dataclasses.replace(dataset, stratum=task.stratum)
        records = _checked(dataset.all_samples(), task, dataset, selection.kept_strata)
        for sample in itertools.islice(dataset.samples(records), runner_limit):
            selection.add(sample, task.stratum(sample))
        for _ in records:  # the records after the selection's last are checked too
            pass
    except (DatasetError, TaskError) as error:
        raise RunnerError(str(error)) from None
    return dataset, task, selection


def _checked(
    samples: Iterable[Any], task: Any, dataset: Any, kept_strata: Counter[Any]
) -> Iterator[Any]:
    """The samples, each checked by the task and, if the filters keep it, counted by stratum."""
    for sample in samples:
        task.check(sample)
        if dataset.keeps(sample):
            kept_strata[task.stratum(sample)] += 1
        yield sample


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
    dataset: Any, runner_limit: int | None, selected: Counter[Any], whole: Counter[Any]
) -> None:
    """A limit that keeps one class of several makes scores that say nothing of the others
    (six invoices of a four-class dataset score accuracy 1.0 for a model that always says
    "invoice"): say so."""
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
