"""The files a run writes: predictions.csv (append-only, resumable), environment.json.

predictions.csv is written one batch at a time, each batch a single ``write`` followed by a
flush, so a run killed at any point (even ``kill -9``) loses at most the batch in flight. A torn
last row, if the kill hit mid-write, is detected and dropped when the run resumes.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

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
    "latency_s",
    "batch_size",
    "prompt_tokens",
    "completion_tokens",
    "error",
    "split",
    "doc_class",
    "question_type",
]

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


class PredictionsFile:
    """predictions.csv of one run: resumable, appended to batch by batch.

    It remembers where each row starts in the file, so :meth:`finish` can put the rows back in
    dataset order with memory for three integers per row, not the rows themselves.
    """

    def __init__(self, path: Path, columns: Sequence[str], order_by: str = "sample_index") -> None:
        self.path = path
        self.columns = list(columns)
        self.order_by = order_by
        self._records: list[tuple[int, int, int]] = []  # (order, offset, length) per row
        self._size = 0
        self._handle: BinaryIO | None = None
        self._buffer = io.StringIO()
        self._writer = csv.DictWriter(self._buffer, fieldnames=self.columns, extrasaction="ignore")

    def open(self, *, resume: bool) -> list[dict[str, str]]:
        """Open for appending; returns the rows kept from an earlier attempt.

        With ``resume``, rows from an earlier attempt are kept except failed ones (so they are
        tried again) and a torn last row; without it, an existing file is an error, so that no
        sample is ever written twice.
        """
        kept: list[dict[str, str]] = []
        if self.path.exists():
            if not resume:
                raise FileExistsError(
                    f"{self.path} exists; pass runner.resume=true to continue that run, or "
                    "choose another run_name / hydra.run.dir"
                )
            kept = [row for row in read_complete_rows(self.path) if not row.get("error")]
        temporary = self.path.with_suffix(".csv.tmp")
        with temporary.open("wb") as handle:
            handle.write(self._encode_header())
            self._size = handle.tell()
            handle.write(self._encode(kept))
        os.replace(temporary, self.path)
        self._handle = self.path.open("ab")
        return kept

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write rows in one ``write`` call and flush it to the operating system."""
        assert self._handle is not None, "open() first"
        self._handle.write(self._encode(rows))
        self._handle.flush()

    def finish(self) -> None:
        """Close the file, rewritten in dataset order if the rows were written out of order."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        ordered = sorted(self._records)
        if ordered == self._records:
            return
        temporary = self.path.with_suffix(".csv.tmp")
        with self.path.open("rb") as source, temporary.open("wb") as target:
            target.write(self._encode_header())
            for _, offset, length in ordered:
                source.seek(offset)
                target.write(source.read(length))
        os.replace(temporary, self.path)
        self._records = ordered

    def _encode_header(self) -> bytes:
        self._writer.writeheader()
        return self._take()

    def _encode(self, rows: Sequence[Mapping[str, Any]]) -> bytes:
        chunks = []
        for row in rows:
            self._writer.writerow(row)
            chunk = self._take()
            self._records.append((int(row[self.order_by]), self._size, len(chunk)))
            self._size += len(chunk)
            chunks.append(chunk)
        return b"".join(chunks)

    def _take(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode("utf-8")


def read_complete_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV written by :class:`PredictionsFile`, without a torn last row."""
    text = path.read_text(encoding="utf-8")
    try:
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:  # an unterminated quote: the last write was cut off inside a field
        records = list(csv.reader(io.StringIO(text[: text.rfind("\n", 0, -1) + 1], newline="")))
    if not records:
        return []
    header, body = records[0], records[1:]
    if body and (not text.endswith("\n") or len(body[-1]) != len(header)):
        body = body[:-1]
    return [dict(zip(header, record, strict=True)) for record in body if len(record) == len(header)]


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


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """A small CSV (metrics) with the first row's keys as header; NaN and None are left empty."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(value) for key, value in row.items()})


def _cell(value: Any) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")


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
