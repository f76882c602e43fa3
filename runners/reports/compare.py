"""Two runs of one dataset compared sample by sample: the same answers, flips of correctness,
paired bootstrap intervals, McNemar's exact test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runners.reports.read import ReportError, Run, number_or_none

BOOTSTRAP_RESAMPLES = 2000


@dataclass
class MetricDifference:
    name: str
    mean_a: float
    mean_b: float
    low: float  # 95% paired bootstrap interval of mean_b - mean_a
    high: float

    @property
    def difference(self) -> float:
        return self.mean_b - self.mean_a


@dataclass
class Agreement:
    """How often two runs answered a sample the same (samples both answered without error)."""

    compared: int
    as_written: int  # texts equal character for character
    same: int  # equal by :func:`same_answer` (as_written included)
    token_counts_known: int  # samples with completion_tokens in both runs
    same_token_count: int
    different: list[tuple[dict[str, str], dict[str, str], int]]  # rows, first differing index

    def summary(self) -> str:
        if not self.compared:
            return "answers: no sample answered without error in both runs"
        normalised = self.same - self.as_written
        return (
            f"answers: {self.same} of {self.compared} the same"
            + (f" ({normalised} after normalisation)" if normalised else "")
            + f", {len(self.different)} different"
        )


@dataclass
class Pair:
    """Two runs of the same dataset, sample by sample (samples both answered)."""

    a: Run
    b: Run
    n_paired: int
    only_a: int
    only_b: int
    answers: Agreement
    correctness: str | None  # the 0/1 column compared, None when the runs have none in common
    right_only_a: list[tuple[dict[str, str], dict[str, str]]]  # (row of a, row of b)
    right_only_b: list[tuple[dict[str, str], dict[str, str]]]
    mcnemar_p: float | None
    metrics: list[MetricDifference]


def compare(a: Run, b: Run, *, seed: int = 0) -> Pair:
    """Pair the samples of ``a`` and ``b`` by id; refuses runs of different datasets."""
    pairs = paired_rows(a, b)
    declared = a.guide.correctness  # the same task's runs declare the same
    shared = declared == b.guide.correctness and declared in a.scores and declared in b.scores
    correctness = declared if shared else None
    right_only_a, right_only_b = [], []
    if correctness:
        for row_a, row_b in pairs:
            right_a, right_b = (
                number_or_none(row_a[correctness]) == 1,
                number_or_none(row_b[correctness]) == 1,
            )
            if right_a and not right_b:
                right_only_a.append((row_a, row_b))
            elif right_b and not right_a:
                right_only_b.append((row_a, row_b))
    shared = [name for name in a.scores if name in b.scores]
    return Pair(
        a=a,
        b=b,
        n_paired=len(pairs),
        only_a=a.n_rows - len(pairs),
        only_b=b.n_rows - len(pairs),
        answers=agreement(pairs),
        correctness=correctness,
        right_only_a=right_only_a,
        right_only_b=right_only_b,
        mcnemar_p=mcnemar_exact_p(len(right_only_a), len(right_only_b)) if correctness else None,
        metrics=[_paired_difference(name, pairs, seed) for name in shared],
    )


def paired_rows(a: Run, b: Run) -> list[tuple[dict[str, str], dict[str, str]]]:
    """The rows of the samples both runs have, by id, in ``a``'s order."""
    _require_same_dataset(a, b)
    by_id_b = {row["sample_id"]: row for row in b.rows}
    pairs = [(row, by_id_b[row["sample_id"]]) for row in a.rows if row["sample_id"] in by_id_b]
    if not pairs:
        raise ReportError(f"{a.path} and {b.path} have no sample in common to compare")
    return pairs


def same_answer(a: str, b: str) -> bool:
    """Whether two answers are the same after the report's normalisation, which forgives only
    what a backend changes in the writing, never in the content:

    * U+FFFD at the end is dropped: generation that stops inside a multi-byte character ends,
      decoded by transformers, in U+FFFD, while vLLM leaves the incomplete character out;
    * two JSON objects or arrays are compared written without whitespace between tokens,
      since grammars for the same schema may place it differently (keys stay in order, and
      ``1``, ``1.0`` and ``true`` stay different).
    """
    a, b = a.rstrip("\ufffd"), b.rstrip("\ufffd")
    if a == b:
        return True
    compact_a = _compact_json(a)
    return compact_a is not None and compact_a == _compact_json(b)


def _compact_json(text: str) -> str | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict | list):
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def agreement(pairs: Sequence[tuple[dict[str, str], dict[str, str]]]) -> Agreement:
    """Answer agreement of paired rows (see :class:`Agreement`)."""
    answered = [(a, b) for a, b in pairs if not a["error"] and not b["error"]]
    counts = [
        (number_or_none(a["completion_tokens"]), number_or_none(b["completion_tokens"]))
        for a, b in answered
    ]
    known = [(x, y) for x, y in counts if x is not None and y is not None]
    different = [
        (a, b, _first_difference(a["prediction"], b["prediction"]))
        for a, b in answered
        if not same_answer(a["prediction"], b["prediction"])
    ]
    return Agreement(
        compared=len(answered),
        as_written=sum(a["prediction"] == b["prediction"] for a, b in answered),
        same=len(answered) - len(different),
        token_counts_known=len(known),
        same_token_count=sum(x == y for x, y in known),
        different=different,
    )


def _first_difference(a: str, b: str) -> int:
    shorter = min(len(a), len(b))
    return next((i for i in range(shorter) if a[i] != b[i]), shorter)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test: under "both runs are as often right", each discordant pair
    is a fair coin, so the p-value is a binomial tail (exact integers, any number of pairs)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def _paired_difference(name: str, pairs: Sequence[tuple[dict, dict]], seed: int) -> Any:
    import numpy as np

    values = [(number_or_none(a[name]), number_or_none(b[name])) for a, b in pairs]
    both = np.array([(x, y) for x, y in values if x is not None and y is not None], dtype=float)
    if len(both) == 0:
        return MetricDifference(name, math.nan, math.nan, math.nan, math.nan)
    differences = both[:, 1] - both[:, 0]
    resampled = np.random.default_rng(seed).integers(
        0, len(differences), (BOOTSTRAP_RESAMPLES, len(differences))
    )
    means = differences[resampled].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return MetricDifference(name, both[:, 0].mean(), both[:, 1].mean(), float(low), float(high))


def _require_same_dataset(a: Run, b: Run) -> None:
    for run in (a, b):
        if run.fingerprint is None:
            raise ReportError(
                f"{run.path} has no fingerprint.json, so there is no telling which dataset it "
                "ran on; only runs made by this version can be compared sample by sample"
            )
    identity = ("format", "sample_ids", "annotation_sha256")
    dataset_a, dataset_b = a.fingerprint["dataset"], b.fingerprint["dataset"]  # type: ignore[index]
    if any(dataset_a.get(key) != dataset_b.get(key) for key in identity):
        raise ReportError(
            f"{a.name} and {b.name} ran on different datasets ({dataset_a.get('file')} and "
            f"{dataset_b.get('file')} differ in content), so their samples can't be paired; "
            "compare runs of the same annotation file"
        )


def same_dataset(a: Run, b: Run) -> bool:
    try:
        _require_same_dataset(a, b)
    except ReportError:
        return False
    return True
