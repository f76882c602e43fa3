"""A run's figures summed up: mean quality overall and per group, corpus error rates, and the
tallies of time, tokens and failures behind metrics.csv.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from rapidfuzz.distance import Levenshtein

from runners.metrics import Reference
from runners.rundir.files import cell_number


@dataclass(frozen=True)
class Pricing:
    """Prices per million tokens."""

    input_per_million: float
    output_per_million: float

    @classmethod
    def of(cls, model_config: Mapping[str, Any]) -> Pricing | None:
        """The ``pricing`` of a model config, checked; None where it has none."""
        given = model_config.get("pricing")
        if not given:
            return None
        known = {"input_per_million", "output_per_million"}
        if not isinstance(given, Mapping) or set(given) - known:
            raise ValueError(
                "model.pricing must be {input_per_million: <price>, output_per_million: "
                f"<price>}} (per million tokens), got {given!r}"
            )
        prices = {key: given.get(key) or 0 for key in known}
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for v in prices.values()
        )
        if not numbers:
            raise ValueError(f"model.pricing prices must be numbers >= 0, got {dict(given)}")
        return cls(**{key: float(value) for key, value in prices.items()})

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (
            prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        ) / 1e6


@dataclass
class Spending:
    """Tokens and cost of the answers so far (``pricing``: the model config's, if any)."""

    pricing: Pricing | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    uncounted: int = 0  # answers the model gave no token counts for

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Count rows of predictions.csv (as written, or read back as text)."""
        for row in rows:
            completion = cell_number(row.get("completion_tokens"))
            self.prompt_tokens += int(cell_number(row.get("prompt_tokens")) or 0)
            self.completion_tokens += int(completion or 0)
            # A failed request answered nothing; an answer without counts spent the unknown.
            self.uncounted += completion is None and not row.get("error")

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float | None:
        """The cost at the model's prices; None (unknown) without prices or with answers
        uncounted."""
        if self.pricing is None or self.uncounted:
            return None
        return self.pricing.cost(self.prompt_tokens, self.completion_tokens)


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

    def __init__(self, pricing: Pricing | None = None) -> None:
        self.n_samples = self.n_input_errors = self.n_model_errors = 0
        self.model_s = 0.0
        self.spent = Spending(pricing)  # tokens, and their cost at the model's prices
        self.reasoning_tokens = self.n_truncated = 0
        self.call_times = array("d")  # one float per sample that reached the model

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one row of predictions.csv."""
        self.n_samples += 1
        batch_size = cell_number(row["batch_size"])
        if batch_size is None:  # answers made elsewhere: nothing known of how
            self.n_model_errors += bool(row["error"])
        elif batch_size == 0:
            self.n_input_errors += 1
        else:
            call_s = cell_number(row["call_s"]) or 0.0
            self.call_times.append(call_s)
            self.model_s += call_s / batch_size
            self.n_model_errors += bool(row["error"])
        self.spent.add([row])
        # (Rows of runs made before these columns have none.)
        self.reasoning_tokens += int(cell_number(row.get("reasoning_tokens")) or 0)
        self.n_truncated += row.get("truncated") in (True, "True")

    def summary(self) -> dict[str, Any]:
        """Counts, timing and token figures."""
        n_errors = self.n_input_errors + self.n_model_errors
        reached, model_s = len(self.call_times), self.model_s
        cost = self.spent.cost if self.n_samples else None
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
            "prompt_tokens": self.spent.prompt_tokens,
            "completion_tokens": self.spent.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            # Answers whose reasoning never ended within max_new_tokens: empty, scored so.
            "n_truncated": self.n_truncated,
            "tokens_per_s": self.spent.completion_tokens / model_s if model_s else math.nan,
            "cost": cost,  # None: unknown (no prices, or answers without token counts)
            "cost_per_sample": cost / self.n_samples if cost is not None else None,
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
