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

import difflib
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jiwer
from rapidfuzz.distance import Levenshtein

if TYPE_CHECKING:  # pandas is imported lazily so that importing this module (runner --help) is fast
    import pandas as pd

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
    measure: Callable[..., float], prediction: str | None, reference: Reference
) -> float:
    pred = normalize(prediction)
    # jiwer has no sensible answer for an empty reference (older versions raise, 4.x returns
    # the insertion count), so define it: nothing expected and nothing said is perfect.
    rates = [
        float(measure(reference=ref, hypothesis=pred)) if ref else float(bool(pred))
        for ref in _refs(reference)
    ]
    return min(rates)


def cer(prediction: str | None, reference: Reference) -> float:
    """Character error rate, (S + D + I) / len(reference); can exceed 1."""
    return _error_rate(jiwer.cer, prediction, reference)


def wer(prediction: str | None, reference: Reference) -> float:
    """Word error rate on whitespace-separated words; can exceed 1."""
    return _error_rate(jiwer.wer, prediction, reference)


METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "anls": anls,
    "cer": cer,
    "wer": wer,
}


def validate_names(names: Sequence[str]) -> None:
    """Raise ``ValueError`` for the first unknown metric name, suggesting the closest valid one."""
    for name in names:
        if name not in METRICS:
            close = difflib.get_close_matches(str(name).lower(), METRICS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown metric {name!r}.{hint} Valid metrics: {', '.join(sorted(METRICS))}."
            )


def score(
    prediction: str | None, reference: Reference | None, names: Sequence[str]
) -> dict[str, float]:
    """Score one sample with each named metric; ``{}`` when there is no reference."""
    validate_names(names)  # even without a reference, so a config typo fails on any sample
    missing = reference is None or (isinstance(reference, float) and math.isnan(reference))
    if missing or (not isinstance(reference, str) and len(reference) == 0):
        return {}
    return {name: METRICS[name](prediction, reference) for name in names}


def summarize(frame: pd.DataFrame, names: Sequence[str], by: Sequence[str] = ()) -> pd.DataFrame:
    """Mean of each metric column, overall (one row) or per group of the ``by`` columns.

    Columns: the group columns used, ``n`` (rows), ``n_scored`` (rows with at least one metric
    value, i.e. with a reference), then one mean per name. Missing values are left out of a
    mean; a metric column absent from ``frame`` gives NaN. Group columns that are absent or
    entirely empty (NaN/blank) are skipped; rows with a missing group value form their own group.
    """
    import pandas as pd

    names = list(names)
    keys = [c for c in by if c in frame.columns and not _blank(frame[c])]
    data = frame.reindex(columns=[*keys, *names])
    data[names] = data[names].apply(pd.to_numeric, errors="coerce")

    def row(group: pd.DataFrame) -> dict[str, float]:
        scored = int(group[names].notna().any(axis=1).sum()) if names else 0
        return {"n": len(group), "n_scored": scored, **{m: group[m].mean() for m in names}}

    columns = [*keys, "n", "n_scored", *names]
    if not keys:
        return pd.DataFrame([row(data)], columns=columns)
    groups = data.groupby(keys, dropna=False, sort=True)
    return pd.DataFrame(
        [{**dict(zip(keys, k, strict=True)), **row(g)} for k, g in groups], columns=columns
    )


def _blank(column: pd.Series) -> bool:
    return bool((column.isna() | column.astype(str).str.strip().eq("")).all())
