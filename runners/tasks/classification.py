"""Page or document classification: the model answers one class from a label set.

The labels are ``labels`` if given, else every class the dataset's answers name (sorted). The
prompt lists them (``{labels}``) after the dataset's question (``{prompt}``). With
``constrained``, each request's response format is a JSON Schema string enum of the labels, so
a constraining backend can only answer one of them.

Labels, references and answers are compared in their normalised form
(:func:`runners.metrics.normalize`: case, spacing and end punctuation don't count), so
``Invoice`` and `` invoice `` are one class. A class is reported under one spelling: its
``labels`` spelling, else the first the dataset uses (spacing collapsed). ``labels`` naming one
class twice is refused, and so is a sample whose class is empty (a sample without an answer,
or with a null one, is unlabelled: its answer is read, and counts in no metric).

An answer is read as a label when, normalised, it is one, or it is a JSON string of one, or it
names exactly one label (as a whole word); anything else, an empty answer included, is
``unparseable``, a class of its own in the confusion matrix (never a reference class). Per
sample: ``predicted_label`` and ``correct``. Over the run:
``accuracy``, ``macro_f1`` (the mean F1 over the labels the references use) and the share of
``unparseable`` answers; ``confusion_matrix.csv`` (references down, answers across) and
``metrics_by_label.csv`` (precision, recall, F1 and support per label).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model_interface.model_interface import PredictionRequest
from runners.datasets import Sample
from runners.metrics import normalize, precision_recall_f1
from runners.tasks.base import ScoreGuide, Tally, Task, TaskError

DEFAULT_PROMPT = "{prompt}\nAnswer with exactly one of: {labels}."
UNPARSEABLE = "unparseable"


class ClassificationTask(Task):
    """Ask for a class from a label set, and count the answers.

    Args:
        labels: the classes; ``None`` takes every class the dataset's answers name.
        prompt_template: the request's prompt; ``{labels}`` lists the labels, ``{prompt}`` is
            the dataset's question.
        constrained: send the labels as the response format (a JSON Schema string enum).
    """

    name = "classification"

    def __init__(
        self,
        *,
        metric_names: Sequence[str],
        labels: Sequence[str] | None = None,
        prompt_template: str = DEFAULT_PROMPT,
        constrained: bool = False,
    ) -> None:
        super().__init__(metric_names=metric_names)
        self.prompt_template = prompt_template
        self.constrained = constrained
        # Each class by its normalised form, with the spelling it is reported under.
        self._spelling: dict[str, str] = {}
        self.given_labels = None if labels is None else _given_labels(labels)
        for label in self.given_labels or []:
            self._spelling[normalize(label)] = label

    @property
    def labels(self) -> list[str]:
        if self.given_labels is not None:
            return self.given_labels
        return sorted(self._spelling.values())

    def check(self, sample: Sample) -> None:
        reference = sample.reference
        if reference is None:
            return
        if not isinstance(reference, str):
            raise TaskError(
                f"sample {sample.id!r}: task=classification needs one class name as the "
                f"answer, got {reference!r}"
            )
        form = normalize(reference)
        if not form:
            # An empty class would become a label that every answer names (and an empty
            # answer would score as right).
            raise TaskError(
                f"sample {sample.id!r} has an empty class {reference!r}; write its class in its "
                "answer, or leave it unlabelled (no answer column, or a null answer in JSONL)"
            )
        if form == UNPARSEABLE:
            raise TaskError(
                f"sample {sample.id!r} is of class {reference!r}, the name of unreadable "
                "answers; rename the class"
            )
        if self.given_labels is not None:
            if form not in self._spelling:
                raise TaskError(
                    f"sample {sample.id!r} is of class {reference!r}, which is not among "
                    f"task.labels {self.given_labels}"
                )
            return
        # The first spelling seen names the class; the dataset is read in file order, so the
        # same file always gives the same spellings.
        self._spelling.setdefault(form, " ".join(reference.split()))

    def request(self, sample: Sample, images: Sequence[Any]) -> PredictionRequest:
        prompt = self.prompt_template.format(prompt=sample.prompt, labels=", ".join(self.labels))
        schema = {"type": "string", "enum": self.labels} if self.constrained else None
        return PredictionRequest(images, prompt, response_format=schema)

    @property
    def columns(self) -> list[str]:
        return ["predicted_label", "correct"]

    def score_guide(self) -> ScoreGuide:
        return ScoreGuide(
            higher_is_better={
                "correct": True,
                "accuracy": True,
                "macro_f1": True,
                UNPARSEABLE: False,
            },
            rank_by="correct",
            correctness="correct",
            group_files=("metrics_by_group.csv", "metrics_by_label.csv", "confusion_matrix.csv"),
        )

    def score(self, prediction: str, reference: Any) -> dict[str, Any]:
        label = read_label(prediction, self.labels)
        if reference is None:
            return {"predicted_label": label}
        right = normalize(label) == normalize(reference)  # "Invoice" is right for " invoice "
        return {"predicted_label": label, "correct": float(right)}

    def tally(self, run_dir: Path) -> Tally:
        return _Confusion(self.labels)

    def fingerprint(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def stratum(self, sample: Sample) -> Any:
        reference = sample.reference
        return normalize(reference) if isinstance(reference, str) else None


def _given_labels(labels: Sequence[str]) -> list[str]:
    """``task.labels`` checked: a list of distinct, non-empty classes, ``unparseable`` not
    among them."""
    if isinstance(labels, str):  # task.labels=invoice: one string, not a list of characters
        raise TaskError(
            f"task.labels must be a list, e.g. task.labels=[{labels},other]; got {labels!r}"
        )
    given: dict[str, str] = {}
    for label in map(str, labels):
        form = normalize(label)
        if not form:
            raise TaskError(f"task.labels holds an empty label {label!r}; remove it")
        if form == UNPARSEABLE:
            raise TaskError(f"{UNPARSEABLE!r} is the class of unreadable answers; rename it")
        if form in given:
            raise TaskError(
                f"task.labels holds {given[form]!r} and {label!r}, one label spelt twice "
                "(labels are compared ignoring case, spacing and end punctuation); keep one"
            )
        given[form] = label
    return list(given.values())


def read_label(answer: str, labels: Sequence[str]) -> str:
    """The label an answer gives (module docstring), or ``unparseable``."""
    text = answer.strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = None
    if isinstance(decoded, str):  # a constrained answer is a JSON string
        text = decoded
    words = normalize(text)
    if not words:  # an empty answer names no label, whatever the labels are
        return UNPARSEABLE
    by_form = {form: label for label in labels if (form := normalize(label))}
    if words in by_form:
        return by_form[words]
    named = [
        label
        for form, label in by_form.items()
        if re.search(rf"(?<!\w){re.escape(form)}(?!\w)", words)
    ]
    return named[0] if len(named) == 1 else UNPARSEABLE


class _Confusion(Tally):
    """Counts of (reference, answer) pairs, and what they give."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.by_form = {normalize(label): label for label in self.labels}
        self.pairs: Counter[tuple[str, str]] = Counter()

    def add(self, row: Mapping[str, Any], reference: Any) -> None:
        # The task's check put every reference's form among the labels: the reference is
        # counted under its label's spelling, as the answers are.
        if reference is not None:
            self.pairs[(self.by_form[normalize(reference)], row["predicted_label"])] += 1

    def summary(self) -> dict[str, Any]:
        total = sum(self.pairs.values())
        right = sum(count for (truth, answer), count in self.pairs.items() if truth == answer)
        used = sorted({truth for truth, _ in self.pairs})
        f1s = [self._per_label(label)["f1"] for label in used]
        unreadable = sum(
            count for (_, answer), count in self.pairs.items() if answer == UNPARSEABLE
        )
        return {
            "accuracy": right / total if total else math.nan,
            "macro_f1": sum(f1s) / len(f1s) if f1s else math.nan,
            UNPARSEABLE: unreadable / total if total else math.nan,
        }

    def files(self) -> dict[str, list[dict[str, Any]]]:
        answers = [*self.labels, UNPARSEABLE]
        matrix = [
            {"reference": truth, **{answer: self.pairs[(truth, answer)] for answer in answers}}
            for truth in self.labels
        ]
        by_label = [{"label": label, **self._per_label(label)} for label in self.labels]
        return {"confusion_matrix.csv": matrix, "metrics_by_label.csv": by_label}

    def _per_label(self, label: str) -> dict[str, Any]:
        right = self.pairs[(label, label)]
        answered = sum(count for (_, answer), count in self.pairs.items() if answer == label)
        support = sum(count for (truth, _), count in self.pairs.items() if truth == label)
        precision, recall, f1 = precision_recall_f1(
            right, answered, support, nothing_is_right=False
        )
        return {"precision": precision, "recall": recall, "f1": f1, "support": support}
