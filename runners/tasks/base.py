"""What every task provides. A run asks its task three things:

1. :meth:`Task.check` every sample of the dataset, before a model is loaded;
2. :meth:`Task.request` for each sample: the prompt, images and response format to send;
3. :meth:`Task.score` for each answer: the columns it adds to the sample's row of
   predictions.csv; then a :class:`Tally` of all the rows gives metrics.csv's quality columns,
   metrics_by_group.csv, and any file of the task's own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model_interface.model_interface import PredictionRequest
from runners.datasets import Sample


class Tally(ABC):
    """A task's running summary of scored rows (in dataset order, one at a time)."""

    @abstractmethod
    def add(self, row: Mapping[str, Any], reference: Any) -> None:
        """Count one scored row of predictions.csv (its columns as text, the task's included)
        with the sample's reference as the dataset holds it."""

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """The quality columns of metrics.csv."""

    def groups(self) -> list[dict[str, Any]]:
        """Rows of metrics_by_group.csv (quality per document class and question type)."""
        return []

    def files(self) -> dict[str, list[dict[str, Any]]]:
        """Further (small) files of the task's own, by file name, as rows."""
        return {}

    def close(self) -> None:  # noqa: B027 (optional)
        """All rows are in: finish what was written as they came (large files of its own)."""


class Task(ABC):
    """What a run asks the model about each sample, and how its answers are judged.

    Args:
        metric_names: the run's text metrics (``runner.metrics``), for tasks that compare texts.
    """

    name: str = ""

    def __init__(self, *, metric_names: Sequence[str]) -> None:
        self.metric_names = list(metric_names)

    def check(self, sample: Sample) -> None:  # noqa: B027 (optional)
        """Raise ``ValueError`` if ``sample`` can't be used by this task (e.g. its reference has
        the wrong shape). Called for every sample before the model is loaded."""

    @abstractmethod
    def request(self, sample: Sample, images: Sequence[Any]) -> PredictionRequest:
        """The request for ``sample``, its images decoded."""

    @property
    @abstractmethod
    def columns(self) -> list[str]:
        """The columns :meth:`score` adds to a row, in order."""

    @abstractmethod
    def score(self, prediction: str, reference: Any) -> dict[str, Any]:
        """The row's columns for ``prediction`` against ``reference`` (``None``: no reference).

        Keys that are not in :attr:`columns` reach the tally with the row but are not written.
        """

    @abstractmethod
    def tally(self, run_dir: Path) -> Tally:
        """A new, empty summary of scored rows; it may write files of its own in ``run_dir``."""

    def fingerprint(self) -> dict[str, Any]:
        """What about this task decides an answer (its prompt, its response format)."""
        return {}

    def stratum(self, sample: Sample) -> Any:
        """The kind of sample its scores should be told apart by (the document class here, the
        reference class in classification): a shuffled subset holds each in proportion, and a
        subset that holds only one of several is warned about."""
        return sample.doc_class
