"""Classification: reading a label from an answer, accuracy, macro F1 and the confusion
matrix against values computed by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from runners.run import RunnerError, run_experiment
from runners.tasks.classification import UNPARSEABLE, ClassificationTask, read_label
from tests.helpers import make_config, write_jsonl

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
    root = write_jsonl(tmp_path / "data", [
        {"id": str(index), "image": f"{index}.png", "prompt": answer, "answer": truth}
        for index, (truth, answer) in enumerate(cases)
    ])  # fmt: skip
    cfg = make_config(model_cache, "model=custom", "model.class_path=tests.wrappers:PromptEcho",
                      "model.init_params.model_name=echo", "task=classification",
                      "dataset=jsonl", f"dataset.root={root}",
                      '+task.prompt_template="{prompt}"')  # fmt: skip
    row = run_experiment(cfg, tmp_path / "run")
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
    from runners.datasets import Sample

    for index, label in enumerate(["snils", "invoice", "snils"]):
        task.check(Sample(str(index), index, ("a.png",), "Which?", label))
    assert task.labels == ["invoice", "snils"]
    request = task.request(Sample("0", 0, ("a.png",), "Which?", "snils"), [])
    assert request.prompt == "Which?\nAnswer with exactly one of: invoice, snils."
    assert request.response_format is None
    constrained = ClassificationTask(metric_names=[], labels=["a", "b"], constrained=True)
    assert constrained.request(Sample("0", 0, ("a.png",), "Q", "a"), []).response_format == {
        "type": "string", "enum": ["a", "b"],
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"class 'c', which is not among task\.labels"):
        constrained.check(Sample("0", 0, ("a.png",), "Q", "c"))


def test_the_sample_pages_classified_with_a_constraint_always_name_a_label(model_cache, tmp_path):
    cfg = make_config(model_cache, "model=tiny_qwen2_vl", "task=classification",
                      "dataset=sample_docs_classes", "task.constrained=true")  # fmt: skip
    row = run_experiment(cfg, tmp_path / "run")
    assert row["n_samples"] == 24 and row[UNPARSEABLE] == 0.0
    labels = {"id_card", "invoice", "passport", "receipt", "snils"}
    assert set(pd.read_csv(tmp_path / "run" / "predictions.csv")["predicted_label"]) <= labels


def test_a_fields_answer_under_classification_is_refused(model_cache, tmp_path) -> None:
    cfg = make_config(model_cache, "model=dummy", "task=classification", "dataset=sample_docs_kie")
    with pytest.raises(RunnerError, match="task=classification needs one class name"):
        run_experiment(cfg, tmp_path / "run")
