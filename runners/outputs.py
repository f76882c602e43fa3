"""The run directory: every file a run writes, and the readers of those files.

A run directory holds:

* ``fingerprint.json``: what decides the run's answers (:mod:`runners.fingerprint`);
* ``predictions.csv``: one row per sample (:data:`PREDICTION_COLUMNS`, then one column per
  quality metric), in dataset order once the run ends;
* ``metrics.csv``: one row of counts, timing, resources and mean quality;
* ``metrics_by_group.csv``: quality per document class and question type;
* ``answers.csv``: the answers in VLMHyperBench's format, ``id;model_answer`` (UTF-8 with BOM),
  ``id`` the sample's 0-based position in the annotation file, as their evaluator reads it;
* ``environment.json``: versions, device, git commit, seed;
* ``job.json`` (sweep jobs only): the job's number, status and error, for the sweep summary;
* ``.hydra/``: Hydra's record of the config, enough to reproduce the run;
* for a run split into shards (:mod:`runners.shards`), ``shards/<i>-of-<n>/`` per shard: its
  own predictions.csv as answered, ``shard.json`` (what its last attempt cost), and its
  environment.json, job.json and .hydra/; the files above are the merged run's, and
  ``shards.csv`` has a row per shard.

While a run (or a shard) answers, it holds a lock on ``.lock`` beside its predictions.csv, so
a second process started into the same place stops at once instead of writing beside it.

predictions.csv is appended to one batch at a time, each batch written in full before the next,
so a run killed at any point (``kill -9``, a full disk) loses at most the batch in flight; a
torn last row, even one cut inside a multi-byte character, is dropped when the run resumes.
Every other file is written to a temporary file and renamed over the old one, so it is
either complete or as it was. A write that fails (a full disk) ends the run with one line
naming the file, and leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from runners.config import RunnerError

PREDICTION_COLUMNS = [
    "sample_id",
    "sample_index",
    "dataset",
    "model",
    "framework",
    "image_paths",
    "prompt",
    "prediction",
    "reference",
    "call_s",
    "batch_size",
    "prompt_tokens",
    "completion_tokens",
    "error",
    "split",
    "doc_class",
    "question_type",
    "document_id",
]


def sample_columns(sample: Any, dataset_name: str) -> dict[str, Any]:
    """The columns of a predictions.csv row that come from its sample (the others come from the
    model's answer)."""
    from runners.datasets import encode_reference

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


# Versions recorded in environment.json, by distribution name.
RECORDED_PACKAGES = [
    "model-interface",
    "torch",
    "torchvision",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "accelerate",
    "flash-attn",
    "vllm",
    "sglang",
    "httpx",
    "hydra-core",
    "omegaconf",
    "pillow",
    "numpy",
    "pandas",
    "jiwer",
]


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
            _write_all(self._descriptor, data)
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


def read_complete_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV written by :class:`PredictionsFile`, without a torn last row (see
    :func:`iter_complete_rows`)."""
    return list(iter_complete_rows(path))


def iter_complete_rows(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV written by :class:`PredictionsFile`, one at a time, without a torn last row.

    A write cut short (a kill, a full disk) leaves the file ending inside a row: maybe inside a
    quoted field, maybe inside a multi-byte character. Only a row followed by a line break and
    with as many fields as the header counts.
    """
    with path.open("rb") as handle:
        text = io.TextIOWrapper(_Prefix(handle, _end_of_last_line(handle)), "utf-8", newline="")
        header: list[str] | None = None
        try:
            # csv.Error: an unterminated quote, the last write was cut off inside a field.
            for record in csv.reader(text):
                if header is None:
                    header = record
                elif len(record) == len(header):
                    yield dict(zip(header, record, strict=True))
        except csv.Error:
            return
        except UnicodeDecodeError:
            raise RunnerError(
                f"{path} is damaged: byte {_first_bad_byte(path)} is not UTF-8, which no torn "
                "write leaves before the end; move the file away (or delete the run directory) "
                "to start over"
            ) from None


def _first_bad_byte(path: Path) -> int | None:
    data = path.read_bytes()
    try:
        data[: data.rfind(b"\n") + 1].decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start
    return None


def _end_of_last_line(handle: Any) -> int:
    """The size of the file up to and including its last line break (0: none)."""
    end = handle.seek(0, os.SEEK_END)
    while end > 0:
        start = max(0, end - 2**16)
        handle.seek(start)
        block = handle.read(end - start)
        if (position := block.rfind(b"\n")) >= 0:
            handle.seek(0)
            return start + position + 1
        end = start
    handle.seek(0)
    return 0


class _Prefix(io.RawIOBase):
    """The first ``size`` bytes of a binary file, read as a stream."""

    def __init__(self, handle: Any, size: int) -> None:
        self._handle, self._left = handle, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(min(len(buffer), self._left))
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


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
            self._writer.writerow({key: _cell(value) for key, value in row.items()})
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


LOCK_FILE = ".lock"


@contextlib.contextmanager
def exclusive(path: Path, what: str, *, wait: bool = False) -> Iterator[None]:
    """Hold an advisory lock on the file ``path`` (made if missing) for the block. If another
    process holds it: wait for it with ``wait``, else refuse with one line naming the holder
    (``what`` says what the lock guards). The file is removed when the block ends.

    Where the file system has no locks (some network file systems), the block runs unlocked.
    """
    import socket

    descriptor = _lock(path, what, wait=wait)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        # Removed while still held: a process waiting for it then holds a file no longer in
        # the folder, which _lock sees, and it locks a new one.
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(descriptor)  # releases the lock


def _lock(path: Path, what: str, *, wait: bool) -> int:
    """An open descriptor of ``path`` holding its lock (see :func:`exclusive`)."""
    import fcntl

    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise RunnerError(
                f"{what} is in use by another process ({holder}); wait for it to end, or stop "
                "it, then run the same command again"
            ) from None
        except OSError:
            return descriptor  # no locks here: nothing to hold
        try:
            current = os.path.samestat(os.fstat(descriptor), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            return descriptor
        os.close(descriptor)  # its holder removed it as it let go: lock the file there now


def has_rows(path: Path) -> bool:
    """Whether a predictions file holds at least one row after its header (reads two lines)."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        handle.readline()
        return bool(handle.readline().strip())


def replace_atomically(
    path: Path,
    write: Callable[[Any], None],
    error_for: Callable[[Path, OSError], Exception] | None = None,
) -> None:
    """Write ``path`` through ``write(binary handle)`` into a temporary file, then rename it
    over ``path``. On failure the temporary file is removed, ``path`` is left as it was, and
    ``error_for(path, error)`` is raised (default: :func:`write_error`, a run's)."""
    temporary = temporary_path(path)
    try:
        with temporary.open("wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise (error_for or write_error)(path, error) from None
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def temporary_path(path: Path, pid: int | None = None) -> Path:
    """Where ``path`` is written before it is renamed into place: a file of this process's own
    (the shards of a run, in several processes, on several hosts sharing a disk, write the
    run's fingerprint.json at the same time), which :func:`remove_stale_temporaries` finds."""
    return path.with_name(f"{path.name}.{_HOST}.{pid or os.getpid()}.tmp")


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files of processes of this host that are gone (a kill -9 in the
    middle of a write leaves one, as large as the file it was to replace)."""
    for temporary in folder.glob(f"*.{_HOST}.*.tmp"):
        pid = temporary.name[: -len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                temporary.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's, alive
    return True


_HOST = re.sub(r"[^\w-]", "_", platform.node()) or "host"


def write_error(path: Path, error: OSError) -> RunnerError:
    return RunnerError(
        f"cannot write {path}: {error.strerror or error}; free space (or fix the permissions) "
        "and run the same command again: the run resumes where it stopped",
        exit_code=1,
    )


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def write_rows(handle: Any, columns: Sequence[str], rows: Iterator[Mapping[str, Any]]) -> None:
    """CSV rows with ``columns`` as header to a binary handle; NaN and None are left empty."""
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=True)
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
    text.flush()
    text.detach()


def environment_record(seed: int, project_dir: Path) -> dict[str, Any]:
    """What a run ran on: Python, packages, device, project commit, seed. No secrets."""
    return {**_environment(project_dir), "seed": seed, "command": " ".join(sys.argv)}


@functools.lru_cache(maxsize=8)  # once per process: the jobs of a sweep share it
def _environment(project_dir: Path) -> dict[str, Any]:
    packages = {}
    for name in RECORDED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    commit, dirty = _git_state(project_dir)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
        **_device(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """A CSV with the first row's keys as header, written atomically as the rows come; nothing
    is written for no rows."""
    rows = iter(rows)
    first = next(rows, None)
    if first is not None:
        every_row = itertools.chain([first], rows)
        replace_atomically(path, lambda handle: write_rows(handle, list(first), every_row))


def answers_stream(path: Path) -> CsvStream:
    """answers.csv in VLMHyperBench's format: ``id;model_answer``, UTF-8 with BOM; rows are
    ``{"id": sample_index, "model_answer": prediction}``."""
    return CsvStream(path, ["id", "model_answer"], delimiter=";", bom=True)


def _cell(value: Any) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


# metrics.csv's columns that hold text even where it reads as a number (a model named "7").
TEXT_METRICS = {"model", "framework", "dataset", "task", "status"}


def read_metrics(path: Path) -> dict[str, Any]:
    """metrics.csv's row with the types it was written with: numbers, booleans, None."""
    (row,) = read_complete_rows(path)
    return {key: text if key in TEXT_METRICS else _typed(text) for key, text in row.items()}


def _typed(text: str) -> Any:
    if text in ("", "True", "False"):
        return None if text == "" else text == "True"
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    data = (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    replace_atomically(path, lambda handle: handle.write(data))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _device() -> dict[str, Any]:
    # Only ask torch if the model already imported it: a CPU-only run stays torch-free.
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {"device": "cpu", "gpu_name": None, "gpu_count": 0}
    return {
        "device": "cuda",
        "gpu_name": torch.cuda.get_device_name(0),
        "gpu_count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
    }


def _git_state(project_dir: Path) -> tuple[str | None, bool | None]:
    """The project's commit and whether tracked files differ from it; None outside git."""
    # One call gives both: the "# branch.oid <sha>" header and a line per changed file.
    status = _git(project_dir, "status", "--porcelain=v2", "--branch", "--untracked-files=no")
    if status is None:
        return None, None
    lines = status.splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    return (None if commit == "(initial)" else commit), any(
        not line.startswith("#") for line in lines
    )


def _git(project_dir: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(project_dir), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()
