"""Metric values checked against hand-computed numbers; no mocks."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest

from runners.metrics import (
    METRICS,
    anls,
    cer,
    exact_match,
    higher_is_better,
    normalize,
    precision_recall_f1,
    score,
    wer,
)
from runners.metrics.summaries import QualitySummary
from tests.support.helpers import REPO_ROOT


def test_precision_recall_f1_and_their_empty_cases() -> None:
    assert precision_recall_f1(2, 4, 8, nothing_is_right=False) == (0.5, 0.25, pytest.approx(1 / 3))
    # Nothing predicted and nothing expected: right for a document's fields, not for a class.
    assert precision_recall_f1(0, 0, 0, nothing_is_right=True) == (1.0, 1.0, 1.0)
    assert precision_recall_f1(0, 0, 0, nothing_is_right=False) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(0, 0, 3, nothing_is_right=True) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(0, 2, 0, nothing_is_right=True) == (0.0, 0.0, 0.0)


def test_error_rates_are_better_lower_and_the_rest_higher() -> None:
    assert [higher_is_better(name) for name in ("cer", "wer", "anls", "exact_match", "bleu")] == [
        False,
        False,
        True,
        True,
        True,
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Hello\t\n  WORLD  ", "hello world"),
        ("$5.00.", "$5.00"),
        ('"$5.00."', "$5.00"),
        ("“Paris”!", "paris"),
        ("  'yes' ,", "yes"),
        ("Total: $5.00.", "total: $5.00"),  # prefixes stay; only edge punctuation goes
        ("-3.5%", "-3.5%"),  # sign and percent are part of the answer
        ("(a)", "(a)"),
        ("U.S.A.", "u.s.a"),
        ("１２３", "123"),  # NFKC: full-width digits
        ("ﬁle", "file"),  # NFKC: ligature
        ("e\u0301", "\u00e9"),  # NFKC composes e + combining acute
        ("a\u00a0b", "a b"),  # NFKC: no-break space
        ("Straße", "strasse"),  # casefold
        ("ИТОГО:  5 руб.", "итого: 5 руб"),
        ("?", "?"),  # punctuation-only answers are kept rather than emptied
        ("", ""),
        (None, ""),
    ],
)
def test_normalize(raw: str | None, expected: str) -> None:
    assert normalize(raw) == expected


def test_exact_match() -> None:
    assert exact_match("  $5.00. ", "$5.00") == 1.0
    assert exact_match("PARIS", "paris") == 1.0
    assert exact_match("Привет", "ПРИВЕТ") == 1.0
    assert exact_match("Total: $5.00.", "$5.00") == 0.0
    assert exact_match("5.00", "$5.00") == 0.0  # "$" is not stripped
    assert exact_match("?", "!") == 0.0
    assert exact_match("", "") == 1.0
    assert exact_match("five", ["5", "Five"]) == 1.0


def test_anls() -> None:
    assert anls("$2,164.88", "$2,164.68") == pytest.approx(1 - 1 / 9)
    assert anls("abxd", "abcd") == pytest.approx(0.75)
    assert anls("ax", "ab") == 0.0  # distance exactly 0.5 is not below the threshold
    assert anls("xyz", "abc") == 0.0
    assert anls("  HELLO   World. ", "hello world") == 1.0
    assert anls("", "") == 1.0
    assert anls("", "abc") == 0.0
    assert anls("abc", "") == 0.0
    assert anls("москва", "Москвы") == pytest.approx(1 - 1 / 6)
    # Several acceptable answers: the best one counts.
    assert anls("$5", ["5 dollars", "$5"]) == 1.0
    assert anls("abxd", ["zzzz", "abcd"]) == pytest.approx(0.75)


def test_cer() -> None:
    assert cer("abxd", "abcd") == pytest.approx(0.25)
    assert cer("ab", "abcdef") == pytest.approx(4 / 6)  # 4 deletions over 6 reference chars
    assert cer("abcdef", "ab") == pytest.approx(2.0)  # 4 insertions over 2: can exceed 1
    assert cer("ABCD.", "abcd") == 0.0
    assert cer("привет", "привод") == pytest.approx(2 / 6)


def test_wer() -> None:
    assert wer("the dog sat down", "the cat sat down") == pytest.approx(0.25)
    assert wer("The  cat sat down.", "the cat sat down") == 0.0
    assert wer("a b c d e", "a") == pytest.approx(4.0)
    assert wer("мама мыла раму", "мама мыла окно") == pytest.approx(1 / 3)


@pytest.mark.parametrize("metric", [cer, wer])
def test_error_rate_edge_cases(metric) -> None:
    assert metric("", "") == 0.0
    assert metric("...", "") == 1.0  # "..." is kept (not emptied), so it is an extra answer
    assert metric("anything", "") == 1.0
    assert metric("", "abc") == 1.0
    assert metric(None, "abc") == 1.0
    assert metric("abc", ["xyz", "abc"]) == 0.0


def test_score() -> None:
    assert score("abxd", "abcd", ["exact_match", "anls", "cer", "wer"]) == pytest.approx(
        {"exact_match": 0.0, "anls": 0.75, "cer": 0.25, "wer": 1.0}
    )
    assert list(score("a", "a", ["wer", "anls"])) == ["wer", "anls"]
    assert {"exact_match", "anls", "cer", "wer"} <= set(METRICS.names())


@pytest.mark.parametrize("reference", [None, math.nan, []])
def test_score_without_reference(reference) -> None:
    assert score("anything", reference, ["anls", "cer"]) == {}


@pytest.mark.parametrize(("typo", "suggestion"), [("anl", "anls"), ("exact-match", "exact_match")])
def test_unknown_metric_suggests_closest(typo: str, suggestion: str) -> None:
    with pytest.raises(ValueError, match=f"Did you mean '{suggestion}'") as info:
        score("a", "a", ["cer", typo])
    registered = "'anls', 'bleu', 'cer', 'docvqa_anls', 'exact_match', 'judge', 'ocrbench"
    assert registered in str(info.value)
    with pytest.raises(ValueError, match=f"Metric '{typo}' is not registered"):
        score("a", None, [typo])  # a typo fails even on samples without ground truth


def test_unknown_metric_without_close_match() -> None:
    with pytest.raises(ValueError, match=r"Metric 'meteor' is not registered\. Registered") as info:
        score("a", "a", ["meteor"])
    assert "Did you mean" not in str(info.value)
    assert "'model_interface.metrics' entry-point group" in str(info.value)


ROWS = [
    (("form", "date"), "2021-01-01", "2021-01-01"),
    (("form", "date"), "2021-01-02", "2021-01-01"),
    (("form", "amount"), "$5.00", "$5.00"),
    (("receipt", "amount"), "$2,164.88", "$2,164.68"),
    (("receipt", "amount"), "no idea", None),  # no ground truth
    (("", "amount"), "7", "7"),  # missing document class
]


def _summary(names: list[str]) -> QualitySummary:
    summary = QualitySummary(names)
    for group, prediction, reference in ROWS:
        summary.add(score(prediction, reference, names), group)
    return summary


def test_summary_overall() -> None:
    row = _summary(["exact_match", "anls"]).overall()
    assert list(row) == ["n", "n_scored", "exact_match", "anls"]
    assert (row["n"], row["n_scored"]) == (6, 5)
    assert row["exact_match"] == pytest.approx(3 / 5)  # the unscored row is not a zero
    assert row["anls"] == pytest.approx((1 + 0.9 + 1 + 8 / 9 + 1) / 5)


def test_summary_grouped() -> None:
    groups = list(_summary(["exact_match"]).groups())
    got = {group: (row["n"], row["n_scored"], row["exact_match"]) for group, row in groups}
    assert got == {
        ("form", "amount"): (1, 1, 1.0),
        ("form", "date"): (2, 2, 0.5),
        ("receipt", "amount"): (2, 1, 0.0),
        ("", "amount"): (1, 1, 1.0),  # rows with a missing group value are kept
    }
    assert [group for group, _ in groups] == sorted(got)


def test_summary_of_a_metric_never_scored() -> None:
    summary = QualitySummary(["anls"])
    assert summary.overall()["n"] == 0 and math.isnan(summary.overall()["anls"])
    summary.add({}, ("a",))
    assert next(summary.groups())[1]["n_scored"] == 0
    assert math.isnan(next(summary.groups())[1]["anls"])
    assert list(QualitySummary(["anls"]).groups()) == []


@pytest.mark.slow
def test_import_does_not_load_pandas() -> None:
    code = "import sys, runners.metrics; assert 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_cer_and_wer_equal_jiwer_on_random_text() -> None:
    """The same numbers VLMHyperBench gets from jiwer, for non-empty references."""
    jiwer = pytest.importorskip("jiwer")
    rng = random.Random(0)
    alphabet = "ab cdé Жж 12,.$-"
    for _ in range(500):
        reference = normalize("".join(rng.choices(alphabet, k=rng.randint(1, 30))))
        prediction = normalize("".join(rng.choices(alphabet, k=rng.randint(0, 30))))
        if not reference:
            continue
        assert cer(prediction, reference) == pytest.approx(jiwer.cer(reference, prediction))
        if prediction:  # jiwer refuses an empty hypothesis for WER in some versions
            assert wer(prediction, reference) == pytest.approx(jiwer.wer(reference, prediction))
