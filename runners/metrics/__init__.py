"""Per-sample answer-quality metrics for document VQA, picked by name from config.

Every metric here compares ``normalize(prediction)`` with ``normalize(reference)`` (the
standard benchmarks' own rules, which do not, are in :mod:`runners.metrics.benchmarks`):

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    return [normalize(str(r)) for r in reference_list(reference)]


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


def reference_list(reference: Reference) -> list[str]:
    refs = [reference] if isinstance(reference, str) else list(reference)
    if not refs:
        raise ValueError("empty list of references")
    return refs


def judge(
    prediction: str | None, reference: Reference, *, row: Mapping[str, Any] | None = None
) -> float | None:
    """The judge model's score of the answer, 0 to 1 (``judge=...``: the verdict the run asked
    for, in the row; runners/execution/judge.py). None where the verdict was no score
    (``judge_error``): such a sample counts in no mean."""
    value = (row or {}).get("judge")
    return None if value in (None, "") else float(value)


judge.takes_row = True  # type: ignore[attr-defined]


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
# (prediction, reference) -> float, reference one answer or several acceptable ones (with a
# keyword ``row`` too, if it says ``takes_row = True``; see score()), or a CorpusMetric. A
# package adds its own under the "model_interface.metrics" entry-point group.
METRICS: Registry[Callable[[str | None, Reference], float] | CorpusMetric] = Registry(
    kind="metric",
    group="model_interface.metrics",
    builtins={
        **{
            name: f"runners.metrics:{name}"
            for name in ("exact_match", "anls", "cer", "wer", "judge")
        },
        **{
            name: f"runners.metrics.benchmarks:{name}"
            for name in ("docvqa_anls", "relaxed_accuracy", "ocrbench_accuracy", "vqa_accuracy")
        },
        "bleu": "runners.metrics:bleu",
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
    prediction: str | None,
    reference: Reference | None,
    names: Sequence[str],
    row: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Score one sample with each named metric; ``{}`` when there is no reference. A metric
    whose rule depends on the sample (``takes_row = True``, e.g. OCRBench's category) is given
    its ``row`` of predictions.csv too."""
    functions = metric_functions(names)  # even without a reference: a typo fails on any sample
    row_names = [name for name in names if not is_corpus_metric(name)]
    missing = reference is None or (isinstance(reference, float) and math.isnan(reference))
    if missing or (not isinstance(reference, str) and len(reference) == 0):
        return {}
    return {
        name: (
            function(prediction, reference, row=row)
            if getattr(function, "takes_row", False)
            else function(prediction, reference)
        )
        for name, function in zip(row_names, functions, strict=True)
    }
