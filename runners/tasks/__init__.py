"""Tasks: what a run asks the model about each sample, and how its answers are judged.

A task builds each request (prompt, and a response format where it constrains the answer),
scores each answer, and sums the scores up (:class:`runners.tasks.base.Task`). Tasks are found
by name in :data:`TASKS`, the way models are found in ``ModelFactory``; a package adds its own
under the ``model_interface.tasks`` entry-point group.

In a config: ``task: {name: vqa}``; the other keys are passed to the task's constructor
(``python -m runners.run task=kie task.schema_file=schema.json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from model_interface.registry import Registry
from runners.tasks.base import Task, TaskError

TASKS: Registry[type[Task]] = Registry(
    kind="task",
    group="model_interface.tasks",
    builtins={
        "vqa": "runners.tasks.vqa:VQATask",
        "kie": "runners.tasks.kie:KIETask",
        "classification": "runners.tasks.classification:ClassificationTask",
    },
    accepts=lambda found: isinstance(found, type) and issubclass(found, Task),
    expected="a subclass of runners.tasks.base.Task",
    example="ClassName",
    how_to_register=lambda name: (
        f"Register it with runners.tasks.TASKS.register('{name}', 'package.module:Class')"
    ),
    error=TaskError,
)


def make_task(config: Mapping[str, Any], metric_names: list[str]) -> Task:
    """The task a ``task`` config names, built with the config's other keys.

    ``metric_names`` are the run's text metrics (``runner.metrics``), for tasks that compare
    texts. Raises :class:`TaskError` for an unknown task or options it does not take.
    """
    options = dict(config)
    name = options.pop("name", None)
    if not name:
        raise TaskError("task.name is not set; choose a task, e.g. task=vqa")
    task_class = TASKS.get(name)
    try:
        return task_class(metric_names=metric_names, **options)
    except TypeError as error:
        raise TaskError(
            f"task {name!r} can't take these options {sorted(options)}: {error}"
        ) from None


__all__ = ["TASKS", "Task", "TaskError", "make_task"]
