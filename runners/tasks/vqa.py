"""Visual question answering: one question about the images, one text answer, compared with
the reference answer(s) by the run's text metrics (``runner.metrics``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from model_interface.model_interface import PredictionRequest
from runners import metrics as quality
from runners.datasets import Sample
from runners.tasks.base import Tally, Task

GROUP_COLUMNS = ("doc_class", "question_type")


class VQATask(Task):
    """The prompt is the dataset's question (after ``dataset.prompt_template``)."""

    name = "vqa"

    def __init__(self, *, metric_names: Sequence[str]) -> None:
        super().__init__(metric_names=metric_names)
        quality.validate_names(self.metric_names)

    def check(self, sample: Sample) -> None:
        if isinstance(sample.reference, Mapping):
            raise ValueError(
                f"sample {sample.id!r} has an object for its answer; task=vqa compares text "
                "answers (use task=kie for fields)"
            )

    def request(self, sample: Sample, images: Sequence[Any]) -> PredictionRequest:
        return PredictionRequest(images, sample.prompt)

    @property
    def columns(self) -> list[str]:
        return list(self.metric_names)

    def score(self, prediction: str, reference: Any) -> dict[str, Any]:
        return quality.score(prediction, reference, self.metric_names)

    def tally(self) -> Tally:
        return _MeansByGroup(self.metric_names)


class _MeansByGroup(Tally):
    """Each metric's mean over all rows, and per (doc_class, question_type)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.means = quality.QualitySummary(self.names)

    def add(self, row: Mapping[str, Any]) -> None:
        scores = {name: float(row[name]) for name in self.names if row.get(name) not in (None, "")}
        group = tuple(str(row.get(column) or "") for column in GROUP_COLUMNS)
        self.means.add(scores, group if any(group) else ())

    def summary(self) -> dict[str, Any]:
        overall = self.means.overall()
        return {name: overall[name] for name in self.names}

    def groups(self) -> list[dict[str, Any]]:
        return [{**dict(zip(GROUP_COLUMNS, group, strict=True)), **row}
                for group, row in self.means.groups()]  # fmt: skip
