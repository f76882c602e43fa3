"""The ``hf`` dataset format on real parquet files read by the real ``datasets`` library: rows
read without decoding an image, images read from the table when asked, the split's revision,
and one-line errors for a config that does not fit the table."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from runners.datasets import Dataset, DatasetError, TableImage
from runners.execution.pipeline import DecodedImages
from tests.support.hub import png

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``datasets`` prepares splits in its own cache: this test's, not the user's."""
    cache = tmp_path / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def write_parquet(path: Path, rows: list[dict[str, Any]], features: Any = None) -> Path:
    features = features or datasets.Features(
        {
            "qid": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "answers": datasets.List(datasets.Value("string")),
            "kind": datasets.Value("string"),
            "image": datasets.Image(),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def rows(count: int, broken: int | None = None) -> list[dict[str, Any]]:
    return [
        {
            "qid": 100 + index,
            "question": f"question {index}?",
            "answers": [f"answer {index}", f"alt {index}"],
            "kind": "odd" if index % 2 else "even",
            "image": {"bytes": b"not an image" if index == broken else png(index), "path": None},
        }
        for index in range(count)
    ]


def hub_config(files: list[Path], **overrides: Any) -> dict[str, Any]:
    hf = {
        "path": "parquet",
        "split": "train",
        "data_files": [str(file) for file in files],
        "columns": {
            "id": "qid",
            "image": "image",
            "question": "question",
            "answers": "answers",
            "question_type": "kind",
        },
        **overrides.pop("hf", {}),
    }
    return {"format": "hf", "root": None, "hf": hf, **overrides}


def test_rows_become_samples_and_images_are_read_from_the_table(tmp_path: Path) -> None:
    file = write_parquet(tmp_path / "data.parquet", rows(3))
    dataset = Dataset.from_config(hub_config([file], prompt_template="{prompt} ({kind})"))
    samples = list(dataset.samples())
    assert [sample.id for sample in samples] == ["100", "101", "102"]
    assert samples[1].prompt == "question 1? (odd)"  # any text column works in the template
    assert samples[1].reference == ("answer 1", "alt 1")
    assert samples[1].question_type == "odd"
    assert samples[1].images == ("image[1]",)
    source = dataset.image_source("image[1]")
    assert isinstance(source, TableImage)
    assert source.read() == png(1)
    picture = DecodedImages(10**6, 8, None).get(source)
    expected = Image.open(io.BytesIO(png(1))).convert("RGB")
    assert picture.getpixel((0, 0)) == expected.getpixel((0, 0))
    assert dataset.name == "parquet"  # the path's last part, unless dataset.name says


def test_reading_every_row_decodes_no_image(tmp_path: Path) -> None:
    file = write_parquet(tmp_path / "data.parquet", rows(4, broken=2))
    dataset = Dataset.from_config(hub_config([file]))
    assert dataset.check() == 4  # the broken image is not read here ...
    with pytest.raises(Exception, match="cannot identify image file"):
        DecodedImages(10**6, 8, None).get(dataset.image_source("image[2]"))  # ... but here


def test_a_column_of_image_lists_gives_several_images(tmp_path: Path) -> None:
    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "pages": datasets.List(datasets.Image()),
        }
    )
    table = [
        {"question": "one page", "pages": [{"bytes": png(0), "path": None}]},
        {"question": "two pages", "pages": [{"bytes": png(1), "path": None}] * 2},
    ]
    file = write_parquet(tmp_path / "pages.parquet", table, features)
    config = hub_config([file], hf={"columns": {"image": "pages", "question": "question"}})
    dataset = Dataset.from_config(config)
    samples = list(dataset.samples())
    assert [sample.id for sample in samples] == ["0", "1"]  # no id column: the row
    assert samples[1].images == ("pages[1][0]", "pages[1][1]")
    assert samples[1].reference is None
    assert dataset.image_source("pages[1][1]").read() == png(1)


def test_the_revision_of_local_files_is_their_content(tmp_path: Path) -> None:
    file = write_parquet(tmp_path / "a" / "data.parquet", rows(2))
    first = Dataset.from_config(hub_config([file])).content_sha256()
    copy = tmp_path / "b" / "data.parquet"
    copy.parent.mkdir()
    copy.write_bytes(file.read_bytes())
    assert Dataset.from_config(hub_config([copy])).content_sha256() == first
    write_parquet(copy, rows(3))
    changed = Dataset.from_config(hub_config([copy])).content_sha256()
    assert changed != first and changed.startswith("sha256:")


def test_limit_and_filters_select_before_any_image(tmp_path: Path) -> None:
    file = write_parquet(tmp_path / "data.parquet", rows(6))
    dataset = Dataset.from_config(hub_config([file], question_type="odd", limit=2))
    assert [sample.id for sample in dataset.samples()] == ["101", "103"]


@pytest.mark.parametrize(
    ("hf", "message"),
    [
        (
            {"columns": {"image": "image", "question": "prompt"}},
            "dataset.hf.columns names columns the split does not have (question='prompt'); "
            "parquet train has ['qid', 'question', 'answers', 'kind', 'image']",
        ),
        (
            {"columns": {"image": "question", "question": "question"}},
            "dataset.hf.columns.image='question' is a Value column, not images; name a column "
            "of the Image feature (or a list of them)",
        ),
        (
            {"columns": {"image": "image"}},
            "dataset.hf.columns.question is not set; name the dataset's question column",
        ),
        (
            {"columns": {"image": "image", "question": "question", "label": "kind"}},
            "dataset.hf.columns has unknown role(s) ['label']; the roles are ['id', 'image', "
            "'question', 'answers', 'split', 'doc_class', 'question_type', 'document'], each "
            "set to a column of the dataset",
        ),
        ({"split": None}, "dataset.hf.split is not set; name the split to run (validation)"),
    ],
)
def test_a_config_that_does_not_fit_the_table_is_one_line(tmp_path, hf, message) -> None:
    file = write_parquet(tmp_path / "data.parquet", rows(1))
    with pytest.raises(DatasetError) as info:
        Dataset.from_config(hub_config([file], hf=hf))
    assert str(info.value) == message


def test_a_split_it_does_not_have_is_one_line(tmp_path: Path) -> None:
    file = write_parquet(tmp_path / "data.parquet", rows(1))
    with pytest.raises(DatasetError) as info:
        Dataset.from_config(hub_config([file], hf={"split": "validation"}))
    message = str(info.value)
    assert message.startswith("cannot load dataset.hf.path='parquet': ValueError: ")
    assert "validation" in message and "\n" not in message


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    table = rows(3)
    table[2]["qid"] = table[0]["qid"]
    file = write_parquet(tmp_path / "data.parquet", table)
    with pytest.raises(DatasetError, match=r"^row 2: duplicate sample id '100'; ids must be"):
        Dataset.from_config(hub_config([file])).check()
