"""The standard benchmarks' scoring rules, checked against cases computed by hand from each
reference scorer's definition (runners/metrics/benchmarks.py names the scorers)."""

from __future__ import annotations

import pytest

from runners.metrics import higher_is_better, score
from runners.metrics.benchmarks import (
    OCRBENCH_FORMULAS,
    docvqa_anls,
    ocrbench_accuracy,
    relaxed_accuracy,
    vqa_accuracy,
    vqa_normalize,
)

FORMULA_ROW = {"question_type": OCRBENCH_FORMULAS}
OTHER_ROW = {"question_type": "Scene Text-centric VQA"}


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Paris", "paris", 1.0),  # lower-cased
        ("  Paris \n", "Paris", 1.0),  # the answer stripped
        ("New  York", "new york", 1.0),  # runs of whitespace are one space
        ("abcdx", "abcde", 0.8),  # 1 edit / 5
        ("abxx", "abcd", 0.5),  # 2 / 4: a similarity of exactly 0.5 counts
        ("abxxx", "abcde", 0.0),  # 3 / 5: similarity 0.4 < 0.5 scores 0
        ("$5.00.", "$5.00", 1 - 1 / 6),  # no punctuation stripped
        ("ax", "  ab  ", 1 - 1 / 6),  # the length is the reference's as given (6), not "ab"'s
        ("strasse", "straße", 1 - 2 / 7),  # ... and upper-cased: "STRASSE" has 7 letters
        ("", "abc", 0.0),  # an empty answer
        (None, "abc", 0.0),  # a failed sample answers nothing
        ("", "", 1.0),  # nothing against nothing: distance 0
        ("12", ["twelve", "12"], 1.0),  # best over the references
        ("abcdx", ["xyz", "abcde"], 0.8),
    ],
)
def test_docvqa_anls_follows_the_docvqa_scorer(prediction, reference, expected) -> None:
    assert docvqa_anls(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("12", "12", 1.0),
        ("12.5", "12", 1.0),  # 0.5 / 12 = 4.2%
        ("13", "12", 0.0),  # 1 / 12 = 8.3%
        ("12.6", "12", 1.0),  # exactly 5%: the tolerance is inclusive
        ("11.4", "12", 1.0),
        ("-10", "-10.4", 1.0),  # 0.4 / 10.4 = 3.8%, signs kept
        ("45%", "0.45", 1.0),  # a percent sign divides by 100
        ("45", "45%", 0.0),  # 45 against 0.45
        ("45%", "45%", 1.0),
        ("5 kg", "5", 0.0),  # a unit makes text: compared as text
        ("1,000", "1000", 0.0),  # so does a thousands separator
        ("1e3", "1000", 1.0),  # what float() reads is a number
        ("Yes", "yes", 1.0),  # text: equal ignoring case
        ("yes.", "yes", 0.0),  # no punctuation stripped, unlike exact_match
        ("0", "0", 1.0),
        ("0.0", "0", 0.0),  # a zero reference is compared as text
        ("", "12", 0.0),
        ("", "", 1.0),  # an empty answer to an empty reference
        (None, "3", 0.0),  # a failed sample answers nothing
        (" 12\n", "12", 1.0),  # whitespace around the answer is stripped
        ("Ten", ["10", "ten"], 1.0),  # best over the references
    ],
)
def test_relaxed_accuracy_follows_chartqa(prediction, reference, expected) -> None:
    assert relaxed_accuracy(prediction, reference) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "row", "expected"),
    [
        ("The word is HELLO.", ["hello"], OTHER_ROW, 1.0),  # contained, case ignored
        ("hel lo", ["hello"], OTHER_ROW, 0.0),  # spaces count outside formulas
        ("ＨＥＬＬＯ", ["hello"], OTHER_ROW, 1.0),  # full-width letters folded
        ("line one\nline two", ["one line"], OTHER_ROW, 1.0),  # a newline is a space
        ("3 apples", ["three", "3"], OTHER_ROW, 1.0),  # any of the answers
        ("", ["a"], OTHER_ROW, 0.0),  # an empty answer contains nothing
        (None, ["a"], OTHER_ROW, 0.0),
        ("anything", [""], OTHER_ROW, 1.0),  # the scorer's rule: "" is in every answer
        (" x ^ { 2 } ", ["x^{2}"], FORMULA_ROW, 1.0),  # formulas: spaces removed
        ("x\n+1", ["x + 1"], FORMULA_ROW, 1.0),  # ... newlines too
        ("X^{2}", ["x^{2}"], FORMULA_ROW, 0.0),  # ... and case kept
        ("X^{2}", ["x^{2}"], OTHER_ROW, 1.0),  # the same answer elsewhere: case ignored
        (" x ^ { 2 } ", ["x^{2}"], OTHER_ROW, 0.0),  # ... spaces kept
        ("X^{2}", ["x^{2}"], None, 1.0),  # no row: the general rule
    ],
)
def test_ocrbench_accuracy_follows_its_category_rules(prediction, reference, row, expected) -> None:
    assert ocrbench_accuracy(prediction, reference, row=row) == expected


def test_a_metric_that_takes_the_row_gets_it_through_score() -> None:
    assert score("X^{2}", ["x^{2}"], ["ocrbench_accuracy"], FORMULA_ROW) == {
        "ocrbench_accuracy": 0.0
    }
    assert score("X^{2}", ["x^{2}"], ["ocrbench_accuracy", "exact_match"], OTHER_ROW) == {
        "ocrbench_accuracy": 1.0,
        "exact_match": 1.0,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Two dogs.", "2 dogs"),  # number words, articles, the final period
        ("1,000", "1000"),  # commas dropped
        ("(hello) world!", "hello world"),  # marks touching a space are removed
        ("a-b c", "b c"),  # a mark between letters is a space ("a" is then an article)
        ("Coca-Cola", "coca cola"),
        ("3.5 ft.", "3.5 ft"),  # a period before a digit stays
        ("it's here", "it 's here"),
        ("dont know", "don't know"),  # contractions get their apostrophe
        ("what?", "what"),
        ("  Yes\n", "yes"),
    ],
)
def test_vqa_normalize_follows_the_official_answer_processor(text, expected) -> None:
    assert vqa_normalize(text) == expected


def _answers(matching: int, answer: str = "2", other: str = "3") -> list[str]:
    return [answer] * matching + [other] * (10 - matching)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("two", _answers(10), 1.0),  # normalised alike: 9 matches in every subset
        ("2", _answers(4), 1.0),  # every subset of nine holds at least 3 matches
        ("2", _answers(3), 0.9),  # 7 subsets hold 3 (1), 3 hold 2 (2/3): (7 + 2) / 10
        ("2", _answers(2), 0.6),  # 8 subsets hold 2 (2/3), 2 hold 1 (1/3): 18/30
        ("2", _answers(1), 0.3),  # 9 subsets hold 1 (1/3), 1 holds none
        ("2", _answers(0), 0.0),
        ("", _answers(10), 0.0),
        (None, _answers(10), 0.0),
        ("The cat.", _answers(3, "cat"), 0.9),  # both sides normalised
        ("Coca-Cola", _answers(10, "coca cola"), 1.0),
        ("ten", "10", 1.0),  # one answer: 1 when it matches
        ("nine", "10", 0.0),
    ],
)
def test_vqa_accuracy_averages_the_ten_leave_one_out_subsets(prediction, reference, expected):
    assert vqa_accuracy(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    "name", ["docvqa_anls", "relaxed_accuracy", "ocrbench_accuracy", "vqa_accuracy"]
)
def test_benchmark_metrics_are_registered_higher_is_better(name: str) -> None:
    assert higher_is_better(name)
    assert set(score("12", ["12"], [name])) == {name}
