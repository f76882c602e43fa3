"""Classification: reading a label from an answer, accuracy, macro F1 and the confusion
matrix against values computed by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from runners.datasets import Sample
from runners.run import RunnerError, run_experiment
from runners.tasks.classification import UNPARSEABLE, ClassificationTask, read_label
from tests.support.helpers import error_lines, make_config, read_predictions, run_cli, write_jsonl

LABELS = ["invoice", "passport", "snils"]


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("invoice", "invoice"),
        ("  Passport. ", "passport"),
        ('"snils"', "snils"),  # a constrained answer: a JSON string
        ("This page is a passport.", "passport"),
        ("It is either an invoice or a passport", UNPARSEABLE),  # names two
        ("a passports list", UNPARSEABLE),  # not the whole word
        ("a receipt", UNPARSEABLE),
        ("", UNPARSEABLE),
    ],
)
def test_reading_a_label(answer: str, label: str) -> None:
    assert read_label(answer, LABELS) == label


def test_accuracy_macro_f1_and_the_confusion_matrix(model_cache, tmp_path) -> None:
    # references and answers (the echo model answers its prompt, here the answer to give):
    cases = [
        ("invoice", "invoice"),
        ("invoice", "invoice"),
        ("invoice", "passport"),
        ("passport", "passport"),
        ("passport", "I cannot tell"),
        ("snils", "snils"),
    ]
    row = classify(model_cache, tmp_path, cases)
    # invoice: P = 2/2, R = 2/3, F1 = 0.8; passport: P = 1/2, R = 1/2, F1 = 0.5; snils: 1, 1, 1
    assert row["accuracy"] == pytest.approx(4 / 6)
    assert row["macro_f1"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert row[UNPARSEABLE] == pytest.approx(1 / 6)
    matrix = pd.read_csv(tmp_path / "run" / "confusion_matrix.csv").set_index("reference")
    assert matrix.loc["invoice"].tolist() == [2, 1, 0, 0]
    assert matrix.loc["passport"].tolist() == [0, 1, 0, 1]
    assert list(matrix.columns) == ["invoice", "passport", "snils", UNPARSEABLE]
    by_label = pd.read_csv(tmp_path / "run" / "metrics_by_label.csv").set_index("label")
    assert by_label.loc["invoice", "recall"] == pytest.approx(2 / 3)
    assert by_label.loc["passport", "support"] == 2


def test_labels_come_from_the_answers_or_the_config(model_cache, tmp_path) -> None:
    task = ClassificationTask(metric_names=[])
    for index, label in enumerate(["snils", "invoice", "snils"]):
        task.check(Sample(str(index), index, ("a.png",), "Which?", label))
    assert task.labels == ["invoice", "snils"]
    request = task.request(Sample("0", 0, ("a.png",), "Which?", "snils"), [])
    assert request.prompt == "Which?\nAnswer with exactly one of: invoice, snils."
    assert request.response_format is None
    constrained = ClassificationTask(metric_names=[], labels=["a", "b"], constrained=True)
    assert constrained.request(Sample("0", 0, ("a.png",), "Q", "a"), []).response_format == {
        "type": "string",
        "enum": ["a", "b"],
    }
    with pytest.raises(ValueError, match=r"class 'c', which is not among task\.labels"):
        constrained.check(Sample("0", 0, ("a.png",), "Q", "c"))


@pytest.mark.slow
def test_the_sample_pages_classified_with_a_constraint_always_name_a_label(model_cache, tmp_path):
    cfg = make_config(
        model_cache,
        "model=tiny_qwen2_vl",
        "task=classification",
        "dataset=sample_docs_classes",
        "task.constrained=true",
    )
    row = run_experiment(cfg, tmp_path / "run")
    assert row["n_samples"] == 24 and row[UNPARSEABLE] == 0.0
    labels = {"id_card", "invoice", "passport", "receipt", "snils"}
    assert set(pd.read_csv(tmp_path / "run" / "predictions.csv")["predicted_label"]) <= labels


def test_a_fields_answer_under_classification_is_refused(model_cache, tmp_path) -> None:
    cfg = make_config(model_cache, "model=dummy", "task=classification", "dataset=sample_docs_kie")
    with pytest.raises(RunnerError, match="task=classification needs one class name"):
        run_experiment(cfg, tmp_path / "run")


def test_an_empty_answer_is_unparseable_even_beside_an_empty_label() -> None:
    # An empty label would match an empty answer, and be named by every answer as a whole word.
    assert read_label("", ["", "invoice"]) == UNPARSEABLE
    assert read_label(" \n ", ["", "invoice"]) == UNPARSEABLE
    assert read_label('"  "', ["invoice"]) == UNPARSEABLE  # a constrained empty answer
    assert read_label("an invoice", ["", "invoice"]) == "invoice"


def classify(model_cache, tmp_path, cases, *overrides: str) -> dict:
    """A run of the echo model over (reference, answer) cases: each answer is its prompt."""
    root = write_jsonl(
        tmp_path / "data",
        [
            {"id": str(index), "image": f"{index}.png", "prompt": answer, "answer": truth}
            for index, (truth, answer) in enumerate(cases)
        ],
    )
    cfg = make_config(
        model_cache,
        "model=custom",
        "model.class_path=tests.support.wrappers:PromptEcho",
        "model.init_params.model_name=echo",
        "task=classification",
        "dataset=jsonl",
        f"dataset.root={root}",
        '+task.prompt_template="{prompt}"',
        *overrides,
    )
    return run_experiment(cfg, tmp_path / "run")


@pytest.mark.parametrize(
    ("overrides", "invoice", "passport"),
    [
        ((), "Invoice", "passport"),  # the first spelling in the dataset names the class
        (("task.labels=[INVOICE,Passport]",), "INVOICE", "Passport"),  # task.labels' spelling
    ],
)
def test_spellings_of_one_label_are_one_class(
    model_cache, tmp_path, overrides, invoice, passport
) -> None:
    cases = [
        ("Invoice", "invoice"),
        (" invoice ", "INVOICE"),
        ("passport", "Passport."),
        ("PASSPORT", "an invoice"),
        ("invoice", " "),  # an empty answer
    ]
    row = classify(model_cache, tmp_path, cases, *overrides)
    assert row["accuracy"] == pytest.approx(3 / 5)
    assert row[UNPARSEABLE] == pytest.approx(1 / 5)
    predictions = read_predictions(tmp_path / "run")
    assert predictions["predicted_label"].tolist() == [
        invoice,
        invoice,
        passport,
        invoice,
        UNPARSEABLE,
    ]
    assert predictions["correct"].astype(float).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    matrix = pd.read_csv(tmp_path / "run" / "confusion_matrix.csv").set_index("reference")
    assert list(matrix.index) == [invoice, passport]
    assert list(matrix.columns) == [invoice, passport, UNPARSEABLE]
    assert matrix.loc[invoice].tolist() == [2, 0, 1]
    assert matrix.loc[passport].tolist() == [1, 1, 0]
    by_label = pd.read_csv(tmp_path / "run" / "metrics_by_label.csv").set_index("label")
    assert by_label["support"].to_dict() == {invoice: 3, passport: 2}
    # invoice: P = 2/3, R = 2/3; passport: P = 1, R = 1/2, F1 = 2/3
    assert row["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_the_prompt_lists_each_class_once() -> None:
    task = ClassificationTask(metric_names=[], constrained=True)
    for index, label in enumerate(["Invoice", "snils", " invoice ", "INVOICE"]):
        task.check(Sample(str(index), index, ("a.png",), "Which?", label))
    request = task.request(Sample("0", 0, ("a.png",), "Which?", "snils"), [])
    assert request.prompt == "Which?\nAnswer with exactly one of: Invoice, snils."
    assert request.response_format == {"type": "string", "enum": ["Invoice", "snils"]}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            ["Invoice", "passport", " invoice."],
            "task.labels holds 'Invoice' and ' invoice.', one label spelt twice (labels are "
            "compared ignoring case, spacing and end punctuation); keep one",
        ),
        (["invoice", " "], "task.labels holds an empty label ' '; remove it"),
        (["invoice", "Unparseable"], "'unparseable' is the class of unreadable answers; rename it"),
        ("invoice", "task.labels must be a list, e.g. task.labels=[invoice,other]; got 'invoice'"),
    ],
)
def test_task_labels_that_name_no_class_or_one_twice_are_refused(labels, message) -> None:
    with pytest.raises(ValueError) as refused:
        ClassificationTask(metric_names=[], labels=labels)
    assert str(refused.value) == message


def test_a_class_in_the_data_outside_task_labels_is_found_normalised() -> None:
    task = ClassificationTask(metric_names=[], labels=["Invoice", "Passport"])
    task.check(Sample("0", 0, ("a.png",), "Q", " passport."))  # the same class
    with pytest.raises(ValueError) as refused:
        task.check(Sample("1", 1, ("a.png",), "Q", "passports"))
    assert str(refused.value) == (
        "sample '1' is of class 'passports', which is not among task.labels ['Invoice', 'Passport']"
    )


@pytest.mark.slow
def test_an_empty_class_in_the_data_is_refused_and_a_missing_one_is_unlabelled(
    model_cache, tmp_path
) -> None:
    rows = [
        {"id": "a", "image": "a.png", "prompt": "invoice", "answer": "invoice"},
        {"id": "b", "image": "b.png", "prompt": "passport", "answer": "passport"},
        {"id": "c", "image": "c.png", "prompt": "invoice"},  # no answer: unlabelled
        {"id": "d", "image": "d.png", "prompt": "invoice", "answer": None},
    ]
    root = write_jsonl(tmp_path / "labelled", rows)
    common = (
        "model=custom",
        "model.class_path=tests.support.wrappers:PromptEcho",
        "model.init_params.model_name=echo",
        "task=classification",
        "dataset=jsonl",
        '+task.prompt_template="{prompt}"',  # the echo model answers the dataset's prompt
    )
    row = run_experiment(
        make_config(model_cache, *common, f"dataset.root={root}"), tmp_path / "run"
    )
    assert row["accuracy"] == 1.0  # over the two labelled samples
    predictions = read_predictions(tmp_path / "run")
    assert predictions["correct"].tolist() == ["1.0", "1.0", "", ""]
    assert predictions["predicted_label"].tolist() == ["invoice", "passport", "invoice", "invoice"]
    empty = write_jsonl(
        tmp_path / "empty", [*rows, {"id": "e", "image": "e.png", "prompt": "x", "answer": "  "}]
    )
    result = run_cli(
        *common, f"dataset.root={empty}", cwd=tmp_path, cache_dir=model_cache, timeout=60
    )
    assert result.returncode == 2, result.stdout[-2000:]
    (line,) = error_lines(result.stdout)
    assert line.endswith(
        "sample 'e' has an empty class '  '; write its class in its answer, "
        "or leave it unlabelled (no answer column, or a null answer in JSONL)"
    )


def test_a_class_named_like_unreadable_answers_is_refused() -> None:
    task = ClassificationTask(metric_names=[])
    with pytest.raises(ValueError) as refused:
        task.check(Sample("7", 7, ("a.png",), "Q", "Unparseable"))
    assert str(refused.value) == (
        "sample '7' is of class 'Unparseable', the name of unreadable answers; rename the class"
    )
