from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_importing_the_package_does_not_import_heavy_frameworks() -> None:
    script = (
        "import sys, model_interface\n"
        "from model_interface.model_factory import ModelFactory\n"
        "ModelFactory.list_models()\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'sglang') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
