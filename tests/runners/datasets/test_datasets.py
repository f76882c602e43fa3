"""Tests of the dataset readers in runners/datasets/, on real files written under tmp_path."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from model_interface.images import ImageLoadError
from runners.datasets import VLMHYPERBENCH_COLUMNS, Dataset, DatasetError, Sample
from tests.support.helpers import REPO_ROOT

SHIPPED = REPO_ROOT / "data" / "sample_docs"

VLM_HEADER = list(VLMHYPERBENCH_COLUMNS)
VLM_ROWS = [
    ["0", "dev", "images/inv1.png", "What is the total?", "$10.00", "invoice", "amount"],
    ["1", "dev", "images/inv1.png", "Who is the vendor?", "ACME", "invoice", "name"],
    ["2", "test", "images/rec1.png", "What is the total?", "$3.50", "receipt", "amount"],
    ["3", "test", "images/rec1.png", "When was it paid?", "2024-01-02", "receipt", "date"],
    ["4", "test", "images/id1.png", "Как зовут владельца?", "Иванов Иван", "id_card", "name"],
    ["5", "train", "images/id1.png", "Какой номер паспорта?", "45 06 123456", "id_card", "number"],
]


def config(root: Path | str | None, **overrides: Any) -> dict[str, Any]:
    """A dataset config as the runner passes it: every key present, unset ones None."""
    base: dict[str, Any] = {
        "name": None,
        "format": "vlmhyperbench",
        "root": None if root is None else str(root),
        "file": None,
        "prompt_template": "{prompt}",
        "split": None,
        "doc_class": None,
        "question_type": None,
        "limit": None,
        "shuffle": False,
        "seed": 0,
    }
    base.update(overrides)
    return base


def load(root: Path, **overrides: Any) -> list[Sample]:
    return list(Dataset.from_config(config(root, **overrides)).samples())


def ids(samples: list[Sample]) -> list[str]:
    return [sample.id for sample in samples]


def write_vlm(
    root: Path,
    rows: list[list[str]] = VLM_ROWS,
    *,
    header: list[str] = VLM_HEADER,
    bom: bool = False,
    file: str = "annotation.csv",
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    (root / file).write_text(("\ufeff" if bom else "") + buffer.getvalue(), encoding="utf-8")
    return root


def write_csv(root: Path, header: list[str], rows: list[list[str]], file: str = "data.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / file).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return root


def write_jsonl(root: Path, lines: list[Any], file: str = "data.jsonl") -> Path:
    """Objects are dumped as JSON; strings are written verbatim (for blank or broken lines)."""
    root.mkdir(parents=True, exist_ok=True)
    text = "".join(
        (line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
        for line in lines
    )
    (root / file).write_text(text, encoding="utf-8")
    return root


# --- VLMHyperBench layout ------------------------------------------------------------------


@pytest.mark.parametrize("bom", [False, True], ids=["no-bom", "bom"])
def test_vlmhyperbench_rows_become_samples(tmp_path: Path, bom: bool) -> None:
    root = write_vlm(tmp_path / "ds", bom=bom)
    samples = load(root)
    assert ids(samples) == ["0", "1", "2", "3", "4", "5"]
    assert samples[0] == Sample(
        id="0",
        position=0,
        images=("images/inv1.png",),
        prompt="What is the total?",
        reference="$10.00",
        split="dev",
        doc_class="invoice",
        question_type="amount",
        document="0",
    )


def test_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds", bom=True)
    assert (root / "annotation.csv").read_bytes().startswith(b"\xef\xbb\xbfdata_index;")
    # data_index is found (no "\ufeffdata_index"), so ids come from it, not from line numbers.
    assert ids(load(root))[:2] == ["0", "1"]


def test_cyrillic_questions_and_answers_round_trip(tmp_path: Path) -> None:
    samples = load(write_vlm(tmp_path / "ds", bom=True))
    assert samples[4].prompt == "Как зовут владельца?"
    assert samples[4].reference == "Иванов Иван"
    assert samples[5].reference == "45 06 123456"


def test_optional_answer_bbox_column(tmp_path: Path) -> None:
    with_bbox = write_vlm(
        tmp_path / "with",
        [[*row, "10,20,30,40"] for row in VLM_ROWS],
        header=[*VLM_HEADER, "answer_bbox"],
    )
    without_bbox = write_vlm(tmp_path / "without")
    assert load(with_bbox) == load(without_bbox)
    # the extra column is still available to the prompt template
    (sample, *_) = load(with_bbox, prompt_template="{prompt} [{answer_bbox}]")
    assert sample.prompt == "What is the total? [10,20,30,40]"


def test_the_row_is_the_id_data_index_the_document(tmp_path: Path) -> None:
    rows = [
        ["a-17", "dev", "scans/p 1.png", "q?", "x", "invoice", "name"],
        ["a-17", "dev", "scans/p 1.png", "q2?", "y", "invoice", "name"],
    ]
    first, second = load(write_vlm(tmp_path / "ds", rows))
    assert (first.id, first.document, second.id, second.document) == ("0", "a-17", "1", "a-17")
    assert first.images == ("scans/p 1.png",)
    assert isinstance(first.images, tuple)


def test_default_prompt_template_is_the_question(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds")
    assert [s.prompt for s in load(root, prompt_template=None)] == [row[3] for row in VLM_ROWS]
    assert load(root, prompt_template=None) == load(root, prompt_template="{prompt}")


def test_prompt_template_can_use_other_columns(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds")
    samples = load(root, prompt_template="Document type: {doc_class}.\n{prompt} Answer briefly.")
    assert samples[0].prompt == "Document type: invoice.\nWhat is the total? Answer briefly."
    assert samples[4].prompt == "Document type: id_card.\nКак зовут владельца? Answer briefly."
    # the reference is never rewritten by the template
    assert samples[0].reference == "$10.00"


def test_braces_inside_a_question_are_not_treated_as_placeholders(tmp_path: Path) -> None:
    rows = [["0", "dev", "a.png", "Return JSON like {total}", "{}", "invoice", "amount"]]
    (sample,) = load(write_vlm(tmp_path / "ds", rows), prompt_template="Q: {prompt}")
    assert sample.prompt == "Q: Return JSON like {total}"
    assert sample.reference == "{}"


def test_prompt_template_with_unknown_column_names_it_and_lists_columns(tmp_path: Path) -> None:
    dataset = Dataset.from_config(config(write_vlm(tmp_path / "ds"), prompt_template="{language}"))
    with pytest.raises(DatasetError) as caught:
        next(iter(dataset.samples()))
    message = str(caught.value)
    assert "language" in message
    assert "annotation.csv line 2" in message
    for column in ("question", "doc_class", "question_type", "answer"):
        assert repr(column) in message
    assert "{prompt}" in message


def test_semicolons_inside_quoted_fields(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "annotation.csv").write_text(
        ";".join(VLM_HEADER) + "\n"
        '0;dev;a.png;"List items; separated by semicolons";"milk; bread; ""eggs""";shop;text\n'
        '1;dev;b.png;"Multi\nline question";"x";shop;text\n',
        encoding="utf-8",
    )
    first, second = load(root)
    assert first.prompt == "List items; separated by semicolons"
    assert first.reference == 'milk; bread; "eggs"'
    assert (first.doc_class, first.question_type) == ("shop", "text")
    assert second.prompt == "Multi\nline question"


def test_shipped_sample_docs_load() -> None:
    dataset = Dataset.from_config(config(SHIPPED, name="sample_docs"))
    samples = list(dataset.samples())
    assert len(samples) == 48
    assert {s.doc_class for s in samples} == {"invoice", "receipt", "id_card"}
    assert len(set(ids(samples))) == 48
    assert all(s.reference for s in samples)
    assert all(len(s.images) == 1 and dataset.image_path(s.images[0]).is_file() for s in samples)
    assert dataset.name == "sample_docs"


def test_shipped_sample_docs_invoice_subset_like_the_conf_group() -> None:
    invoices = load(SHIPPED, name="sample_docs_invoices", doc_class="invoice")
    assert invoices
    assert {s.doc_class for s in invoices} == {"invoice"}
    by_split = [load(SHIPPED, split=split) for split in ("dev", "test")]
    assert sum(len(part) for part in by_split) == 48


def test_name_defaults_to_the_root_folder(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "my_docs")
    assert Dataset.from_config(config(root)).name == "my_docs"
    assert Dataset.from_config(config(root, name="custom")).name == "custom"


def test_format_defaults_to_vlmhyperbench(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds")
    assert Dataset.from_config({"root": str(root)}).format == "vlmhyperbench"
    assert Dataset.from_config(config(root, format=None)).format == "vlmhyperbench"


def test_custom_annotation_file_name(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds", file="questions_v2.csv")
    assert ids(load(root, file="questions_v2.csv")) == ["0", "1", "2", "3", "4", "5"]


def test_tuple_filters_are_accepted(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds")
    assert ids(load(root, split=("dev", "train"))) == ["0", "1", "5"]


# --- filters, limit, shuffle ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("split", "dev", ["0", "1"]),
        ("split", ["dev", "train"], ["0", "1", "5"]),
        ("doc_class", "receipt", ["2", "3"]),
        ("doc_class", ["invoice", "id_card"], ["0", "1", "4", "5"]),
        ("question_type", "amount", ["0", "2"]),
        ("question_type", ["date", "number"], ["3", "5"]),
        ("doc_class", "no_such_class", []),
        ("split", [], []),
    ],
)
def test_filters(tmp_path: Path, field: str, value: Any, expected: list[str]) -> None:
    assert ids(load(write_vlm(tmp_path / "ds"), **{field: value})) == expected


def test_filters_combine_with_and(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds")
    assert ids(load(root, split="test", question_type="amount")) == ["2"]
    assert ids(load(root, split=["dev", "test"], doc_class=["invoice", "receipt"])) == [
        "0",
        "1",
        "2",
        "3",
    ]


def test_non_string_filter_values_match_text(tmp_path: Path) -> None:
    rows = [
        ["0", "1", "a.png", "q", "a", "invoice", "name"],
        ["1", "2", "a.png", "q", "a", "invoice", "name"],
    ]
    assert ids(load(write_vlm(tmp_path / "ds", rows), split=2)) == ["1"]


@pytest.mark.parametrize(("limit", "expected"), [(0, 0), (1, 1), (4, 4), (6, 6), (100, 6)])
def test_limit(tmp_path: Path, limit: int, expected: int) -> None:
    samples = load(write_vlm(tmp_path / "ds"), limit=limit)
    assert ids(samples) == ["0", "1", "2", "3", "4", "5"][:expected]


def test_limit_counts_after_filters(tmp_path: Path) -> None:
    assert ids(load(write_vlm(tmp_path / "ds"), split="test", limit=2)) == ["2", "3"]


def test_negative_limit_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.limit must be >= 0"):
        Dataset.from_config(config(write_vlm(tmp_path / "ds"), limit=-1))


def _many_rows(count: int) -> list[list[str]]:
    return [
        [str(i), "test", f"img/{i}.png", f"q{i}", f"a{i}", "invoice", "name"] for i in range(count)
    ]


def test_shuffle_is_a_deterministic_permutation(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds", _many_rows(30))
    plain = ids(load(root))
    first = ids(load(root, shuffle=True, seed=7))
    again = ids(load(root, shuffle=True, seed=7))
    other = ids(load(root, shuffle=True, seed=8))
    assert first == again
    assert sorted(first) == sorted(plain)
    assert len(first) == len(plain) == 30
    assert first != plain
    assert other != first
    assert sorted(other) == sorted(plain)


def test_shuffle_off_keeps_file_order_whatever_the_seed(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds", _many_rows(10))
    assert ids(load(root, seed=1)) == ids(load(root, seed=2)) == [str(i) for i in range(10)]


def test_shuffle_then_limit_takes_a_prefix_of_the_shuffled_order(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds", _many_rows(30))
    full = ids(load(root, shuffle=True, seed=3))
    assert ids(load(root, shuffle=True, seed=3, limit=5)) == full[:5]


def test_shuffle_applies_after_filters(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds")
    shuffled = load(root, shuffle=True, seed=5, doc_class=["invoice", "receipt"])
    assert sorted(ids(shuffled)) == ["0", "1", "2", "3"]


def test_null_seed_means_seed_zero(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds", _many_rows(20))
    assert ids(load(root, shuffle=True, seed=None)) == ids(load(root, shuffle=True, seed=0))


# --- generic CSV ---------------------------------------------------------------------------


def test_generic_csv(tmp_path: Path) -> None:
    root = write_csv(
        tmp_path / "ds",
        ["id", "image", "prompt", "answer"],
        [
            ["a", "one.png", "What is shown?", "a cat"],
            ["b", json.dumps(["p1.png", "p2.png"]), "Compare the pages, please", "same"],
            ["c", "three.png", "Вопрос, с запятой", "Ответ, тоже"],
        ],
    )
    samples = load(root, format="csv")
    assert samples[0] == Sample("a", 0, ("one.png",), "What is shown?", "a cat")
    assert samples[1].images == ("p1.png", "p2.png")
    assert (samples[2].prompt, samples[2].reference) == ("Вопрос, с запятой", "Ответ, тоже")
    assert all(s.split is s.doc_class is s.question_type is None for s in samples)


def test_generic_csv_optional_filter_columns(tmp_path: Path) -> None:
    root = write_csv(
        tmp_path / "ds",
        ["id", "image", "prompt", "answer", "split", "doc_class", "question_type"],
        [
            ["a", "1.png", "p", "x", "dev", "invoice", "amount"],
            ["b", "2.png", "p", "y", "test", "receipt", "date"],
        ],
    )
    assert ids(load(root, format="csv", split="test")) == ["b"]
    assert ids(load(root, format="csv", doc_class="invoice", question_type="amount")) == ["a"]


def test_generic_csv_without_id_uses_line_numbers(tmp_path: Path) -> None:
    root = write_csv(tmp_path / "ds", ["image", "prompt"], [["1.png", "p"], ["2.png", "q"]])
    samples = load(root, format="csv")
    # line 1 is the header
    assert ids(samples) == ["2", "3"]
    assert all(s.reference is None for s in samples)


def test_generic_csv_empty_id_cell_falls_back_to_the_line_number(tmp_path: Path) -> None:
    root = write_csv(
        tmp_path / "ds", ["id", "image", "prompt"], [["x", "1.png", "p"], ["", "2.png", "q"]]
    )
    assert ids(load(root, format="csv")) == ["x", "3"]


def test_generic_csv_bad_image_list(tmp_path: Path) -> None:
    root = write_csv(tmp_path / "ds", ["id", "image", "prompt"], [["a", '["p1.png", ', "p"]])
    with pytest.raises(DatasetError, match=r"data\.csv line 2: image list is not valid JSON"):
        load(root, format="csv")


def test_vlmhyperbench_separator_does_not_split_a_comma_csv(tmp_path: Path) -> None:
    # A comma-separated file read as vlmhyperbench: the error must point at the separator.
    root = write_csv(tmp_path / "ds", VLM_HEADER, VLM_ROWS, file="annotation.csv")
    with pytest.raises(DatasetError) as caught:
        load(root)
    message = str(caught.value)
    assert "separated by ';'" in message
    assert "data_index,split,image_path" in message  # the header as it was read


# --- JSONL ---------------------------------------------------------------------------------


def test_jsonl_string_or_list_image_and_blank_lines(tmp_path: Path) -> None:
    root = write_jsonl(
        tmp_path / "ds",
        [
            {"id": "a", "image": "one.png", "prompt": "Что это?", "answer": "кот"},
            "",
            "   ",
            {"id": 7, "image": ["p1.png", "p2.png"], "prompt": "Compare", "answer": 42},
            {"id": "c", "image": "x.png", "prompt": "no answer", "answer": None, "split": "dev"},
        ],
    )
    samples = load(root, format="jsonl")
    assert samples[0] == Sample("a", 0, ("one.png",), "Что это?", "кот")
    assert samples[1] == Sample("7", 1, ("p1.png", "p2.png"), "Compare", "42")
    assert (samples[2].reference, samples[2].split) == (None, "dev")


def test_jsonl_without_id_uses_physical_line_numbers(tmp_path: Path) -> None:
    root = write_jsonl(
        tmp_path / "ds", [{"image": "a.png", "prompt": "p"}, "", {"image": "b.png", "prompt": "q"}]
    )
    samples = load(root, format="jsonl")
    assert ids(samples) == ["1", "3"]
    assert all(s.reference is None for s in samples)


def test_jsonl_with_bom(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "data.jsonl").write_bytes(
        "\ufeff".encode()
        + json.dumps({"id": "a", "image": "a.png", "prompt": "p"}).encode()
        + b"\n"
    )
    assert ids(load(root, format="jsonl")) == ["a"]


def test_jsonl_bad_line_names_its_line_number(tmp_path: Path) -> None:
    root = write_jsonl(
        tmp_path / "ds", [{"id": "a", "image": "a.png", "prompt": "p"}, "", '{"id": "b", image}']
    )
    dataset = Dataset.from_config(config(root, format="jsonl"))
    stream = dataset.samples()
    assert next(stream).id == "a"
    with pytest.raises(DatasetError, match=r"data\.jsonl line 3: bad JSON"):
        next(stream)


@pytest.mark.parametrize("line", ['["a.png", "p"]', '"just a string"', "42", "null"])
def test_jsonl_non_object_line(tmp_path: Path, line: str) -> None:
    root = write_jsonl(tmp_path / "ds", [{"id": "a", "image": "a.png", "prompt": "p"}, line])
    with pytest.raises(DatasetError, match=r"data\.jsonl line 2: expected a JSON object"):
        load(root, format="jsonl")


def test_jsonl_missing_key_names_line_and_required_keys(tmp_path: Path) -> None:
    root = write_jsonl(tmp_path / "ds", [{"id": "a", "image": "a.png", "question": "p"}])
    with pytest.raises(DatasetError) as caught:
        load(root, format="jsonl")
    message = str(caught.value)
    assert "data.jsonl line 1" in message
    assert "'prompt'" in message
    assert "'image'" in message  # the required keys are listed


# --- configuration and data errors ---------------------------------------------------------


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        Dataset.from_config(config(write_vlm(tmp_path / "ds"), format="parquet"))
    message = str(caught.value)
    assert "'parquet'" in message
    assert "['csv', 'hf', 'jsonl', 'kie_json', 'vlmhyperbench']" in message


@pytest.mark.parametrize("root", [None, ""])
def test_root_not_set(root: str | None) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.root is not set; pass dataset\.root="):
        Dataset.from_config(config(root))


def test_root_key_missing() -> None:
    with pytest.raises(DatasetError, match=r"dataset\.root is not set"):
        Dataset.from_config({"name": "x", "format": "vlmhyperbench"})


def test_root_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "annotation.csv"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"is not a directory; fix dataset\.root"):
        Dataset.from_config(config(path))


def test_root_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere.*is not a directory; fix dataset\.root"):
        Dataset.from_config(config(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    ("data_format", "file", "expected"),
    [
        ("vlmhyperbench", None, "annotation.csv"),
        ("csv", None, "data.csv"),
        ("jsonl", None, "data.jsonl"),
        ("vlmhyperbench", "other.csv", "other.csv"),
    ],
)
def test_missing_annotation_file(
    tmp_path: Path, data_format: str, file: str | None, expected: str
) -> None:
    (tmp_path / "ds").mkdir()
    with pytest.raises(DatasetError) as caught:
        Dataset.from_config(config(tmp_path / "ds", format=data_format, file=file))
    message = str(caught.value)
    assert expected in message
    assert "does not exist; fix dataset.file or dataset.root" in message


@pytest.mark.parametrize(
    ("data_format", "header", "absent", "needed"),
    [
        (
            "vlmhyperbench",
            ["data_index", "split", "image", "question", "answer"],
            "['image_path']",
            "['data_index', 'image_path', 'question', 'answer']",
        ),
        ("csv", ["id", "image", "question", "answer"], "['prompt']", "['image', 'prompt']"),
    ],
)
def test_missing_required_column_lists_header_and_required(
    tmp_path: Path, data_format: str, header: list[str], absent: str, needed: str
) -> None:
    root = tmp_path / "ds"
    if data_format == "vlmhyperbench":
        write_vlm(root, [["0", "dev", "a.png", "q", "a"]], header=header)
    else:
        write_csv(root, header, [["0", "a.png", "q", "a"]])
    with pytest.raises(DatasetError) as caught:
        load(root, format=data_format)
    message = str(caught.value)
    assert f"has no column(s) {absent}" in message
    assert f"its header is {header}" in message
    assert needed in message


def test_empty_annotation_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "annotation.csv").write_text("", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"has no column\(s\)"):
        load(root)


def test_header_only_file_has_no_samples(tmp_path: Path) -> None:
    assert load(write_vlm(tmp_path / "ds", [])) == []


@pytest.mark.parametrize("data_format", ["vlmhyperbench", "csv", "jsonl"])
def test_duplicate_ids(tmp_path: Path, data_format: str) -> None:
    root = tmp_path / "ds"
    if data_format == "vlmhyperbench":  # data_index names a document, repeated by its questions
        write_vlm(root, [VLM_ROWS[0], VLM_ROWS[1], ["1", *VLM_ROWS[2][1:]]])
        samples = load(root, format=data_format)
        assert [(s.id, s.document) for s in samples] == [("0", "0"), ("1", "1"), ("2", "1")]
        return
    if data_format == "csv":
        write_csv(root, ["id", "image", "prompt"], [["1", "a.png", "p"], ["1", "b.png", "q"]])
        where = "data.csv line 3"
    else:
        write_jsonl(
            root,
            [{"id": 1, "image": "a.png", "prompt": "p"}, {"id": "1", "image": "b", "prompt": "q"}],
        )
        where = "data.jsonl line 2"
    with pytest.raises(DatasetError) as caught:
        load(root, format=data_format)
    assert f"{where}: duplicate sample id '1'; ids must be unique" in str(caught.value)


def test_duplicate_ids_are_caught_even_in_filtered_out_rows(tmp_path: Path) -> None:
    root = write_csv(
        tmp_path / "ds",
        ["id", "image", "prompt", "split"],
        [["0", "a.png", "p", "dev"], ["0", "b.png", "q", "test"]],
    )
    with pytest.raises(DatasetError, match="duplicate sample id '0'"):
        load(root, format="csv", split="dev")


def test_empty_image_field_vlmhyperbench(tmp_path: Path) -> None:
    rows = [VLM_ROWS[0], ["1", "dev", "", "q", "a", "invoice", "name"]]
    with pytest.raises(DatasetError) as caught:
        load(write_vlm(tmp_path / "ds", rows))
    message = str(caught.value)
    assert "annotation.csv line 3 has no ['image_path']" in message
    assert "required columns" in message


def test_empty_required_cell_vlmhyperbench(tmp_path: Path) -> None:
    rows = [["0", "dev", "a.png", "", "a", "invoice", "name"]]
    with pytest.raises(DatasetError, match=r"annotation\.csv line 2 has no \['question'\]"):
        load(write_vlm(tmp_path / "ds", rows))


@pytest.mark.parametrize(
    ("data_format", "image"),
    [
        ("csv", ""),
        ("csv", "[]"),
        ("csv", '["a.png", ""]'),
        ("jsonl", ""),
        ("jsonl", []),
        ("jsonl", ["a.png", ""]),
        ("jsonl", None),
    ],
)
def test_empty_image_field(tmp_path: Path, data_format: str, image: Any) -> None:
    root = tmp_path / "ds"
    if data_format == "csv":
        write_csv(root, ["id", "image", "prompt"], [["a", image, "p"]])
    else:
        write_jsonl(root, [{"id": "a", "image": image, "prompt": "p"}])
    with pytest.raises(DatasetError) as caught:
        load(root, format=data_format)
    message = str(caught.value)
    assert f"data.{data_format} line" in message
    assert ("at least one image path" in message) or ("has no ['image']" in message)


# --- image paths ---------------------------------------------------------------------------


@pytest.fixture
def image_root(tmp_path: Path) -> Dataset:
    root = write_vlm(tmp_path / "ds")
    (root / "images").mkdir()
    (root / "images" / "inv1.png").write_bytes(b"png")
    (tmp_path / "outside.png").write_bytes(b"secret")
    (tmp_path / "outside_dir").mkdir()
    (tmp_path / "outside_dir" / "x.png").write_bytes(b"secret")
    return Dataset.from_config(config(root))


def test_image_path_resolves_inside_root(image_root: Dataset) -> None:
    root = image_root.root
    assert image_root.image_path("images/inv1.png") == root / "images" / "inv1.png"
    assert image_root.image_path("images/../images/inv1.png") == root / "images" / "inv1.png"
    assert image_root.image_path("images/inv1.png").read_bytes() == b"png"
    # existence is not checked here: the image loader reports a missing file
    assert image_root.image_path("images/missing.png") == root / "images" / "missing.png"


def test_image_path_allows_absolute_path_inside_root(image_root: Dataset) -> None:
    inside = image_root.root / "images" / "inv1.png"
    assert image_root.image_path(str(inside)) == inside


def test_image_path_allows_symlink_that_stays_inside_root(image_root: Dataset) -> None:
    (image_root.root / "alias.png").symlink_to(image_root.root / "images" / "inv1.png")
    assert image_root.image_path("alias.png") == image_root.root / "images" / "inv1.png"


def test_root_given_through_a_symlink(tmp_path: Path) -> None:
    real = write_vlm(tmp_path / "real")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    dataset = Dataset.from_config(config(tmp_path / "link"))
    assert dataset.image_path("a.png") == real.resolve() / "a.png"


@pytest.mark.parametrize(
    "make_path",
    [
        pytest.param(lambda root: "../outside.png", id="dotdot"),
        pytest.param(lambda root: "images/../../outside.png", id="nested-dotdot"),
        pytest.param(lambda root: str(root.parent / "outside.png"), id="absolute"),
        pytest.param(lambda root: "/etc/passwd", id="absolute-system"),
        pytest.param(lambda root: "../ds_sibling/x.png", id="prefix-sibling"),
    ],
)
def test_image_path_leaving_root_is_refused(image_root: Dataset, make_path) -> None:
    relative = make_path(image_root.root)
    with pytest.raises(ImageLoadError) as caught:
        image_root.image_path(relative)
    message = str(caught.value)
    assert repr(relative) in message
    assert "leaves the dataset root" in message
    assert str(image_root.root) in message


def test_symlink_inside_root_pointing_outside_is_refused(image_root: Dataset) -> None:
    outside = image_root.root.parent
    (image_root.root / "images" / "evil.png").symlink_to(outside / "outside.png")
    (image_root.root / "linked_dir").symlink_to(outside / "outside_dir", target_is_directory=True)
    for relative in ("images/evil.png", "linked_dir/x.png"):
        with pytest.raises(ImageLoadError, match="leaves the dataset root"):
            image_root.image_path(relative)


# --- streaming -----------------------------------------------------------------------------

BIG = 20_000


def _big_file_with_broken_last_line(root: Path) -> Path:
    root.mkdir()
    lines = [";".join(VLM_HEADER)]
    lines += [f"{i};test;img/{i}.png;q{i};a{i};invoice;name" for i in range(BIG - 1)]
    lines.append(f"{BIG - 1};test;img/broken.png")  # no question, no answer
    (root / "annotation.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_streaming_first_sample_before_a_broken_last_line(tmp_path: Path) -> None:
    root = _big_file_with_broken_last_line(tmp_path / "ds")
    dataset = Dataset.from_config(config(root))  # reading the config reads no rows
    first = next(iter(dataset.samples()))
    assert first.id == "0"
    assert ids(list(itertools.islice(dataset.samples(), 5))) == ["0", "1", "2", "3", "4"]
    stream = dataset.samples()
    assert sum(1 for _ in itertools.islice(stream, BIG - 1)) == BIG - 1
    with pytest.raises(DatasetError, match=f"annotation.csv line {BIG + 1} has no"):
        next(stream)


def test_streaming_jsonl_first_sample_before_a_broken_last_line(tmp_path: Path) -> None:
    lines: list[Any] = [{"id": i, "image": "a.png", "prompt": "p"} for i in range(BIG - 1)]
    root = write_jsonl(tmp_path / "ds", [*lines, "{broken"])
    dataset = Dataset.from_config(config(root, format="jsonl"))
    assert next(iter(dataset.samples())).id == "0"
    with pytest.raises(DatasetError, match=f"data.jsonl line {BIG}: bad JSON"):
        list(dataset.samples())


def test_shuffle_reads_every_row_before_the_first_sample(tmp_path: Path) -> None:
    # Documented: shuffling needs all rows' text, so a broken row surfaces immediately.
    root = _big_file_with_broken_last_line(tmp_path / "ds")
    dataset = Dataset.from_config(config(root, shuffle=True, seed=1))
    with pytest.raises(DatasetError, match=f"line {BIG + 1}"):
        next(iter(dataset.samples()))


# --- edge cases found in review ----------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 1])
def test_limit_does_not_read_past_the_last_kept_row(tmp_path: Path, limit: int) -> None:
    rows = [VLM_ROWS[0], ["1", "dev", "b.png"], VLM_ROWS[2]]  # row 2 lacks question/answer
    if limit == 0:
        rows = rows[1:]
    assert len(load(write_vlm(tmp_path / "ds", rows), limit=limit)) == limit


def test_row_with_extra_fields_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "annotation.csv").write_text(
        ";".join(VLM_HEADER) + "\n0;dev;a.png;List items;milk;bread;shop;text\n",
        encoding="utf-8",
    )
    with pytest.raises(DatasetError, match="line 2"):
        load(root)


def test_a_row_with_extra_fields_fails_before_the_template(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "annotation.csv").write_text(
        ";".join(VLM_HEADER) + "\n0;dev;a.png;q;a;shop;text;extra\n", encoding="utf-8"
    )
    with pytest.raises(DatasetError, match="line 2 has more fields than the header"):
        load(root, prompt_template="{language}")


def test_prompt_template_attribute_error_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="prompt_template"):
        load(write_vlm(tmp_path / "ds"), prompt_template="{prompt.upper.x}")


def test_non_utf8_file_names_the_file_and_encoding(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    text = ";".join(VLM_HEADER) + "\n0;dev;a.png;Какой итог?;да;invoice;amount\n"
    (root / "annotation.csv").write_bytes(text.encode("cp1251"))
    with pytest.raises(DatasetError, match=r"annotation\.csv.*UTF-8"):
        load(root)


def test_from_config_rejects_a_header_without_required_columns(tmp_path: Path) -> None:
    root = write_csv(tmp_path / "ds", VLM_HEADER, VLM_ROWS, file="annotation.csv")
    with pytest.raises(DatasetError, match="separated by ';'"):
        Dataset.from_config(config(root))


# --- any-of references, whole-file checks ------------------------------------------------------


def test_a_jsonl_answer_list_is_a_set_of_acceptable_answers(tmp_path: Path) -> None:
    root = write_jsonl(
        tmp_path / "ds",
        [
            {"id": "a", "image": "a.png", "prompt": "How many?", "answer": ["10", "ten"]},
            {"id": "b", "image": "b.png", "prompt": "Year?", "answer": [1999, "1999 г."]},
        ],
    )
    first, second = load(root, format="jsonl")
    assert first.reference == ("10", "ten")
    assert second.reference == ("1999", "1999 г.")


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ('["10", "ten"]', ("10", "ten")),
        (' ["один"] ', ("один",)),
        ("[1, 2]", "[1, 2]"),  # numbers: an answer that happens to look like a list
        ("[]", "[]"),
        ("[see page 2]", "[see page 2]"),
        ("plain", "plain"),
    ],
)
def test_a_csv_cell_holding_a_json_array_of_strings_is_a_list(tmp_path: Path, cell, expected):
    rows = [["0", "dev", "a.png", "q?", cell, "invoice", "amount"]]
    (sample,) = load(write_vlm(tmp_path / "ds", rows))
    assert sample.reference == expected


@pytest.mark.parametrize("answer", [[], [{"a": 1}], True])
def test_an_answer_that_is_not_text_or_a_list_of_text_is_refused(tmp_path: Path, answer) -> None:
    root = write_jsonl(tmp_path / "ds", [{"image": "a.png", "prompt": "p", "answer": answer}])
    with pytest.raises(DatasetError, match=r"data.jsonl line 1: .*answer"):
        load(root, format="jsonl")


def test_an_object_answer_is_kept_as_fields(tmp_path: Path) -> None:
    fields = {"Фамилия": "ОСИПОВ", "Дата": "01.02.2003"}
    root = write_jsonl(tmp_path / "ds", [{"image": "a.png", "prompt": "p", "answer": fields}])
    (sample,) = load(root, format="jsonl")
    assert sample.reference == {"Фамилия": "ОСИПОВ", "Дата": "01.02.2003"}


def test_check_reads_the_whole_file_beyond_any_limit_or_filter(tmp_path: Path) -> None:
    rows = [list(row) for row in VLM_ROWS] + [["9", "dev", "z.png", "", "x", "receipt", "x"]]
    dataset = Dataset.from_config(
        config(write_vlm(tmp_path / "ds", rows), limit=1, doc_class="invoice")
    )
    assert len(list(dataset.samples())) == 1  # streaming stops early ...
    with pytest.raises(DatasetError, match=r"line 8 has no \['question'\]"):
        dataset.check()  # ... the check does not


def test_positions_count_records_whatever_the_filters(tmp_path: Path) -> None:
    dataset = Dataset.from_config(config(write_vlm(tmp_path / "ds"), doc_class="id_card"))
    assert [s.position for s in dataset.samples()] == [4, 5]
    assert dataset.check() == len(VLM_ROWS)
    references = {sample.id: sample.reference for sample in dataset.all_samples()}
    assert references["4"] == "Иванов Иван"
    assert len(dataset.content_sha256()) == 64


# --- every row read exactly as written, or refused in one line ----------------------------------


def test_an_unclosed_quote_is_refused_naming_the_line_it_opens_on(tmp_path: Path) -> None:
    """Read leniently, row g3 would become part of g2's reference."""
    root = tmp_path / "ds"
    root.mkdir()
    (root / "data.csv").write_text(
        'id,image,prompt,answer\ng1,a.png,q,a\ng2,a.png,q,"never closed\ng3,a.png,q,b\n',
        encoding="utf-8",
    )
    with pytest.raises(DatasetError) as refused:
        Dataset.from_config(config(root, format="csv")).check()
    assert str(refused.value) == (
        "data.csv line 3 is not valid CSV (unexpected end of data): a quote that is never "
        "closed (its field would swallow the lines after it) or text after a closing quote; "
        'fix the quoting (a quote inside a quoted value is written twice: "")'
    )


def test_text_after_a_closing_quote_is_refused(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds", [VLM_ROWS[0]])
    with (root / "annotation.csv").open("a", encoding="utf-8") as handle:
        handle.write('1;dev;images/inv1.png;"Who" is it?;ACME;invoice;name\n')
    with pytest.raises(DatasetError, match=r"^annotation\.csv line 3 is not valid CSV \(';' "):
        Dataset.from_config(config(root)).check()


def test_a_quoted_value_may_span_lines_and_hold_quotes(tmp_path: Path) -> None:
    root = write_csv(
        tmp_path / "ds",
        ["id", "image", "prompt", "answer"],
        [["a", "a.png", 'say "hi"\non two lines', "x"], ["b", "a.png", "q", "y"]],
    )
    samples = load(root, format="csv")
    assert [sample.prompt for sample in samples] == ['say "hi"\non two lines', "q"]


@pytest.mark.parametrize("data_format", ["csv", "vlmhyperbench", "jsonl"])
def test_a_field_longer_than_the_csv_modules_default_limit_is_read_whole(
    tmp_path: Path, data_format: str
) -> None:
    long = "долгий вопрос " * 20_000  # 280,000 characters; the csv module's default is 131,072
    if data_format == "csv":
        root = write_csv(
            tmp_path / "ds", ["id", "image", "prompt", "answer"], [["a", "a.png", long, "x"]]
        )
    elif data_format == "jsonl":
        root = write_jsonl(tmp_path / "ds", [{"id": "a", "image": "a.png", "prompt": long}])
    else:
        root = write_vlm(tmp_path / "ds", [["0", "dev", "a.png", long, "x", "c", "t"]])
    (sample,) = load(root, format=data_format)
    assert sample.prompt == long


def test_json_nested_too_deeply_is_refused_in_one_line(tmp_path: Path) -> None:
    deep = (
        '{"id": "a", "image": "a.png", "prompt": "p", "answer": '
        + "[" * 100_000
        + "]" * 100_000
        + "}"
    )
    root = write_jsonl(tmp_path / "ds", [{"id": "z", "image": "a.png", "prompt": "p"}, deep])
    with pytest.raises(DatasetError) as refused:
        Dataset.from_config(config(root, format="jsonl")).check()
    assert (
        str(refused.value) == "data.jsonl line 2: the JSON is nested too deeply to read; flatten it"
    )


def test_a_kie_file_nested_too_deeply_is_refused_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "kie"
    (root / "jsons").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images" / "p1.png").write_bytes(b"")
    (root / "jsons" / "p1.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DatasetError, match=r"^p1\.json: the JSON is nested too deeply to read"):
        Dataset.from_config(config(root, format="kie_json")).check()


@pytest.mark.parametrize("key", ["prompt", "id", "answer"])
def test_a_lone_surrogate_is_refused_in_one_line(tmp_path: Path, key: str) -> None:
    """Valid JSON, but no character: a run would fail writing it, after the model loads."""
    row = {"id": "a", "image": "a.png", "prompt": "p", "answer": "x"}
    line = json.dumps(row).replace(f'"{key}": "{row[key]}"', f'"{key}": "bad \\ud800 text"')
    root = write_jsonl(tmp_path / "ds", [line])
    with pytest.raises(DatasetError) as refused:
        Dataset.from_config(config(root, format="jsonl")).check()
    assert str(refused.value) == (
        "data.jsonl line 1: the JSON holds a lone surrogate (\\ud800), which is not a "
        "character; fix the text (a character outside the BMP is written as a pair of escapes)"
    )


def test_a_pair_of_escapes_is_one_character(tmp_path: Path) -> None:
    root = write_jsonl(tmp_path / "ds", ['{"image": "a.png", "prompt": "\\ud83d\\ude00"}'])
    (sample,) = load(root, format="jsonl")
    assert sample.prompt == "\U0001f600"


@pytest.mark.parametrize("data_format", ["csv", "vlmhyperbench", "jsonl"])
def test_a_file_that_is_not_utf8_is_refused_naming_its_first_bad_line(
    tmp_path: Path, data_format: str
) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    if data_format == "csv":
        file, text = "data.csv", "id,image,prompt\na,a.png,q\nb,a.png,café\n"
    elif data_format == "jsonl":
        file, text = (
            "data.jsonl",
            '{"image": "a.png", "prompt": "q"}\n{"image": "a.png", "prompt": "café"}\n',
        )
    else:
        file, text = (
            "annotation.csv",
            ";".join(VLM_HEADER) + "\n0;dev;a.png;q;a;c;t\n1;dev;a.png;café;a;c;t\n",
        )
    (root / file).write_bytes(text.encode("latin-1"))
    with pytest.raises(DatasetError) as refused:
        Dataset.from_config(config(root, format=data_format)).check()
    line = 2 if data_format == "jsonl" else 3  # the header is line 1 of the CSV formats
    assert str(refused.value) == (
        f"{file} line {line} is not UTF-8 (byte 0xe9); re-save {root / file} as UTF-8 (with or "
        "without BOM)"
    )


def test_a_prompt_collection_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    root = write_vlm(tmp_path / "ds")
    (root / "prompts.csv").write_bytes(
        "prompt;doc_class_question_type\ncafé;invoice amount\n".encode("latin-1")
    )
    with pytest.raises(DatasetError) as refused:
        Dataset.from_config(config(root, prompt_collection="prompts.csv"))
    assert str(refused.value) == (
        f"prompt collection prompts.csv line 2 is not UTF-8 (byte 0xe9); re-save "
        f"{root / 'prompts.csv'} as UTF-8 (with or without BOM)"
    )


def test_a_field_of_the_fields_layout_without_value_is_refused(tmp_path: Path) -> None:
    """Read as a flat object, the file would become one field named 'fields'."""
    root = tmp_path / "kie"
    (root / "jsons").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images" / "p1.png").write_bytes(b"")
    layout = {"fields": {"name": {"value": "ОСИПОВ", "bboxes": []}, "date": {"bboxes": []}}}
    (root / "jsons" / "p1.json").write_text(json.dumps(layout, ensure_ascii=False))
    with pytest.raises(DatasetError) as refused:
        Dataset.from_config(config(root, format="kie_json")).check()
    assert str(refused.value) == (
        "p1.json: field 'date' has no \"value\", as every field of the "
        '{"fields": {name: {"value": ...}}} layout must (null for an empty field)'
    )
    layout["fields"]["date"]["value"] = None
    (root / "jsons" / "p1.json").write_text(json.dumps(layout, ensure_ascii=False))
    (sample,) = load(root, format="kie_json")
    assert sample.reference == {"name": "ОСИПОВ", "date": None}


def test_a_shuffled_selection_holds_each_stratum_in_proportion_at_any_length(
    tmp_path: Path,
) -> None:
    classes = ["invoice"] * 12 + ["receipt"] * 6 + ["id_card"] * 3  # in file order, grouped
    rows = [[str(i), "dev", "a.png", "q", "a", kind, "t"] for i, kind in enumerate(classes)]
    root = write_vlm(tmp_path / "ds", rows)
    dataset = Dataset.from_config(config(root, shuffle=True, seed=3))
    dataset = dataclasses.replace(dataset, stratum=lambda sample: sample.doc_class)
    order = [sample.doc_class for sample in dataset.samples()]
    assert sorted(order) == sorted(classes)  # every sample, once
    for length in range(1, len(order) + 1):
        for kind, share in (("invoice", 12 / 21), ("receipt", 6 / 21), ("id_card", 3 / 21)):
            assert abs(order[:length].count(kind) - share * length) < 1 + 1e-9, (length, kind)
    # the same seed gives the same order; another seed another one
    assert [s.id for s in dataset.samples()] == [s.id for s in dataset.samples()]
    reseeded = dataclasses.replace(dataset, seed=4)
    assert [s.id for s in reseeded.samples()] != [s.id for s in dataset.samples()]
