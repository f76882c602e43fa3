"""The files a run writes: predictions.csv (append-only, resumable), environment.json.

predictions.csv is written one batch at a time, each batch a single ``write`` followed by a
flush, so a run killed at any point (even ``kill -9``) loses at most the batch in flight. A torn
last row, if the kill hit mid-write, is detected and dropped when the run resumes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

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
    """predictions.csv of one run: resumable, appended to batch by batch."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self._handle: io.TextIOWrapper | None = None

    def open(self, *, resume: bool) -> set[str]:
        """Open for appending; returns the ids of samples already answered.

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
        self._write_atomically(kept)
        self._handle = self.path.open("a", encoding="utf-8", newline="")
        return {row["sample_id"] for row in kept}

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        assert self._handle is not None, "open() first"
        self._handle.write(_to_csv(self.columns, rows, header=False))
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def sort_by(self, column: str) -> list[dict[str, str]]:
        """Rewrite the file ordered by a numeric column (dataset order); returns the rows."""
        self.close()
        rows = sorted(read_complete_rows(self.path), key=lambda row: int(row[column]))
        self._write_atomically(rows)
        return rows

    def _write_atomically(self, rows: Sequence[Mapping[str, Any]]) -> None:
        temporary = self.path.with_suffix(".csv.tmp")
        temporary.write_text(_to_csv(self.columns, rows, header=True), encoding="utf-8")
        os.replace(temporary, self.path)


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


def _to_csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]], *, header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def environment_record(seed: int, project_dir: Path) -> dict[str, Any]:
    """What a run ran on: Python, packages, device, project commit, seed. No secrets."""
    packages = {}
    for name in RECORDED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    status = _git(project_dir, "status", "--porcelain", "--untracked-files=no")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
        **_device(),
        "git_commit": _git(project_dir, "rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "seed": seed,
        "command": " ".join(sys.argv),
    }


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
