"""The run directory's files written safely: atomically replaced, appended under a lock,
a failed write told in one line and leaving no temporary file; metrics.csv and JSON read back.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
import platform
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from runners.errors import RunnerError

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


def write_all(descriptor: int, data: bytes) -> None:
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
        writer.writerow({key: csv_cell(value) for key, value in row.items()})
    text.flush()
    text.detach()


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """A CSV with the first row's keys as header, written atomically as the rows come; nothing
    is written for no rows."""
    rows = iter(rows)
    first = next(rows, None)
    if first is not None:
        every_row = itertools.chain([first], rows)
        replace_atomically(path, lambda handle: write_rows(handle, list(first), every_row))


def csv_cell(value: Any) -> Any:
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


def cell_number(value: Any) -> float | None:
    """A cell of a run's CSV as a number; None for an empty cell. Text that is no number raises
    ``ValueError``: the run's own tallies must not count it as nothing."""
    if value is None or value == "":
        return None
    return float(value)


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
