"""predictions.csv: its columns, appended one batch at a time, read back without a torn last
row; answers.csv, streamed beside it in VLMHyperBench's format.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from runners.datasets import encode_reference
from runners.errors import RunnerError
from runners.rundir.files import (
    csv_cell,
    read_complete_rows,
    replace_atomically,
    temporary_path,
    write_all,
    write_error,
    write_rows,
)

PREDICTION_COLUMNS = [
    "sample_id",
    "sample_index",
    "dataset",
    "model",
    "framework",
    "image_paths",
    "prompt",
    "prediction",  # the answer (a reasoning model's thinking apart, in reasoning)
    "reasoning",
    "reference",
    "call_s",
    "batch_size",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "truncated",  # the reasoning never ended within max_new_tokens: no answer
    "image_size",  # as the model received each image, "448x336" ("a;b" for several)
    "error",
    "split",
    "doc_class",
    "question_type",
    "document_id",
]


def sample_columns(sample: Any, dataset_name: str) -> dict[str, Any]:
    """The columns of a predictions.csv row that come from its sample (the others come from the
    model's answer)."""
    return {
        "sample_id": sample.id,
        "sample_index": sample.position,
        "dataset": dataset_name,
        "image_paths": json.dumps(list(sample.images), ensure_ascii=False),
        "reference": encode_reference(sample.reference),
        "split": sample.split,
        "doc_class": sample.doc_class,
        "question_type": sample.question_type,
        "document_id": sample.document,
    }


def answers_exist(path: Path) -> RunnerError:
    """The refusal of a run that would write answers where ``path`` holds some already."""
    return RunnerError(
        f"{path} exists; pass runner.resume=true to continue that run, or choose another "
        "run_name / hydra.run.dir"
    )


class PredictionsFile:
    """predictions.csv of one run: resumable, appended to batch by batch.

    It remembers where each row starts in the file, so rows can be read back in dataset order
    (:meth:`rewrite_in_order`) with memory for three integers per row (24 bytes), not the rows
    themselves.
    """

    def __init__(self, path: Path, columns: Sequence[str] = PREDICTION_COLUMNS) -> None:
        self.path = path
        self.columns = list(columns)
        # Per row: its sample_index, and where it starts and ends in the file.
        self._indexes, self._starts, self._ends = array("q"), array("q"), array("q")
        self._answered = 0  # rows without an error: those a resumed run keeps
        self._size = 0
        self._descriptor: int | None = None
        self._buffer = io.StringIO()
        self._writer = csv.DictWriter(self._buffer, fieldnames=self.columns, extrasaction="ignore")

    def open(self, *, resume: bool) -> list[dict[str, str]]:
        """Open for appending; returns the rows kept from an earlier attempt.

        With ``resume``, rows from an earlier attempt are kept except failed ones (so they are
        tried again) and a torn last row; without it, an existing file is an error, so that no
        sample is ever written twice. Columns the file has beyond :attr:`columns` (an earlier
        attempt's metric scores) are dropped: scores are recomputed when the run ends.
        """
        kept: list[dict[str, str]] = []
        if self.path.exists():
            if not resume:
                raise answers_exist(self.path)
            kept = [row for row in read_complete_rows(self.path) if not row.get("error")]
        self._forget_rows()
        replace_atomically(self.path, lambda handle: self._write_rows(handle, kept))
        self._descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        return kept

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write rows to the end of the file, each batch handed to the operating system whole."""
        assert self._descriptor is not None, "open() first"
        data = self._encode(rows)
        try:
            write_all(self._descriptor, data)
        except OSError as error:
            self.close()
            raise write_error(self.path, error) from None

    @property
    def n_rows(self) -> int:
        """Rows in the file: those kept on opening and those appended since."""
        return len(self._indexes)

    @property
    def n_answered(self) -> int:
        """Rows of :attr:`n_rows` without an error: what resuming keeps (failed samples are
        asked again)."""
        return self._answered

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def rewrite_in_order(
        self, transform: Callable[[dict[str, str]], dict[str, Any]], columns: Sequence[str]
    ) -> None:
        """Rewrite the file in ``sample_index`` order, each row passed through ``transform`` and
        written with ``columns``. Reads one row at a time."""
        self.close()
        indexes = self._indexes
        if all(indexes[i] <= indexes[i + 1] for i in range(len(indexes) - 1)):
            records = self._records_as_written()  # the usual case: one read, front to back
        else:
            records = self._records_in_order(sorted(range(len(indexes)), key=indexes.__getitem__))

        def rows_in_order() -> Iterator[dict[str, Any]]:
            for record in records:
                yield transform(dict(zip(self.columns, record, strict=True)))

        replace_atomically(self.path, lambda handle: write_rows(handle, columns, rows_in_order()))
        self._forget_rows()  # the offsets described the file before this rewrite

    def _records_as_written(self) -> Iterator[list[str]]:
        with self.path.open(encoding="utf-8", newline="") as source:
            reader = csv.reader(source)
            next(reader)  # the header
            yield from reader

    def _records_in_order(self, order: Sequence[int]) -> Iterator[list[str]]:
        with self.path.open("rb") as source:
            for row in order:
                source.seek(self._starts[row])
                text = source.read(self._ends[row] - self._starts[row]).decode("utf-8")
                (record,) = csv.reader(io.StringIO(text, newline=""))
                yield record

    def _forget_rows(self) -> None:
        self._indexes, self._starts, self._ends = array("q"), array("q"), array("q")
        self._size, self._answered = 0, 0

    def _write_rows(self, handle: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        self._writer.writeheader()
        header = self._take()
        handle.write(header)
        self._size = len(header)
        handle.write(self._encode(rows))

    def _encode(self, rows: Sequence[Mapping[str, Any]]) -> bytes:
        chunks = []
        for row in rows:
            self._writer.writerow(row)
            chunk = self._take()
            self._indexes.append(int(row["sample_index"]))
            self._starts.append(self._size)
            self._size += len(chunk)
            self._ends.append(self._size)
            self._answered += not row.get("error")
            chunks.append(chunk)
        return b"".join(chunks)

    def _take(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode("utf-8")


class CsvStream:
    """A CSV written row by row into a temporary file, renamed into place by :meth:`close`
    (so a large file never sits in memory, and a half-written one never replaces a whole one)."""

    def __init__(
        self, path: Path, columns: Sequence[str], *, delimiter: str = ",", bom: bool = False
    ) -> None:
        self.path, self.temporary = path, temporary_path(path)
        try:
            encoding = "utf-8-sig" if bom else "utf-8"
            self._handle = self.temporary.open("w", encoding=encoding, newline="")
            self._writer = csv.DictWriter(
                self._handle, fieldnames=list(columns), delimiter=delimiter, extrasaction="ignore"
            )
            self._writer.writeheader()
        except OSError as error:
            self.discard()
            raise write_error(path, error) from None

    def write(self, row: Mapping[str, Any]) -> None:
        try:
            self._writer.writerow({key: csv_cell(value) for key, value in row.items()})
        except OSError as error:
            self.discard()
            raise write_error(self.path, error) from None

    def close(self) -> None:
        try:
            self._handle.close()
            os.replace(self.temporary, self.path)
        except OSError as error:
            self.discard()
            raise write_error(self.path, error) from None

    def discard(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and not handle.closed:
            with contextlib.suppress(OSError):
                handle.close()
        self.temporary.unlink(missing_ok=True)


def answer_files(run_dir: Path) -> list[Path]:
    """Every predictions file of a run directory: its own, and each shard's."""
    return [run_dir / "predictions.csv", *sorted(run_dir.glob("shards/*/predictions.csv"))]


def has_rows(path: Path) -> bool:
    """Whether a predictions file holds at least one row after its header (reads two lines)."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        handle.readline()
        return bool(handle.readline().strip())


def answers_stream(path: Path) -> CsvStream:
    """answers.csv in VLMHyperBench's format: ``id;model_answer``, UTF-8 with BOM; rows are
    ``{"id": sample_index, "model_answer": prediction}``."""
    return CsvStream(path, ["id", "model_answer"], delimiter=";", bom=True)
