"""Dataset readers: a dataset on disk becomes a stream of :class:`Sample` (text only).

Images are not read here: the pipeline decodes them a few batches ahead of the model, so a
dataset of any size streams through in constant memory (unless ``shuffle`` is on, which needs
every row's text, never its images).

Formats:

* ``vlmhyperbench``: ``annotation.csv``, ``;``-separated, UTF-8 with or without BOM, columns
  ``data_index;split;image_path;question;answer;doc_class;question_type[;answer_bbox]``. As in
  VLMHyperBench's own tools, a question is identified by its 0-based row (the ``id`` of their
  answers file); ``data_index`` names the document, repeated by every question about it.
* ``csv``: comma-separated, columns ``id, image, prompt, answer`` (a JSON list in ``image``
  gives several images), optional ``split, doc_class, question_type``.
* ``jsonl``: one object per line with the same keys as ``csv``; ``image`` a string or a list.
* ``kie_json``: VLMHyperBench's field-extraction layout, ``jsons/<page>.json`` beside
  ``images/<page>.<png|jpg|...>``; each JSON is the page's fields, a flat object
  (``{"Фамилия": "ОСИПОВ"}``) or ``{"fields": {name: {"value": ..., "bboxes": [...]}}}``. The
  sample id is the page name; there is no question (the task asks for the fields).
* ``hf``: one split of a dataset the Hugging Face ``datasets`` library loads (a hub
  repository, or local parquet/arrow files), its columns named in ``dataset.hf.columns``;
  images are read from the table (:mod:`runners.datasets.hub`).

Image paths are relative to the dataset root and may not leave it.

An answer may list several acceptable answers, scored by the best match: a JSON list in JSONL
(``"answer": ["10", "ten"]``), or a cell holding a JSON array of strings in the CSV formats
(``["10", "ten"]``; anything else in a cell, ``[1, 2]`` included, is one answer as written).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import itertools
import json
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from model_interface.images import ImageLoadError
from runners.datasets.hub import HubSource, HubTable, TableImage
from runners.datasets.text import (
    DatasetError,
    NotUtf8,
    files_sha256,
    not_utf8,
    parse_json,
    read_utf8,
    resave_advice,
)

FILTER_FIELDS = ("split", "doc_class", "question_type")
# A VLMHyperBench annotation.csv's columns, in their order (';'-separated).
VLMHYPERBENCH_COLUMNS = (
    "data_index",
    "split",
    "image_path",
    "question",
    "answer",
    "doc_class",
    "question_type",
)
# One answer, several acceptable ones, or (for field extraction) an object of fields.
Reference = str | tuple[str, ...] | Mapping[str, Any]


@dataclass(frozen=True)
class Sample:
    id: str
    position: int  # 0-based, among the annotation file's records: stable whatever is filtered
    images: tuple[str, ...]  # as written in the dataset, relative to its root
    prompt: str  # after the prompt template
    reference: Reference | None  # ground-truth answer(s), if the dataset has any
    split: str | None = None
    doc_class: str | None = None
    question_type: str | None = None
    document: str | None = None  # the document asked about (VLMHyperBench's data_index)


@dataclass(frozen=True)
class _Format:
    default_file: str
    # dataset column -> Sample field; the rest of a row is only available to the template
    columns: Mapping[str, str]
    required: tuple[str, ...]  # columns every row must have
    non_empty: tuple[str, ...]  # ... and may not leave empty
    ids_by_row: bool = False  # a sample's id is its 0-based row, not a column of its own


FORMATS = {
    "vlmhyperbench": _Format(
        "annotation.csv",
        {
            "data_index": "document",
            "image_path": "images",
            "question": "prompt",
            "answer": "reference",
        },
        ("data_index", "image_path", "question", "answer"),
        ("image_path", "question"),
        ids_by_row=True,
    ),
    # An empty prompt is the task's to judge: field extraction asks its own question.
    "csv": _Format(
        "data.csv",
        {"id": "id", "image": "images", "prompt": "prompt", "answer": "reference"},
        ("image", "prompt"),
        ("image",),
    ),
    "jsonl": _Format(
        "data.jsonl",
        {"id": "id", "image": "images", "prompt": "prompt", "answer": "reference"},
        ("image", "prompt"),
        ("image",),
    ),
    "kie_json": _Format(
        "jsons",
        {"id": "id", "image": "images", "prompt": "prompt", "answer": "reference"},
        ("id", "image", "answer"),
        ("id", "image"),
    ),
    # Records built by runners.datasets.hub from the columns dataset.hf.columns names.
    "hf": _Format(
        "",
        {
            "id": "id",
            "image": "images",
            "prompt": "prompt",
            "answer": "reference",
            "document": "document",
        },
        ("id", "image", "prompt"),
        ("id", "image"),
    ),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Dataset:
    name: str
    format: str
    root: Path
    file: Path
    prompt_template: str = "{prompt}"
    filters: Mapping[str, frozenset[str]] = field(default_factory=dict)
    limit: int | None = None
    shuffle: bool = False
    seed: int = 0
    prompt_collection: PromptCollection | None = None
    # What a shuffled selection is stratified by (the task's stratum): see samples().
    stratum: Callable[[Sample], Any] | None = field(default=None, compare=False)
    table: HubTable | None = field(default=None, compare=False)  # format hf: the split

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Dataset:
        """Build from a ``dataset`` config group entry, checking it before any sample is read."""
        data_format = config.get("format") or "vlmhyperbench"
        if data_format not in FORMATS:
            raise DatasetError(
                f"unknown dataset format {data_format!r}; choose one of {sorted(FORMATS)}"
            )
        filters = {
            name: frozenset(str(value) for value in _as_list(config[name]))
            for name in FILTER_FIELDS
            if config.get(name) is not None
        }
        limit = config.get("limit")
        if limit is not None and int(limit) < 0:
            raise DatasetError(f"dataset.limit must be >= 0 or null, got {limit}")
        source = HubSource.from_config(config.get("hf") or {}) if data_format == "hf" else None
        if source is None:
            root, file = _annotation_file(config, data_format)
        collection = config.get("prompt_collection")
        prompt_collection = (
            PromptCollection.read(_collection_path(collection, root if source is None else None))
            if collection
            else None
        )
        table, default_name = None, None
        if source is not None:  # checked all else first: preparing the split may download it
            table = HubTable(source)
            root = file = table.folder
            default_name = source.path.rstrip("/").split("/")[-1]
        dataset = cls(
            name=config.get("name") or default_name or root.name,
            format=data_format,
            root=root,
            file=file,
            table=table,
            prompt_template=config.get("prompt_template") or "{prompt}",
            filters=filters,
            limit=None if limit is None else int(limit),
            shuffle=bool(config.get("shuffle", False)),
            seed=int(config.get("seed") or 0),
            prompt_collection=prompt_collection,
        )
        if data_format not in ("jsonl", "kie_json", "hf"):
            with dataset._open() as handle:
                dataset._csv_reader(handle)  # a wrong header or separator fails here, early
        return dataset

    def all_samples(self) -> Iterator[Sample]:
        """Every record of the annotation file as a sample (text only, no image), filtered out
        or not.

        Raises :class:`DatasetError` for the first bad record or duplicate id anywhere in the
        file, so that reading it all before a run means a mistake never surfaces halfway.
        """
        return self._read()

    def check(self) -> int:
        """Read every record of the annotation file and count them (see :meth:`all_samples`)."""
        return sum(1 for _ in self._read())

    def content_sha256(self) -> str:
        """The annotation file's hash (of every ground-truth file's name and content, for a
        folder of them; for a hub dataset, the commit it was loaded from): a run's answers
        belong to exactly this content."""
        if self.table is not None:
            return self.table.revision
        files = sorted(self.file.glob("*.json")) if self.file.is_dir() else [self.file]
        return files_sha256(files)

    def samples(self, records: Iterable[Sample] | None = None) -> Iterator[Sample]:
        """The dataset's samples after filters, shuffling and ``limit``: the selection, of
        ``records`` if given (every record of the file, as :meth:`all_samples` reads them).

        Shuffled, they are also stratified by :attr:`stratum`: any first k of them hold each
        stratum in proportion to its share (within one sample), so a limit of any size takes a
        subset that looks like the whole. Unshuffled, they are the first the filters keep, and
        no record after the last of them is read.
        """
        samples = filter(self.keeps, self._read() if records is None else records)
        if self.shuffle:
            samples = _stratified_shuffle(list(samples), random.Random(self.seed), self.stratum)
        yield from itertools.islice(samples, self.limit)

    def image_source(self, entry: str) -> Path | TableImage:
        """Where a sample's image entry is read from: a file under the root, or a table cell."""
        if self.table is not None:
            return self.table.image(entry)
        return self.image_path(entry)

    def image_path(self, relative: str) -> Path:
        """The file behind an image entry; refuses paths that leave the dataset root."""
        path = inside_root(self.root, relative)
        if path is None:
            raise ImageLoadError(
                f"image path {relative!r} leaves the dataset root {str(self.root)!r}; "
                "image paths must be relative to the root and stay inside it"
            )
        return path

    def keeps(self, sample: Sample) -> bool:
        """Whether the filters keep ``sample``."""
        if not self.filters:  # the usual case, asked of every sample of the file
            return True
        return self._passes_filters({name: getattr(sample, name) for name in FILTER_FIELDS})

    def _passes_filters(self, groups: Mapping[str, str | None]) -> bool:
        return all(groups[name] in values for name, values in self.filters.items())

    def _read(self) -> Iterator[Sample]:
        spec = FORMATS[self.format]
        seen: set[str] = set()
        for position, (line, row) in enumerate(self._rows()):
            where = f"row {line}" if self.table is not None else f"{self.file.name} line {line}"
            if None in row:  # surplus fields, under the key None (see _record)
                raise DatasetError(
                    f"{where} has more fields than the header {list(spec.required)}...; quote "
                    "values that contain the separator"
                )
            missing = [
                column
                for column in spec.required
                if row.get(column) is None or (column in spec.non_empty and row[column] == "")
            ]
            if missing:
                raise DatasetError(
                    f"{where} has no {missing}; required columns: {list(spec.required)}, "
                    f"of which {list(spec.non_empty)} may not be empty"
                )
            fields = {name: row.get(column) for column, name in spec.columns.items()}
            if spec.ids_by_row:  # unique by construction: no id is remembered
                sample_id = str(position)
            else:
                sample_id = str(fields["id"]) if _present(fields["id"]) else str(line)
                if sample_id in seen:
                    raise DatasetError(
                        f"{where}: duplicate sample id {sample_id!r}; ids must be unique"
                    )
                seen.add(sample_id)
            groups = {name: _optional_str(row.get(name)) for name in FILTER_FIELDS}
            question = str(fields["prompt"])
            if self.prompt_collection is not None and self._passes_filters(groups):
                question = self.prompt_collection.prompt(groups, where)
            yield Sample(
                id=sample_id,
                position=position,
                images=_image_list(fields["images"], where),
                prompt=self._render_prompt(row, question, where),
                reference=_reference(fields["reference"], where),
                **groups,
                document=_optional_str(fields.get("document")),
            )

    def _rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            yield from self._decoded_rows()
        except UnicodeDecodeError:
            raise DatasetError(resave_advice(not_utf8(self.file), self.file)) from None

    def _open(self) -> TextIO:
        return self.file.open(encoding="utf-8-sig", newline="")

    def _csv_reader(self, handle: TextIO) -> tuple[Any, list[str]]:
        """A ``csv.reader`` over the file, and its header, which must hold the format's columns."""
        delimiter = ";" if self.format == "vlmhyperbench" else ","
        # strict: a quote never closed is an error, not a field holding the rest of the file.
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        required = FORMATS[self.format].required
        try:
            header = next(reader, [])
        except UnicodeDecodeError:
            raise DatasetError(resave_advice(not_utf8(self.file), self.file)) from None
        except csv.Error as error:
            raise DatasetError(f"{self.file.name} line 1 is not valid CSV ({error})") from None
        absent = [column for column in required if column not in header]
        if absent:
            raise DatasetError(
                f"{self.file} has no column(s) {absent}; its header is {header} (the "
                f"{self.format} format needs {list(required)}, separated by {delimiter!r})"
            )
        return reader, header

    def _decoded_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.table is not None:
            yield from self.table.rows()
            return
        if self.format == "kie_json":
            yield from self._ground_truth_files()
            return
        if self.format == "jsonl":
            with self._open() as handle:
                for line, text in enumerate(handle, start=1):
                    if not text.strip():
                        continue
                    row = parse_json(text, f"{self.file.name} line {line}")
                    if not isinstance(row, dict):
                        raise DatasetError(f"{self.file.name} line {line}: expected a JSON object")
                    yield line, row
            return
        with self._open() as handle:
            reader, header = self._csv_reader(handle)
            width = len(header)
            start = reader.line_num + 1  # the line the next record starts on
            try:
                for fields in reader:
                    if fields:  # a blank line holds no record
                        yield start, _record(header, width, fields)
                    start = reader.line_num + 1
            except csv.Error as error:
                raise DatasetError(
                    f"{self.file.name} line {start} is not valid CSV ({error}): a quote that is "
                    "never closed (its field would swallow the lines after it) or text after a "
                    "closing quote; fix the quoting (a quote inside a quoted value is written "
                    'twice: "")'
                ) from None

    def _ground_truth_files(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """One row per ``jsons/<page>.json`` (sorted by name), its image found beside it."""
        for number, path in enumerate(sorted(self.file.glob("*.json")), start=1):
            try:
                text = read_utf8(path)
            except NotUtf8 as error:
                raise DatasetError(resave_advice(error, path)) from None
            record = parse_json(text, path.name)
            candidates = [f"images/{path.stem}{suffix}" for suffix in IMAGE_SUFFIXES]
            image = next((c for c in candidates if (self.root / c).is_file()), None)
            if image is None:
                raise DatasetError(
                    f"{path.name} has no image beside it; looked for {candidates[0]}, "
                    f"{candidates[1]}, ... in {self.root}"
                )
            yield (
                number,
                {
                    "id": path.stem,
                    "image": image,
                    "prompt": "",
                    "answer": _fields_of(record, path.name),
                },
            )

    def _render_prompt(self, row: Mapping[str, Any], prompt: str, where: str) -> str:
        try:
            return self.prompt_template.format_map({**row, "prompt": prompt})
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as error:
            raise DatasetError(
                f"dataset.prompt_template {self.prompt_template!r} failed on {where}: {error!r}; "
                f"placeholders may name {{prompt}} or a column: {sorted(map(str, row))}"
            ) from None


def _annotation_file(config: Mapping[str, Any], data_format: str) -> tuple[Path, Path]:
    """The dataset root and its annotation file, both checked to exist."""
    if not config.get("root"):
        raise DatasetError("dataset.root is not set; pass dataset.root=/path/to/dataset")
    root = Path(config["root"]).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset root {str(root)!r} is not a directory; fix dataset.root")
    file = root / (config.get("file") or FORMATS[data_format].default_file)
    if not (file.is_dir() if data_format == "kie_json" else file.is_file()):
        raise DatasetError(
            f"dataset file {str(file)!r} does not exist; fix dataset.file or dataset.root"
        )
    return root, file


def _record(header: list[str], width: int, fields: list[str]) -> dict[Any, Any]:
    """A CSV line's fields by column, as ``csv.DictReader`` gives them (a plain reader is twice
    as fast): columns a short line lacks are None, surplus fields a list under the key None."""
    record: dict[Any, Any] = dict(zip(header, fields, strict=False))
    if len(fields) < width:
        record.update(dict.fromkeys(header[len(fields) :]))
    elif len(fields) > width:
        record[None] = fields[width:]
    return record


def _collection_path(path: str, root: Path | None) -> Path:
    """A prompt collection's file: as given (absolute, or relative to the current directory),
    else relative to the dataset root (if it has one)."""
    given = Path(path).expanduser()
    return given if given.is_absolute() or given.exists() or root is None else root / given


@dataclass(frozen=True)
class PromptCollection:
    """VLMHyperBench's prompts tuned per model: a ``;``-separated CSV with columns
    ``prompt;doc_class_question_type`` (and an informational ``cer``), UTF-8 with or without
    BOM. Each sample's question is replaced by the prompt keyed ``"<doc_class> <question_type>"``.
    """

    path: Path
    prompts: Mapping[str, str]

    @classmethod
    def read(cls, path: Path) -> PromptCollection:
        path = path.expanduser().resolve()
        if not path.is_file():
            raise DatasetError(
                f"prompt collection {str(path)!r} does not exist; fix dataset.prompt_collection"
            )
        try:
            text = read_utf8(path)
        except NotUtf8 as error:
            raise DatasetError(f"prompt collection {resave_advice(error, path)}") from None
        prompts: dict[str, str] = {}
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=";", strict=True)
        try:
            absent = {"prompt", "doc_class_question_type"} - set(reader.fieldnames or [])
            if absent:
                raise DatasetError(
                    f"prompt collection {path.name} has no column(s) {sorted(absent)}; its "
                    f"header is {reader.fieldnames} (columns are separated by ';')"
                )
            for row in reader:
                key = (row["doc_class_question_type"] or "").strip()
                if key in prompts:
                    raise DatasetError(
                        f"prompt collection {path.name} line {reader.line_num}: a second prompt "
                        f"for {key!r}; keep one"
                    )
                prompts[key] = row["prompt"] or ""
        except csv.Error as error:
            raise DatasetError(
                f"prompt collection {path.name} line {reader.line_num} is not valid CSV "
                f"({error}); fix the quoting"
            ) from None
        return cls(path, prompts)

    def prompt(self, groups: Mapping[str, str | None], where: str) -> str:
        key = f"{groups['doc_class'] or ''} {groups['question_type'] or ''}"
        if key not in self.prompts:
            known = sorted(self.prompts)
            shown = ", ".join(map(repr, known[:10])) + (", ..." if len(known) > 10 else "")
            raise DatasetError(
                f"prompt collection {self.path.name} has no prompt for {key!r} ({where}); it "
                f"has {shown}"
            )
        return self.prompts[key]

    def content_sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def _stratified_shuffle(
    samples: list[Sample], rng: random.Random, stratum: Callable[[Sample], Any] | None
) -> list[Sample]:
    """The samples in random order, arranged so that every prefix holds each stratum in
    proportion: the i-th of a stratum's n samples is placed at a random point of the slot
    [i/n, (i+1)/n) of the whole order."""
    rng.shuffle(samples)
    if stratum is None:
        return samples
    members: dict[Any, list[Sample]] = {}
    for sample in samples:
        members.setdefault(stratum(sample), []).append(sample)
    placed = [
        ((index + rng.random()) / len(group), sample)
        for group in members.values()
        for index, sample in enumerate(group)
    ]
    placed.sort(key=lambda pair: pair[0])
    return [sample for _, sample in placed]


def inside_root(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names under ``root`` (a resolved folder), symbolic links followed,
    or None where it leads out of ``root`` (an absolute path elsewhere, ``..``, a link)."""
    joined = root / relative  # an absolute ``relative`` replaces the root
    # Resolving every component of every path is slow; resolve each folder once and the file
    # name only when it is a symbolic link.
    if joined.name in ("", ".", "..") or joined.is_symlink():
        path = joined.resolve()
    else:
        path = _resolved_folder(joined.parent) / joined.name
    return path if path.is_relative_to(root) else None


@functools.lru_cache(maxsize=4096)
def _resolved_folder(folder: Path) -> Path:
    return folder.resolve()


def _image_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) and value.lstrip().startswith("["):
        value = parse_json(value, where, "image list")
    images = tuple(str(item) for item in _as_list(value))
    if not images or not all(images):
        raise DatasetError(f"{where}: a sample needs at least one image path, got {value!r}")
    return images


def _reference(value: Any, where: str) -> Reference | None:
    """A dataset's answer as one string or a tuple of acceptable ones (module docstring)."""
    if value is None:
        return None
    if isinstance(value, str):
        return decode_reference(value)
    if isinstance(value, list):  # JSONL
        if not value or not all(isinstance(item, (str, int, float)) for item in value):
            raise DatasetError(
                f"{where}: an answer list must hold at least one string or number, got {value!r}"
            )
        return tuple(str(item) for item in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):  # fields; the task decides whether it can score them
        return value
    raise DatasetError(
        f"{where}: the answer must be a string, a number, a list of acceptable answers or an "
        f"object of fields, got {type(value).__name__} {value!r}"
    )


def decode_reference(text: str) -> Reference:
    """A CSV cell's answer: a JSON array of strings is a list of acceptable answers."""
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            items = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError):
            return text
        if items and all(isinstance(item, str) for item in items):
            return tuple(items)
    return text


def encode_reference(reference: Reference | None) -> str | None:
    """A reference for a CSV cell: a list of acceptable answers as a JSON array, an object of
    fields as a JSON object."""
    if isinstance(reference, tuple):
        return json.dumps(list(reference), ensure_ascii=False)
    if isinstance(reference, Mapping):
        return json.dumps(reference, ensure_ascii=False)
    return reference


def _fields_of(record: Any, where: str) -> dict[str, Any]:
    """A ground-truth object as field → value: a flat object as it is; VLMHyperBench's
    ``{"fields": {name: {"value": ..., "bboxes": ...}}}`` reduced to the values."""
    if not isinstance(record, dict):
        raise DatasetError(
            f"{where}: expected a JSON object of fields, got {type(record).__name__}"
        )
    fields = record.get("fields")
    layout = isinstance(fields, dict) and any(
        isinstance(value, dict) and "value" in value for value in fields.values()
    )
    if not layout:
        return record
    for name, value in fields.items():
        if not (isinstance(value, dict) and "value" in value):
            raise DatasetError(
                f'{where}: field {name!r} has no "value", as every field of the '
                '{"fields": {name: {"value": ...}}} layout must (null for an empty field)'
            )
    return {name: value["value"] for name, value in fields.items()}


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _optional_str(value: Any) -> str | None:
    return str(value) if _present(value) else None
