"""Shared fixtures. Tests never reach the network: hub access is switched off for the session."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if importlib.util.find_spec("vllm") is None:
        skip = pytest.mark.skip(reason="needs vLLM; bash scripts/vllm_cpu_env.sh makes a venv")
        for item in items:
            if "vllm" in item.keywords:
                item.add_marker(skip)
    if shutil.which("sbatch") is None:
        skip = pytest.mark.skip(reason="needs SLURM (sbatch); scripts/slurm_local.sh makes one")
        for item in items:
            if "slurm" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def clean_registry():
    """Give a test its own ModelFactory registry and put the shared one back afterwards."""
    from model_interface.model_factory import MODELS, ModelFactory

    saved = MODELS.state()
    yield ModelFactory
    MODELS.restore(saved)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory):
    """One cache_dir for the whole session, so each tiny model is built once."""
    return tmp_path_factory.mktemp("model_cache")
