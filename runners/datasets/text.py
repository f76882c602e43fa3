"""Reading the text files a dataset is made of: UTF-8 only (a file in another encoding is
refused with how to re-save it), JSON errors told with file and line, the hash of their
content, and :class:`DatasetError`, the one error a dataset raises.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """The dataset can't be read as configured; the message says what to fix."""


def files_sha256(paths: Iterable[Path]) -> str:
    """The SHA-256 of each file's name and content, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()


def parse_json(text: str, where: str, what: str = "the JSON") -> Any:
    """JSON from a dataset file, refused in one line when it is not JSON, is nested deeper than
    Python can read, or holds a lone surrogate (``"\\ud800"``: valid JSON, but no character,
    and no file can be written with it)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        problem = "bad JSON" if what == "the JSON" else f"{what} is not valid JSON"
        raise DatasetError(f"{where}: {problem}: {error}") from None
    except RecursionError:
        raise DatasetError(f"{where}: {what} is nested too deeply to read; flatten it") from None
    if "\\u" in text:  # only an escape can make a lone surrogate
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            code = f"\\u{ord(error.object[error.start]):04x}"
            raise DatasetError(
                f"{where}: {what} holds a lone surrogate ({code}), which is not a character; "
                "fix the text (a character outside the BMP is written as a pair of escapes)"
            ) from None
    return value


class NotUtf8(ValueError):
    """A text file that is not UTF-8; the message names its first line that is not, and the
    byte there. Each reader adds what to do about it."""


def read_utf8(path: Path) -> str:
    """The text of ``path``, UTF-8 with or without BOM; :class:`NotUtf8` if it is not."""
    data = path.read_bytes()
    try:
        return data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError:
        raise NotUtf8(_first_line_not_utf8(path.name, data)) from None


def not_utf8(path: Path) -> NotUtf8:
    """The error for ``path``, found not to be UTF-8 while it was read as a stream."""
    return NotUtf8(_first_line_not_utf8(path.name, path.read_bytes()))


def _first_line_not_utf8(name: str, data: bytes) -> str:
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            return f"{name} line {number} is not UTF-8 (byte 0x{line[error.start]:02x})"
    return f"{name} is not UTF-8"


def resave_advice(error: NotUtf8, path: Path) -> str:
    """What a dataset file that is not UTF-8 is told: its first line that is not, and the fix."""
    return f"{error}; re-save {path} as UTF-8 (with or without BOM)"
