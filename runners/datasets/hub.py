"""The ``hf`` dataset format: one split of any dataset the Hugging Face ``datasets`` library
loads, a hub repository or local parquet/arrow files, read as the runner's samples.

The split is prepared by ``datasets`` itself (downloaded into its cache, converted to arrow)
and then memory-mapped: reading the text columns of every row touches no image, and an image
is read from the table only when the pipeline decodes its sample. A cache filled on a machine
with internet (``HF_HOME``, ``HF_DATASETS_CACHE``) serves a machine without it, with
``HF_HUB_OFFLINE=1``.

Which column holds what is the dataset config's ``hf.columns``; a row becomes the same record
the other formats read (``id``, ``image``, ``prompt``, ``answer`` and the group columns), its
other text columns kept for ``dataset.prompt_template``. An image entry names its place in the
table, ``image[17]`` (column ``image``, row 17) or ``images[17][2]`` for a column of lists of
images; predictions.csv writes these in ``image_paths``.
"""

from __future__ import annotations

import logging
import mmap
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.datasets.text import DatasetError, files_sha256

# What hf.columns may map, and to which record key.
COLUMN_ROLES = {
    "id": "id",
    "image": "image",
    "question": "prompt",
    "answers": "answer",
    "split": "split",
    "doc_class": "doc_class",
    "question_type": "question_type",
    "document": "document",
}
_ENTRY = re.compile(r"(?P<column>.+?)\[(?P<row>\d+)\](?:\[(?P<index>\d+)\])?")
_ROWS_PER_BATCH = 4096


@dataclass(frozen=True)
class HubSource:
    """Which split of which dataset (``dataset.hf`` in the config)."""

    path: str  # a hub repository id, a local folder, or a builder name ("parquet") with files
    name: str | None  # the dataset's config (subset), if it has several
    split: str
    revision: str | None  # a hub branch, tag or commit; None: the default branch
    data_files: tuple[str, ...]  # local files for a builder name such as "parquet"
    columns: Mapping[str, str]  # role (COLUMN_ROLES) -> column

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HubSource:
        if not config.get("path"):
            raise DatasetError(
                "dataset.hf.path is not set; give a hub repository id (lmms-lab/DocVQA) or a "
                "local folder of parquet files"
            )
        if not config.get("split"):
            raise DatasetError("dataset.hf.split is not set; name the split to run (validation)")
        given = config.get("columns") or {}
        columns = {role: str(column) for role, column in given.items() if column not in (None, "")}
        unknown = sorted(set(given) - set(COLUMN_ROLES))
        if unknown:
            raise DatasetError(
                f"dataset.hf.columns has unknown role(s) {unknown}; the roles are "
                f"{list(COLUMN_ROLES)}, each set to a column of the dataset"
            )
        for role in ("image", "question"):
            if role not in columns:
                raise DatasetError(
                    f"dataset.hf.columns.{role} is not set; name the dataset's {role} column"
                )
        data_files = config.get("data_files") or ()
        return cls(
            path=str(config["path"]),
            name=config.get("name") or None,
            split=str(config["split"]),
            revision=config.get("revision") or None,
            data_files=(data_files,) if isinstance(data_files, str) else tuple(data_files),
            columns=columns,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "split": self.split,
            "revision": self.revision,
            "data_files": list(self.data_files),
            "columns": dict(sorted(self.columns.items())),
        }


@dataclass(frozen=True)
class TableImage:
    """One image inside a table: hashable, so decoded images can be cached by it."""

    table: HubTable
    column: str
    row: int
    index: int | None  # position in a list-of-images cell

    def read(self) -> bytes:
        cell = self.table.images.cell(self.row)
        if self.index is not None:
            cell = cell[self.index] if cell is not None and self.index < len(cell) else None
        return _image_bytes(cell, self)

    def __str__(self) -> str:
        return entry_name(self.column, self.row, self.index)


class HubTable:
    """A prepared split: its rows as records, its images by entry, its revision."""

    def __init__(self, source: HubSource) -> None:
        datasets = _import_datasets()
        self.source = source
        try:
            builder = datasets.load_dataset_builder(
                source.path,
                source.name,
                revision=source.revision,
                data_files=list(source.data_files) or None,
            )
            builder.download_and_prepare()
            table = builder.as_dataset(split=source.split)
        except Exception as error:  # datasets raises many kinds, each with a useful message
            raise DatasetError(_load_error(source, error)) from None
        self.table = table
        self.revision = _revision(builder, source.split)
        self.files = [Path(entry["filename"]) for entry in table.cache_files]
        self._check_columns()
        self.images = _ImageColumn(self.files, source.columns["image"])

    @property
    def folder(self) -> Path:
        """Where the prepared split lies (the datasets cache, or beside the local files)."""
        return self.files[0].parent if self.files else Path.cwd()

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(row number, record)`` for every row, reading no image."""
        columns = self.source.columns
        image_column = columns["image"]
        text_columns = [name for name in self.table.column_names if name != image_column]
        text = self.table.select_columns(text_columns).data
        counts = self._image_counts(image_column)
        row = 0
        for batch in text.to_batches(max_chunksize=_ROWS_PER_BATCH):
            for cells in batch.to_pylist():
                record = {name: value for name, value in cells.items() if _is_text(value)}
                for role, column in columns.items():
                    if role != "image":
                        record[COLUMN_ROLES[role]] = _as_record_value(cells.get(column), role)
                if "id" not in columns:
                    record["id"] = str(row)
                record["image"] = self._entries(image_column, row, counts)
                yield row, record
                row += 1

    def image(self, entry: str) -> TableImage:
        """The image an entry of a sample names (:func:`entry_name`)."""
        match = _ENTRY.fullmatch(entry)
        if match is None or match["column"] != self.source.columns["image"]:
            raise DatasetError(f"{entry!r} names no image column of the table")
        row, index = int(match["row"]), match["index"]
        if row >= len(self.table):
            raise DatasetError(f"{entry!r}: the table has {len(self.table)} rows")
        return TableImage(self, match["column"], row, None if index is None else int(index))

    def _entries(self, column: str, row: int, counts: list[int] | None) -> list[str]:
        if counts is None:
            return [entry_name(column, row, None)]
        return [entry_name(column, row, index) for index in range(counts[row])]

    def _image_counts(self, column: str) -> list[int] | None:
        """Images per row of a list-of-images column (None for a column of single images),
        counted from the list offsets without reading an image."""
        import pyarrow.compute

        if not _is_list(self.table.features[column]):
            return None
        lengths = pyarrow.compute.list_value_length(self.table.data.column(column))  # offsets only
        return [length or 0 for length in lengths.to_pylist()]

    def _check_columns(self) -> None:
        names = self.table.column_names
        absent = {
            role: column for role, column in self.source.columns.items() if column not in names
        }
        if absent:
            shown = ", ".join(f"{role}={column!r}" for role, column in absent.items())
            raise DatasetError(
                f"dataset.hf.columns names columns the split does not have ({shown}); "
                f"{self.source.path} {self.source.split} has {names}"
            )
        image_column = self.source.columns["image"]
        feature = self.table.features[image_column]
        if not _is_image(feature):
            raise DatasetError(
                f"dataset.hf.columns.image={image_column!r} is a {type(feature).__name__} "
                "column, not images; name a column of the Image feature (or a list of them)"
            )


class _ImageColumn:
    """The image column, read a cell at a time from the split's arrow files through memory maps
    of its own. Every ``RELEASE_BYTES`` read, the maps' pages are dropped from the process
    (``MADV_DONTNEED``; the kernel keeps them cached, a later read maps them again), so reading
    every image of a large split does not count the whole split in the process's memory."""

    RELEASE_BYTES = 64 * 2**20

    def __init__(self, files: list[Path], column: str) -> None:
        import pyarrow

        self._maps: list[mmap.mmap] = []
        chunks = []
        for path in files:  # arrow IPC streams, as datasets writes its cache
            with path.open("rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps.append(mapped)
            _advise(mapped, "MADV_RANDOM")  # a cell is read where it lies, no read-ahead
            stream = pyarrow.ipc.open_stream(pyarrow.py_buffer(mapped))
            chunks += stream.read_all().column(column).chunks  # zero-copy: views of the map
            _advise(mapped, "MADV_DONTNEED")  # the pages read to find the batches
        self._cells = pyarrow.chunked_array(chunks)
        self._read = 0
        self._lock = threading.Lock()

    def cell(self, row: int) -> Any:
        """Row ``row``'s cell: ``{"bytes": ..., "path": ...}``, or a list of them."""
        value = self._cells[row].as_py()  # copies the cell's bytes out of the map
        size = sum(len(item.get("bytes") or b"") for item in _as_list(value) if item)
        with self._lock:
            self._read += size
            if self._read >= self.RELEASE_BYTES:
                self._read = 0
                for mapped in self._maps:
                    _advise(mapped, "MADV_DONTNEED")
        return value


def _advise(mapped: mmap.mmap, advice: str) -> None:
    """``madvise`` where the system has it (not on Windows: there the pages stay counted)."""
    if hasattr(mapped, "madvise") and hasattr(mmap, advice):
        mapped.madvise(getattr(mmap, advice))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def entry_name(column: str, row: int, index: int | None) -> str:
    return f"{column}[{row}]" + ("" if index is None else f"[{index}]")


def _import_datasets() -> Any:
    # The hub client logs every HTTP request at INFO, which a run's log would show.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "dataset.format=hf needs the datasets library: pip install 'model-interface[datasets]'"
        ) from None
    return datasets


def _revision(builder: Any, split: str) -> str:
    """The split's revision: the hub commit its files came from (what ``datasets`` keys its
    cache by), or for local files a SHA-256 of their names and content."""
    files = [str(path) for path in (builder.config.data_files or {}).get(split, [])]
    if files and all(Path(path).is_file() for path in files):
        return "sha256:" + files_sha256(Path(path) for path in sorted(files))
    return str(builder.hash)


def _load_error(source: HubSource, error: Exception) -> str:
    what = f"dataset.hf.path={source.path!r}" + (f" ({source.name})" if source.name else "")
    text = " ".join(str(error).split()) or type(error).__name__
    if "split" in text.lower() and source.split not in text:
        text += f" (dataset.hf.split={source.split!r})"
    hint = (
        "; offline (HF_HUB_OFFLINE=1) it must be in the datasets cache (HF_HOME or "
        "HF_DATASETS_CACHE): load it once where there is internet and copy the cache"
    )
    return f"cannot load {what}: {type(error).__name__}: {text}{hint}"


def _is_list(feature: Any) -> bool:
    return hasattr(feature, "feature") and not hasattr(feature, "decode")


def _is_image(feature: Any) -> bool:
    import datasets

    inner = feature.feature if _is_list(feature) else feature
    return isinstance(inner, datasets.Image)


def _image_bytes(cell: Any, image: TableImage) -> bytes:
    if isinstance(cell, Mapping) and cell.get("bytes"):
        return bytes(cell["bytes"])
    # An Image cell holding only a path points outside the table, to a file we may not read.
    raise DatasetError(f"{image} holds no image bytes")


def _is_text(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _as_record_value(value: Any, role: str) -> Any:
    """A cell as the record holds it: answers keep their list (several acceptable answers),
    a list in a group column (DocVQA's question types) becomes one comma-separated value."""
    if role == "answers" or not isinstance(value, list):
        return value
    return ", ".join(str(item) for item in value)
