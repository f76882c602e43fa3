"""environment.json: the versions, device and git state a run ran with."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

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
