"""Key information extraction: answers parsed as JSON, every metric against values computed by
hand, the ground-truth layouts, and constrained decoding on a real tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from runners.datasets import Dataset, DatasetError
from runners.records import flatten
from runners.run import RunnerError, run_experiment
from runners.tasks.kie import (
    KIETask,
    derived_schema,
    longest_answer_bytes,
    parse_json_answer,
    with_string_limit,
)
from tests.support.helpers import make_config, read_metrics, read_predictions, write_jsonl

REFERENCE = {"Фамилия": "ОСИПОВ", "Номер": "353-721-310 54", "Дата": "01.02.2003"}
PERFECT = json.dumps(REFERENCE, ensure_ascii=False)


def kie(**options) -> KIETask:
    return KIETask(metric_names=[], **options)


# --- reading an answer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"a": "1"}', {"a": "1"}),
        ('Here it is:\n```json\n{"a": "1"}\n```\nAnything else?', {"a": "1"}),
        ('```\n{"a": "1"}\n```', {"a": "1"}),
        ('The fields are {"a": "}{", "b": {"c": "2"}} as asked.', {"a": "}{", "b": {"c": "2"}}),
        ('{"a": "say \\"hi\\" {"} trailing', {"a": 'say "hi" {'}),
        ('["a", "b"]', None),  # JSON, but not an object of fields
        ("no JSON here", None),
        ('{"a": "1",}', None),
        ("", None),
    ],
)
def test_the_json_object_in_an_answer(answer: str, expected) -> None:
    assert parse_json_answer(answer) == expected


def test_key_paths_of_nested_values() -> None:
    value = {"a": {"b": "x"}, "c": ["1", {"d": 2}], "e": None}
    assert flatten(value, lists=True) == {"a.b": "x", "c[0]": "1", "c[1].d": 2, "e": None}
    assert flatten(value) == {"a.b": "x", "c": value["c"], "e": None}


# --- every metric, by hand -------------------------------------------------------------------


def test_a_perfect_answer() -> None:
    scores = kie().score(PERFECT, REFERENCE)
    assert {key: value for key, value in scores.items() if key != "details"} == {
        "json_valid": 1.0,
        "schema_valid": 1.0,
        "field_exact_match": 1.0,
        "field_anls": 1.0,
        "field_cer": 0.0,
        "field_precision": 1.0,
        "field_recall": 1.0,
        "field_f1": 1.0,
        "all_fields_correct": 1.0,
    }


def test_normalisation_forgives_case_and_edge_punctuation() -> None:
    answer = '{"Фамилия": "осипов.", "Номер": " 353-721-310 54 ", "Дата": "01.02.2003"}'
    scores = kie().score(answer, REFERENCE)
    assert scores["field_exact_match"] == 1.0 and scores["all_fields_correct"] == 1.0
    assert scores["schema_valid"] == 1.0


def test_a_field_of_the_wrong_type() -> None:
    # "Номер" as a number: the schema wants a string. Compared as text: "35372131054" against
    # "353-721-310 54" needs 3 insertions over 14 characters.
    answer = '{"Фамилия": "ОСИПОВ", "Номер": 35372131054, "Дата": "01.02.2003"}'
    scores = kie().score(answer, REFERENCE)
    assert scores["json_valid"] == 1.0 and scores["schema_valid"] == 0.0
    assert scores["field_exact_match"] == pytest.approx(2 / 3)
    assert scores["field_anls"] == pytest.approx((1 + (1 - 3 / 14) + 1) / 3)
    assert scores["field_cer"] == pytest.approx((3 / 14) / 3)
    assert (scores["field_precision"], scores["field_recall"]) == (pytest.approx(2 / 3),) * 2
    assert scores["all_fields_correct"] == 0.0


def test_a_missing_field() -> None:
    answer = '{"Фамилия": "ОСИПОВ", "Номер": "353-721-310 54"}'
    scores = kie().score(answer, REFERENCE)
    assert scores["schema_valid"] == 0.0  # every field is required
    # the missing date is compared as an empty answer: ANLS 0, CER 1
    assert scores["field_exact_match"] == pytest.approx(2 / 3)
    assert scores["field_anls"] == pytest.approx(2 / 3)
    assert scores["field_cer"] == pytest.approx(1 / 3)
    assert scores["field_precision"] == 1.0  # 2 right of 2 given
    assert scores["field_recall"] == pytest.approx(2 / 3)  # 2 right of 3 expected
    assert scores["field_f1"] == pytest.approx(0.8)
    statuses = {field["field"]: field["status"] for field in scores["details"]}
    assert statuses == {"Фамилия": "match", "Номер": "match", "Дата": "missing"}


def test_an_extra_field() -> None:
    answer = json.dumps({**REFERENCE, "Пол": "М"}, ensure_ascii=False)
    scores = kie().score(answer, REFERENCE)
    assert scores["schema_valid"] == 0.0  # no other fields allowed
    assert scores["field_exact_match"] == 1.0 and scores["all_fields_correct"] == 1.0
    assert scores["field_precision"] == pytest.approx(3 / 4)
    assert scores["field_recall"] == 1.0
    assert scores["field_f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert scores["details"][-1]["status"] == "extra"


def test_an_answer_that_is_not_json() -> None:
    scores = kie().score("Фамилия: ОСИПОВ, Номер: 353-721-310 54", REFERENCE)
    assert {key: value for key, value in scores.items() if key != "details"} == {
        "json_valid": 0.0,
        "schema_valid": 0.0,
        "field_exact_match": 0.0,
        "field_anls": 0.0,
        "field_cer": 1.0,
        "field_precision": 0.0,
        "field_recall": 0.0,
        "field_f1": 0.0,
        "all_fields_correct": 0.0,
    }


def test_a_fenced_answer_counts_as_valid() -> None:
    scores = kie().score(f"Sure!\n```json\n{PERFECT}\n```", REFERENCE)
    assert scores["json_valid"] == scores["schema_valid"] == scores["all_fields_correct"] == 1.0


def test_a_sample_without_ground_truth_is_not_scored() -> None:
    assert kie().score(PERFECT, None) == {}


# --- the schema and the request --------------------------------------------------------------


def test_the_schema_derived_from_the_ground_truth_and_its_limits() -> None:
    schema = derived_schema({"a": "x", "n": 3, "nested": {"b": "y"}})
    assert schema == {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "n": {"type": "number"},
            "nested": {
                "type": "object",
                "properties": {"b": {"type": "string"}},
                "required": ["b"],
                "additionalProperties": False,
            },
        },
        "required": ["a", "n", "nested"],
        "additionalProperties": False,
    }
    limited = with_string_limit(schema, 5)
    assert limited["properties"]["a"]["maxLength"] == 5
    assert limited["properties"]["nested"]["properties"]["b"]["maxLength"] == 5
    # {"a": "5 chars", "n": 32 bytes, "nested": {"b": "5 chars"}}: brackets, keys, ": " and
    # ", " separators, and 6 bytes per character at most (a \uXXXX escape).
    inner = 2 + (3 + 4 + 2 + 30)
    assert longest_answer_bytes(limited) == 2 + (3 + 4 + 32) + (3 + 4 + 2 + 30) + (8 + 4 + inner)
    assert longest_answer_bytes({"type": "array"}) is None


def test_the_request_lists_the_fields_and_carries_the_schema(tmp_path: Path) -> None:
    from runners.datasets import Sample

    sample = Sample("p1", 0, ("images/p1.png",), "", REFERENCE)
    request = kie(max_field_chars=20).request(sample, [])
    assert request.prompt.startswith(
        "Extract these fields from the document: Фамилия, Номер, Дата."
    )
    assert request.response_format["properties"]["Номер"] == {"type": "string", "maxLength": 20}
    assert request.generation == {"max_new_tokens": longest_answer_bytes(request.response_format)}
    free = kie(constrained=False).request(sample, [])
    assert free.response_format is None and free.generation is None

    schema_file = tmp_path / "schema.json"
    schema_file.write_text(
        json.dumps({"type": "object", "properties": {"Номер": {"type": "string"}}})
    )
    given = kie(schema_file=str(schema_file), prompt_template="Поля: {fields}").request(sample, [])
    assert given.prompt == "Поля: Номер"
    assert (
        kie(schema_file=str(schema_file)).score('{"Номер": "1", "x": 2}', REFERENCE)["schema_valid"]
        == 1.0
    )  # the given schema allows other fields


# --- the ground-truth layouts ----------------------------------------------------------------


def test_flat_and_nested_ground_truth_beside_the_images(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "kie"
    (root / "images").mkdir(parents=True)
    (root / "jsons").mkdir()
    for page in ("a", "b"):
        Image.new("RGB", (8, 8)).save(root / "images" / f"{page}.jpg")
    (root / "jsons" / "a.json").write_text('{"Фамилия": "ОСИПОВ"}', encoding="utf-8")
    nested = {"fields": {"Номер снилса": {"value": "353-721-310 54", "bboxes": [[1, 2, 3, 4]]}}}
    (root / "jsons" / "b.json").write_text(json.dumps(nested, ensure_ascii=False), encoding="utf-8")
    dataset = Dataset.from_config({"format": "kie_json", "root": str(root)})
    a, b = dataset.samples()
    assert (a.id, a.images, a.reference) == ("a", ("images/a.jpg",), {"Фамилия": "ОСИПОВ"})
    assert b.reference == {"Номер снилса": "353-721-310 54"}

    (root / "jsons" / "c.json").write_text("{}")
    with pytest.raises(
        DatasetError, match=r"c\.json has no image beside it; looked for images/c\.png"
    ):
        dataset.check()
    (root / "jsons" / "c.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"c\.json: bad JSON"):
        dataset.check()


def test_jsonl_object_answers_run_as_field_extraction(model_cache, tmp_path) -> None:
    root = write_jsonl(
        tmp_path / "data",
        [
            {"id": "d1", "image": "d1.png", "prompt": "", "answer": {"Итого": "1 250,00"}},
            {"id": "d2", "image": "d2.png", "prompt": "", "answer": {"Итого": "99,90", "НДС": "0"}},
        ],
    )
    cfg = make_config(
        model_cache, "model=dummy", "task=kie", "dataset=jsonl", f"dataset.root={root}"
    )
    row = run_experiment(cfg, tmp_path / "run")
    assert row["json_valid"] == 1.0 and row["schema_valid"] == 1.0  # the dummy follows schemas
    fields = pd.read_csv(tmp_path / "run" / "fields.csv", keep_default_na=False)
    assert fields["field"].tolist() == ["Итого", "Итого", "НДС"]
    by_field = pd.read_csv(tmp_path / "run" / "metrics_by_field.csv").set_index("field")
    assert by_field.loc["Итого", "n"] == 2 and by_field.loc["НДС", "n"] == 1


def test_text_answers_under_task_kie_are_refused(model_cache, tmp_path) -> None:
    cfg = make_config(model_cache, "model=dummy", "task=kie")  # sample_docs: text answers
    with pytest.raises(RunnerError, match="task=kie needs an object of fields"):
        run_experiment(cfg, tmp_path / "run")


# --- run level -------------------------------------------------------------------------------


def test_run_figures_are_micro_averages_over_fields(model_cache, tmp_path) -> None:
    from tests.support.wrappers import PromptEcho  # noqa: F401 (the model the config names)

    root = write_jsonl(
        tmp_path / "data",
        [
            {
                "id": "d1",
                "image": "d1.png",
                "prompt": json.dumps({"A": "x", "B": "y"}),
                "answer": {"A": "x", "B": "y"},
            },
            {
                "id": "d2",
                "image": "d2.png",
                "prompt": json.dumps({"A": "x", "B": "z", "C": "q"}),
                "answer": {"A": "x", "B": "y", "C": "w", "D": "v"},
            },
        ],
    )
    cfg = make_config(
        model_cache,
        "model=custom",
        "model.class_path=tests.support.wrappers:PromptEcho",
        "model.init_params.model_name=echo",
        "task=kie",
        "dataset=jsonl",
        f"dataset.root={root}",
        "task.constrained=false",
        '+task.prompt_template="{prompt}"',
    )
    row = run_experiment(cfg, tmp_path / "run")
    # d1: 2 of 2 right. d2: A right, B and C wrong, D missing: 1 of 4 right, 3 given.
    assert row["field_exact_match"] == pytest.approx(3 / 6)
    assert row["field_precision"] == pytest.approx(3 / 5)
    assert row["field_recall"] == pytest.approx(3 / 6)
    assert row["field_f1"] == pytest.approx(2 * (3 / 5) * (3 / 6) / (3 / 5 + 3 / 6))
    assert row["documents_all_correct"] == 0.5 and row["schema_valid"] == 0.5
    predictions = read_predictions(tmp_path / "run")
    assert predictions["all_fields_correct"].tolist() == [1.0, 0.0]
    assert math.isclose(read_metrics(tmp_path / "run")["json_valid"], 1.0)


@pytest.mark.slow
def test_a_constrained_tiny_model_answers_only_schema_valid_json(model_cache, tmp_path) -> None:
    constrained = run_experiment(
        make_config(model_cache, "task=kie", "dataset=sample_docs_kie"), tmp_path / "constrained"
    )
    assert constrained["n_samples"] == 24 and constrained["n_errors"] == 0
    assert constrained["json_valid"] == constrained["schema_valid"] == 1.0
    free = run_experiment(
        make_config(
            model_cache,
            "task=kie",
            "dataset=sample_docs_kie",
            "task.constrained=false",
            "runner.limit=8",
        ),
        tmp_path / "free",
    )
    assert free["schema_valid"] < 1.0  # without the constraint, a random model's JSON is rare
    assert (
        read_predictions(tmp_path / "free")["schema_valid"].astype(float).mean()
        == (free["schema_valid"])
    )
