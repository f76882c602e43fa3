"""What every task provides. A run asks its task three things:

1. :meth:`Task.check` every sample of the dataset, before a model is loaded;
2. :meth:`Task.request` for each sample: the prompt, images and response format to send;
3. :meth:`Task.score` for each answer: the columns it adds to the sample's row of
   predictions.csv; then a :class:`Tally` of all the rows gives metrics.csv's quality columns,
   metrics_by_group.csv, and any file of the task's own.

:meth:`Task.score_guide` says how its scores read (which way is better, which one ranks a run's
worst samples, which says a sample was right, which files hold per-group figures); a run writes
it to ``score_guide.json``, from which reports read a run of any task, a plugin's included.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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


class TaskError(ValueError):
    """A sample, option or file a task can't use; the message says what to fix. A run shows it
    as one line; any other exception from a task is a bug, shown with its traceback."""


SCORE_GUIDE_FILE = "score_guide.json"


@dataclass(frozen=True)
class ScoreGuide:
    """How a task's scores read, for reports and comparisons of its runs."""

    higher_is_better: dict[str, bool]  # each score column the task writes -> its direction
    rank_by: str | None = None  # the per-sample score a run's worst samples are ranked by
    correctness: str | None = None  # the per-sample 0/1 score: was the sample answered right
    group_files: tuple[str, ...] = ("metrics_by_group.csv",)  # per-group figures, in order

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "group_files": list(self.group_files)}

    @classmethod
    def from_json(cls, data: Any) -> ScoreGuide:
        """The guide a run wrote; ``ValueError`` naming what is wrong with a damaged one. Its
        group files must be plain ``.csv`` names: a report reads them from the run directory
        only."""
        if not isinstance(data, Mapping) or not isinstance(data.get("higher_is_better"), Mapping):
            raise ValueError("it has no higher_is_better object")
        names = (data.get("rank_by"), data.get("correctness"))
        if any(name is not None and not isinstance(name, str) for name in names):
            raise ValueError("rank_by and correctness must be column names or null")
        files = data.get("group_files", [])
        if not isinstance(files, list) or not all(
            isinstance(name, str) and name.endswith(".csv") and name == Path(name).name != ""
            for name in files
        ):
            raise ValueError(f"group_files must be file names ending in .csv, got {files!r}")
        return cls(
            higher_is_better={str(k): bool(v) for k, v in data["higher_is_better"].items()},
            rank_by=names[0],
            correctness=names[1],
            group_files=tuple(files),
        )


class Task(ABC):
    """What a run asks the model about each sample, and how its answers are judged.

    Args:
        metric_names: the run's text metrics (``runner.metrics``), for tasks that compare texts.
    """

    name: str = ""

    def __init__(self, *, metric_names: Sequence[str]) -> None:
        self.metric_names = list(metric_names)

    def check(self, sample: Sample) -> None:  # noqa: B027 (optional)
        """Raise :class:`TaskError` if ``sample`` can't be used by this task (e.g. its reference has
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

    def score_row(self, row: Mapping[str, Any], reference: Any) -> dict[str, Any]:
        """:meth:`score` given the whole row of predictions.csv (the sample's columns beside
        its ``prediction``), for rules that depend on the sample; by default the prediction's."""
        return self.score(row["prediction"], reference)

    @abstractmethod
    def tally(self, run_dir: Path) -> Tally:
        """A new, empty summary of scored rows; it may write files of its own in ``run_dir``."""

    def score_guide(self) -> ScoreGuide:
        """How this task's scores read. By default every column of :attr:`columns` is a score,
        higher is better, the first ranks samples, and none says a sample was right."""
        return ScoreGuide(
            higher_is_better=dict.fromkeys(self.columns, True),
            rank_by=next(iter(self.columns), None),
        )

    def fingerprint(self) -> dict[str, Any]:
        """What about this task decides an answer (its prompt, its response format)."""
        return {}

    def stratum(self, sample: Sample) -> Any:
        """The kind of sample its scores should be told apart by (the document class here, the
        reference class in classification): a shuffled subset holds each in proportion, and a
        subset that holds only one of several is warned about."""
        return sample.doc_class
