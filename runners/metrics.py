"""Per-sample answer-quality metrics for document VQA, picked by name from config.

Every metric compares ``normalize(prediction)`` with ``normalize(reference)``:

1. Unicode NFKC (full-width digits and letters, ligatures, NBSP and the like become plain forms);
2. ``str.casefold()`` (case-insensitive, also for Cyrillic, Greek, German ``ß`` -> ``ss``);
3. every run of whitespace becomes one space;
4. the characters in ``EDGE_CHARS`` (space, ``. , : ; ! ?``, straight and curly quotes,
   guillemets, backtick) are stripped from both ends, repeatedly, so ``'"$5.00."'`` -> ``$5.00``.
   Nothing inside the answer is touched, nor ``$ % # - ( ) [ ]`` or any other character at its
   ends. If stripping would leave nothing (an answer that is only punctuation, e.g. ``"?"``),
   step 3's result is kept instead.

A prefix such as ``Total:`` is *not* removed: ``exact_match("Total: $5.00.", "$5.00")`` is 0.0,
while ANLS/CER give partial credit.

Edge cases: a reference may be a string or a list of acceptable strings (best score over them:
max for ``exact_match``/``anls``, min for ``cer``/``wer``). A ``None`` prediction (failed
generation) scores as the empty string. For ``cer``/``wer`` an empty reference gives 0.0 with an
empty prediction and 1.0 otherwise (jiwer itself raises or counts insertions there); error rates
are not capped and can exceed 1.0. ``score`` returns ``{}`` for a ``None``/NaN/empty-list
reference: the sample has no ground truth and must not count as wrong.
"""

from __future__ import annotations

import math
import re
import unicodedata
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from rapidfuzz.distance import Levenshtein

from model_interface.registry import Registry

Reference = str | Sequence[str]  # one answer or several acceptable ones

EDGE_CHARS = " .,:;!?\"'`“”„‘’‚«»"
ANLS_THRESHOLD = 0.5  # DocVQA: a normalised edit distance of 0.5 or more scores 0
_WHITESPACE = re.compile(r"\s+")


def normalize(text: str | None) -> str:
    """Canonical form used by every metric (rules in the module docstring)."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    text = _WHITESPACE.sub(" ", text).strip()
    return text.strip(EDGE_CHARS) or text


def _refs(reference: Reference) -> list[str]:
    refs = [reference] if isinstance(reference, str) else list(reference)
    if not refs:
        raise ValueError("empty list of references")
    return [normalize(str(r)) for r in refs]


def exact_match(prediction: str | None, reference: Reference) -> float:
    pred = normalize(prediction)
    return float(any(pred == ref for ref in _refs(reference)))


def anls(prediction: str | None, reference: Reference) -> float:
    """Per-sample ANLS (Biten et al., DocVQA): 1 - NL if NL < 0.5 else 0, best over references.

    DocVQA normalises by lower-casing and trimming only; the extra edge-punctuation strip here
    is deliberate, so that "$5.00." and "$5.00" agree across all metrics.
    """
    pred = normalize(prediction)
    best = 0.0
    for ref in _refs(reference):
        distance = Levenshtein.normalized_distance(pred, ref)  # edits / max(len); ("", "") -> 0
        if distance < ANLS_THRESHOLD:
            best = max(best, 1.0 - distance)
    return best


def _error_rate(
    distance: Callable[[str, str], float], prediction: str | None, reference: Reference
) -> float:
    pred = normalize(prediction)
    # Nothing expected and nothing said is perfect; anything said is wrong (jiwer itself
    # refuses an empty reference, or counts insertions, depending on the version).
    rates = [distance(ref, pred) if ref else float(bool(pred)) for ref in _refs(reference)]
    return min(rates)


# jiwer's definitions, (S + D + I) / reference length on characters or whitespace-separated
# words, computed with the same rapidfuzz edit distance jiwer uses underneath, without its
# per-call transform pipeline (10x faster; tests check the numbers equal jiwer's).
def _char_error_rate(reference: str, prediction: str) -> float:
    return Levenshtein.distance(reference, prediction) / len(reference)


def _word_error_rate(reference: str, prediction: str) -> float:
    words = reference.split()
    return Levenshtein.distance(words, prediction.split()) / len(words)


def cer(prediction: str | None, reference: Reference) -> float:
    """Character error rate, (S + D + I) / len(reference); can exceed 1."""
    return _error_rate(_char_error_rate, prediction, reference)


def wer(prediction: str | None, reference: Reference) -> float:
    """Word error rate on whitespace-separated words; can exceed 1."""
    return _error_rate(_word_error_rate, prediction, reference)


cer.higher_is_better = wer.higher_is_better = False  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CorpusMetric:
    """A metric over a whole group's texts at once (BLEU), rather than a mean of per-sample
    values: ``score(predictions, references) -> float``, one reference per prediction."""

    name: str
    score: Callable[[list[str], list[str]], float]


def _bleu(predictions: list[str], references: list[str]) -> float:
    import sacrebleu  # only runs that ask for BLEU need it

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


bleu = CorpusMetric("bleu", _bleu)
"""Corpus BLEU (sacrebleu's defaults: 13a tokenisation, 0-100) of the predictions against the
references, texts as they are (no normalisation). Needs ``pip install sacrebleu``."""


# Every metric is found by name here, like models in ModelFactory: a function
# (prediction, reference) -> float, reference one answer or several acceptable ones, or a
# CorpusMetric. A package adds its own under the "model_interface.metrics" entry-point group.
METRICS: Registry[Callable[[str | None, Reference], float] | CorpusMetric] = Registry(
    kind="metric",
    group="model_interface.metrics",
    builtins={
        name: f"runners.metrics:{name}" for name in ("exact_match", "anls", "cer", "wer", "bleu")
    },
    accepts=lambda found: callable(found) or isinstance(found, CorpusMetric),
    expected="a function (prediction, reference) -> float, or a CorpusMetric",
    example="function",
    how_to_register=lambda name: (
        f"Register it with runners.metrics.METRICS.register('{name}', 'package.module:function')"
    ),
)


def precision_recall_f1(
    right: int, predicted: int, expected: int, *, nothing_is_right: bool
) -> tuple[float, float, float]:
    """Precision, recall and F1 of ``right`` hits among ``predicted`` answers and ``expected``
    truths. Nothing predicted (expected) gives a precision (recall) of 1 when nothing was
    expected (predicted) either and ``nothing_is_right`` (a document with no fields, answered
    with none), else 0 (a class nobody has and nobody chose)."""
    precision = right / predicted if predicted else float(nothing_is_right and expected == 0)
    recall = right / expected if expected else float(nothing_is_right and predicted == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def higher_is_better(name: str) -> bool:
    """Whether more of metric ``name`` is better. A metric says otherwise with an attribute
    ``higher_is_better = False``, as the error rates here do."""
    return bool(getattr(METRICS.get(name), "higher_is_better", True))


def is_corpus_metric(name: str) -> bool:
    return isinstance(METRICS.get(name), CorpusMetric)


def metric_functions(names: Sequence[str]) -> list[Callable[[str | None, Reference], float]]:
    """The per-sample metric functions for ``names`` (corpus metrics are skipped); raises
    ``ValueError`` for an unknown name, suggesting the closest registered one."""
    found = [METRICS.get(name) for name in names]
    return [metric for metric in found if not isinstance(metric, CorpusMetric)]


def validate_names(names: Sequence[str]) -> None:
    """Raise ``ValueError`` for the first unknown metric name, suggesting the closest one."""
    metric_functions(names)


def score(
    prediction: str | None, reference: Reference | None, names: Sequence[str]
) -> dict[str, float]:
    """Score one sample with each named metric; ``{}`` when there is no reference."""
    functions = metric_functions(names)  # even without a reference: a typo fails on any sample
    row_names = [name for name in names if not is_corpus_metric(name)]
    missing = reference is None or (isinstance(reference, float) and math.isnan(reference))
    if missing or (not isinstance(reference, str) and len(reference) == 0):
        return {}
    return {
        name: function(prediction, reference)
        for name, function in zip(row_names, functions, strict=True)
    }


class QualitySummary:
    """Running means of each metric, overall and per group (e.g. doc_class, question_type).

    Samples are added one at a time, so memory grows with the number of groups, not samples,
    and a group costs a few hundred bytes (a run may have one per document): each has a row of
    one shared array of doubles. A sample without a score for a metric (no reference) counts
    in ``n`` but not in that metric's mean; ``n_scored`` says how many samples had a reference.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        # Per row: n, n_scored, each metric's sum, each metric's count. Row 0 is the overall.
        self._width = 2 + 2 * len(self.names)
        self._cells = array("d", bytes(8 * self._width))
        self._rows: dict[tuple[str, ...], int] = {}  # group -> its row

    def add(self, scores: Mapping[str, float], group: tuple[str, ...] = ()) -> None:
        values = [scores.get(name) for name in self.names]
        self._add(0, values)
        if group:
            row = self._rows.get(group)
            if row is None:
                row = self._rows[group] = len(self._cells) // self._width
                self._cells.frombytes(bytes(8 * self._width))
            self._add(row, values)

    def overall(self) -> dict[str, float]:
        """``{"n", "n_scored", <metric>: mean}``; a mean of nothing is NaN."""
        return self._row(0)

    def groups(self) -> Iterator[tuple[tuple[str, ...], dict[str, float]]]:
        """``(group, row)`` for every group seen, sorted by group, made one at a time."""
        return ((group, self._row(self._rows[group])) for group in sorted(self._rows))

    def _add(self, row: int, values: Sequence[float | None]) -> None:
        cells, start, width = self._cells, row * self._width, len(values)
        cells[start] += 1
        cells[start + 1] += any(value is not None for value in values)
        for index, value in enumerate(values):
            if value is not None:
                cells[start + 2 + index] += value
                cells[start + 2 + width + index] += 1

    def _row(self, row: int) -> dict[str, float]:
        start, width = row * self._width, len(self.names)
        cells = self._cells[start : start + self._width]
        sums, counts = cells[2 : 2 + width], cells[2 + width :]
        means = {
            name: total / count if count else math.nan
            for name, total, count in zip(self.names, sums, counts, strict=True)
        }
        return {"n": int(cells[0]), "n_scored": int(cells[1]), **means}


class CorpusErrorRates:
    """CER and WER over a whole group's texts, as VLMHyperBench's evaluator computes them with
    jiwer over lists: all edits over all reference characters (words), texts as they are but
    stripped (and, for words, split on whitespace), so long answers weigh more than short ones.

    Where a sample lists several acceptable answers, the closest one counts. An empty reference
    counts its prediction's length as edits (jiwer refuses it instead); a group whose
    references are all empty has no rate (NaN).
    """

    def __init__(self) -> None:
        self.char_edits = self.chars = self.word_edits = self.words = 0

    def add(self, prediction: str | None, reference: Reference) -> None:
        prediction = (prediction or "").strip()
        references = [reference] if isinstance(reference, str) else list(reference)
        char_edits, chars = min(
            (Levenshtein.distance(ref.strip(), prediction), len(ref.strip())) for ref in references
        )
        predicted_words = prediction.split()
        word_edits, words = min(
            (Levenshtein.distance(ref.split(), predicted_words), len(ref.split()))
            for ref in references
        )
        self.char_edits += char_edits
        self.chars += chars
        self.word_edits += word_edits
        self.words += words

    def rates(self) -> dict[str, float]:
        return {
            "cer_corpus": self.char_edits / self.chars if self.chars else math.nan,
            "wer_corpus": self.word_edits / self.words if self.words else math.nan,
        }


class RunTally:
    """Counts, timing and tokens for metrics.csv, gathered from the rows of predictions.csv, one
    at a time (quality is the task's: :mod:`runners.tasks`).

    Everything comes from what the rows record, so the figures describe the whole run directory
    however many attempts it took, and a resume with nothing left to do reproduces them:

    * a row with ``batch_size`` 0 failed before the model (its image could not be loaded);
    * a row without ``batch_size`` (answers made elsewhere, scored by ``runners.evaluate``)
      counts in no timing figure;
    * every other row reached the model in a call of ``batch_size`` requests that took
      ``call_s`` seconds, so it accounts for ``call_s / batch_size`` of model time.
    """

    def __init__(self) -> None:
        self.n_samples = self.n_input_errors = self.n_model_errors = 0
        self.model_s = 0.0
        self.prompt_tokens = self.completion_tokens = 0
        self.call_times = array("d")  # one float per sample that reached the model

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one row of predictions.csv."""
        self.n_samples += 1
        batch_size = _number(row["batch_size"])
        if batch_size is None:  # answers made elsewhere: nothing known of how
            self.n_model_errors += bool(row["error"])
        elif batch_size == 0:
            self.n_input_errors += 1
        else:
            call_s = _number(row["call_s"]) or 0.0
            self.call_times.append(call_s)
            self.model_s += call_s / batch_size
            self.n_model_errors += bool(row["error"])
        self.prompt_tokens += int(_number(row["prompt_tokens"]) or 0)
        self.completion_tokens += int(_number(row["completion_tokens"]) or 0)

    def summary(self) -> dict[str, Any]:
        """Counts, timing and token figures."""
        n_errors = self.n_input_errors + self.n_model_errors
        reached, model_s = len(self.call_times), self.model_s
        return {
            "n_samples": self.n_samples,
            "n_errors": n_errors,
            "n_input_errors": self.n_input_errors,
            "n_model_errors": self.n_model_errors,
            "error_rate": n_errors / self.n_samples if self.n_samples else 0.0,
            "model_s": model_s if reached else math.nan,
            "s_per_sample": model_s / reached if reached else math.nan,
            "samples_per_s": reached / model_s if model_s else math.nan,
            **_percentiles(self.call_times),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": self.completion_tokens / model_s if model_s else math.nan,
        }


def percentile(values: Iterable[float], share: float) -> float:
    """The value ``share`` (0 to 1) of the way up ``values`` in sorted order, interpolated
    linearly between the two nearest: statistics.quantiles' "inclusive" method, numpy's and
    pandas' default. ``share`` 0.5 is the median. NaN when there are no values.

    The one percentile of the project: metrics.csv's ``call_p50_s`` and ``call_p95_s`` and the
    report's call-time figures both come from here, so they agree."""
    if not 0 <= share <= 1:
        raise ValueError(f"a percentile's share is from 0 to 1, got {share}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    # The rank as an exact fraction: 0.7 of 90 steps is step 63, where 0.7 * 90 in floats is
    # 62.99999999999999 and would mix in the value below.
    rank = Fraction(str(share)) * (len(ordered) - 1)
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    weight = float(rank - below)
    return ordered[below] * (1 - weight) + ordered[above] * weight


def _percentiles(call_times: Sequence[float]) -> dict[str, float]:
    return {"call_p50_s": percentile(call_times, 0.5), "call_p95_s": percentile(call_times, 0.95)}


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)
