"""Shared fixtures. Tests never reach the network: hub access is switched off for the session."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(autouse=True)
def _a_test_that_starts_a_process_or_loads_a_model_is_slow(
    request: pytest.FixtureRequest, monkeypatch
):
    """Fail a test not marked ``slow`` that starts a process (a command, a server, a browser),
    loads a transformers model or imports a framework (torch, transformers, vLLM), so that
    ``pytest -m "not slow"`` stays quick. What every run does once per process is not counted:
    git and uname for environment.json."""
    if "slow" in request.keywords:
        yield
        return
    started: list[str] = []
    popen_init = subprocess.Popen.__init__

    def recording(self, args, *more, **options):  # type: ignore[no-untyped-def]
        program = Path(str(args if isinstance(args, (str, os.PathLike)) else args[0])).name
        if program not in ("git", "uname"):
            started.append(" ".join(map(str, args)) if isinstance(args, list) else str(args))
        popen_init(self, args, *more, **options)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording)
    if "transformers" in sys.modules:  # imported by a test module: watch the models it loads
        base = sys.modules["transformers"].PreTrainedModel
        load = base.__dict__["from_pretrained"].__func__

        def recording_load(cls, *args, **options):  # type: ignore[no-untyped-def]
            started.append(f"{cls.__name__}.from_pretrained")
            return load(cls, *args, **options)

        monkeypatch.setattr(base, "from_pretrained", classmethod(recording_load))
    frameworks_before = FRAMEWORKS & sys.modules.keys()
    yield
    if started:
        pytest.fail(f"starts or loads {started[0][:200]}: mark the test @pytest.mark.slow")
    if loaded := sorted(FRAMEWORKS & sys.modules.keys() - frameworks_before):
        pytest.fail(f"imports {', '.join(loaded)}: mark the test @pytest.mark.slow")


FRAMEWORKS = {"torch", "transformers", "vllm", "sglang"}
