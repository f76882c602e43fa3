"""A run's fingerprint: everything that decides its answers, kept in ``fingerprint.json``.

Resuming appends to the answers already in a run directory, which is only right if they came
from the same model and the same questions. The fingerprint holds:

* the model: the class the config names (``"module:Class"``) and its init parameters, with
  generation settings, but without those that only say where or how fast it runs
  (:data:`NOT_ANSWER_SETTINGS`);
* the dataset: format, root, annotation file, filters, prompt template, and the SHA-256 of the
  annotation file's content and of the prompt collection's (for a hub dataset, its source, and
  the commit it was loaded from, or the local files' SHA-256);
* the task: its class, its options, and what it adds of its own (e.g. a schema file's content).

What only chooses *which* samples run (``limit``, ``shuffle``, ``seed``) or how they are batched
is left out: a run may be extended with a larger limit, or resumed with a smaller batch after
running out of memory. A run split into shards adds its number of shards and the selection
(``runner.limit``, ``dataset.limit``, ``shuffle``, ``seed``), which decide each shard's samples
(:func:`runners.execution.plan.fingerprint_section`); the shard index is left out, so every shard of
a run has the same fingerprint. Image files are not hashed: replacing an image in place goes
unnoticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model_interface import ModelFactory
from runners.datasets import FORMATS, Dataset
from runners.errors import RunnerError
from runners.records import flatten
from runners.rundir.files import read_json, write_json
from runners.rundir.predictions import answer_files, answers_exist, has_rows
from runners.tasks import TASKS, Task

FILE_NAME = "fingerprint.json"

# Init parameters that never change an answer: where the weights are kept, the API key's
# variable, the HTTP client's patience, parallelism and pace, which device runs the model, how
# much of it an engine may take.
NOT_ANSWER_SETTINGS = frozenset(
    {
        "cache_dir",
        "api_key_env",
        "timeout",
        "max_retries",
        "concurrency",
        "retry_backoff_s",
        "requests_per_minute",
        "device",
        "device_map",
        "gpu_memory_utilization",
        "mem_fraction_static",
    }
)


def fingerprint(
    model_config: Mapping[str, Any],
    dataset: Dataset,
    task_config: Mapping[str, Any],
    task: Task,
) -> dict[str, Any]:
    """The fingerprint of a run of ``model_config`` on ``dataset`` with ``task`` (no model
    import, no image read)."""
    return {
        "model": model_fingerprint(model_config),
        "dataset": {
            "format": dataset.format,
            "sample_ids": "row" if FORMATS[dataset.format].ids_by_row else "id column",
            # (A hub dataset's are where the datasets cache keeps it: no part of the answers.)
            "root": str(dataset.root) if dataset.table is None else None,
            "file": str(dataset.file) if dataset.table is None else None,
            "filters": {name: sorted(values) for name, values in sorted(dataset.filters.items())},
            "prompt_template": dataset.prompt_template,
            "annotation_sha256": dataset.content_sha256(),
            "prompt_collection_sha256": (
                dataset.prompt_collection.content_sha256() if dataset.prompt_collection else None
            ),
            # A hub dataset: which split, which columns; its revision is annotation_sha256.
            **({"hf": dataset.table.source.to_json()} if dataset.table is not None else {}),
        },
        "task": {
            "class": TASKS.target(task_config["name"]),
            "options": {key: value for key, value in sorted(task_config.items()) if key != "name"},
            **task.fingerprint(),
        },
    }


def model_fingerprint(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """What about a model config decides its answers: the class it names and its init
    parameters, less :data:`NOT_ANSWER_SETTINGS` (no model import)."""
    init_params = model_config.get("init_params") or {}
    return {
        "class": ModelFactory.config_target(model_config),
        "init_params": {
            key: init_params[key] for key in sorted(init_params) if key not in NOT_ANSWER_SETTINGS
        },
    }


def claim(run_dir: Path, current: Mapping[str, Any], *, resume: bool, answers: Path) -> None:
    """Make ``run_dir`` this run's: refuse if it holds answers from a different one.

    ``answers`` is the file this run appends to: predictions.csv, or its shard's. Called before
    the model loads. The answers of every shard count, so a shard started with another
    configuration is refused too. A directory without answers is taken over whatever its old
    fingerprint says (a run that failed before answering anything, fixed and started again).
    """
    if has_rows(answers) and not resume:
        raise answers_exist(answers)
    if any(has_rows(path) for path in answer_files(run_dir)):
        path = run_dir / FILE_NAME
        if not path.is_file():
            raise RunnerError(
                f"{run_dir} holds answers but no {FILE_NAME} (an older version wrote it), so "
                "there is no telling whether they come from this configuration; choose another "
                f"run_name (or hydra.run.dir), or delete {run_dir} to start over"
            )
        changes = differences(read_json(path), current)
        if changes:
            raise RunnerError(
                f"{run_dir} holds answers from a different configuration "
                f"({summary(changes)}); choose another run_name (or hydra.run.dir) for this "
                f"one, or delete {run_dir} to start over"
            )
    write_json(run_dir / FILE_NAME, current)


def summary(changes: list[str]) -> str:
    """The first three of :func:`differences`' lines, and how many more there are."""
    more = f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
    return "; ".join(changes[:3]) + more


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for each leaf that differs, keys in dotted form."""
    old, new = flatten(saved), flatten(current)
    missing = object()
    return [
        f"{key}: {shown(old.get(key, missing))} -> {shown(new.get(key, missing))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, missing) != new.get(key, missing)
    ]


def shown(value: Any) -> str:
    if not isinstance(value, (str, int, float, bool, list, type(None), dict)):
        return "(not set)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
