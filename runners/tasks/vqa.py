"""Visual question answering: one question about the images, one text answer, compared with
the reference answer(s) by the run's text metrics (``runner.metrics``).

Per-sample metrics (``exact_match``, ``anls``, ``cer``, ``wer``) are columns of predictions.csv
and their means the columns of metrics.csv (and of metrics_by_document.csv, per document, where
the dataset says which document each question is about). Over each group of samples (all of
them; each document class and question type in metrics_by_group.csv; each document class in
metrics_by_doc_class.csv) come ``cer_corpus`` and
``wer_corpus``, computed as VLMHyperBench's evaluator does, and corpus metrics such as ``bleu``
when ``runner.metrics`` names them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rapidfuzz.distance import Levenshtein

from model_interface.model_interface import PredictionRequest
from runners import metrics as quality
from runners.datasets import Sample
from runners.metrics.summaries import CorpusErrorRates, QualitySummary
from runners.tasks.base import ScoreGuide, Tally, Task, TaskError

GROUP_COLUMNS = ("doc_class", "question_type")


class VQATask(Task):
    """The prompt is the dataset's question (after ``dataset.prompt_template``)."""

    name = "vqa"

    def __init__(self, *, metric_names: Sequence[str]) -> None:
        super().__init__(metric_names=metric_names)
        try:
            quality.validate_names(self.metric_names)
        except ValueError as error:  # a name in runner.metrics: the run's config to fix
            raise TaskError(str(error)) from None
        self.corpus_metrics = [name for name in self.metric_names if quality.is_corpus_metric(name)]
        self.row_metrics = [name for name in self.metric_names if name not in self.corpus_metrics]

    def check(self, sample: Sample) -> None:
        if not sample.prompt.strip():
            raise TaskError(f"sample {sample.id!r} has an empty question; task=vqa asks it")
        if isinstance(sample.reference, Mapping):
            raise TaskError(
                f"sample {sample.id!r} has an object for its answer; task=vqa compares text "
                "answers (use task=kie for fields)"
            )

    def request(self, sample: Sample, images: Sequence[Any]) -> PredictionRequest:
        return PredictionRequest(images, sample.prompt)

    @property
    def columns(self) -> list[str]:
        return list(self.row_metrics)

    def score(self, prediction: str, reference: Any) -> dict[str, Any]:
        return quality.score(prediction, reference, self.row_metrics)

    def score_row(self, row: Mapping[str, Any], reference: Any) -> dict[str, Any]:
        return quality.score(row["prediction"], reference, self.row_metrics, row)

    def tally(self, run_dir: Path) -> Tally:
        return _VQATally(self.row_metrics, self.corpus_metrics)

    def score_guide(self) -> ScoreGuide:
        metrics = [*self.row_metrics, *self.corpus_metrics]
        return ScoreGuide(
            higher_is_better={
                **{name: quality.higher_is_better(name) for name in metrics},
                "cer_corpus": False,
                "wer_corpus": False,
            },
            rank_by=next((n for n in ("anls", *self.row_metrics) if n in self.row_metrics), None),
            correctness="exact_match" if "exact_match" in self.row_metrics else None,
            group_files=(
                "metrics_by_group.csv",
                "metrics_by_doc_class.csv",
                "metrics_by_document.csv",
            ),
        )


class _VQATally(Tally):
    """Means of the per-sample metrics and the corpus metrics, overall and per group."""

    def __init__(self, row_metrics: Sequence[str], corpus_metrics: Sequence[str]) -> None:
        self.row_metrics, self.corpus_metrics = list(row_metrics), list(corpus_metrics)
        self.means = QualitySummary(self.row_metrics)
        self.by_class = QualitySummary(self.row_metrics)
        self.by_document = QualitySummary(self.row_metrics)
        self.corpora: dict[tuple[str, ...], _Corpus] = {}  # by (), group, or ("class", name)

    def add(self, row: Mapping[str, Any], reference: Any) -> None:
        scores = {
            name: float(row[name]) for name in self.row_metrics if row.get(name) not in (None, "")
        }
        group = tuple(str(row.get(column) or "") for column in GROUP_COLUMNS)
        self.means.add(scores, group if any(group) else ())
        if row.get("doc_class"):
            self.by_class.add(scores, (str(row["doc_class"]),))
        if row.get("document_id"):
            self.by_document.add(scores, (str(row["document_id"]),))
        if reference is None or (not isinstance(reference, str) and not reference):
            return
        keys = [()] + ([group] if any(group) else [])
        keys += [("class", str(row["doc_class"]))] if row.get("doc_class") else []
        for key in keys:
            corpus = self.corpora.setdefault(key, _Corpus(bool(self.corpus_metrics)))
            corpus.add(row["prediction"], reference)

    def summary(self) -> dict[str, Any]:
        overall = self.means.overall()
        return {**{name: overall[name] for name in self.row_metrics}, **self._corpus(())}

    def groups(self) -> list[dict[str, Any]]:
        return [
            {**dict(zip(GROUP_COLUMNS, group, strict=True)), **row, **self._corpus(group)}
            for group, row in self.means.groups()
        ]

    def files(self) -> dict[str, list[dict[str, Any]]]:
        """metrics_by_doc_class.csv and metrics_by_document.csv, where the dataset says."""
        by_class = [
            {"doc_class": name, **row, **self._corpus(("class", name))}
            for (name,), row in self.by_class.groups()
        ]
        # One row per document, made as the file is written (a run may have millions).
        by_document = ({"document_id": name, **row} for (name,), row in self.by_document.groups())
        return {"metrics_by_doc_class.csv": by_class, "metrics_by_document.csv": by_document}

    def _corpus(self, key: tuple[str, ...]) -> dict[str, float]:
        corpus = self.corpora.get(key)
        figures = (
            corpus.rates.rates() if corpus else {"cer_corpus": math.nan, "wer_corpus": math.nan}
        )
        for name in self.corpus_metrics:
            metric = quality.METRICS.get(name)
            figures[name] = metric.score(*corpus.texts()) if corpus and corpus.pairs else math.nan
        return figures


class _Corpus:
    """One group's corpus error rates, and its texts where a corpus metric needs them."""

    def __init__(self, keep_texts: bool) -> None:
        self.rates = CorpusErrorRates()
        self.keep_texts = keep_texts
        self.pairs: list[tuple[str, str]] = []

    def add(self, prediction: str, reference: Any) -> None:
        self.rates.add(prediction, reference)
        if self.keep_texts:
            self.pairs.append((prediction, _closest(prediction, reference)))

    def texts(self) -> tuple[list[str], list[str]]:
        return [p for p, _ in self.pairs], [r for _, r in self.pairs]


def _closest(prediction: str, reference: Any) -> str:
    """The reference itself, or of several acceptable ones the closest to the prediction."""
    if isinstance(reference, str):
        return reference
    return min(reference, key=lambda candidate: Levenshtein.distance(candidate, prediction))
