"""The wheel carries what the runner needs: installed on its own (not editable), ``vlm-run`` and
``python -m runners.run`` run the main job from an empty directory, with the configs and the
sample documents the wheel brought.

The wheel's dependencies (torch, transformers, ...) are this environment's, reached through a
path file: their installation is pip's business, while what the project ships is the question
here. That path file adds this environment's site-packages as a plain directory, so its own
path files, the editable install of this checkout among them, are not run.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from runners.config.paths import PROJECT_ROOT
from tests.support.readme import readme_lines

pytestmark = pytest.mark.slow


SOURCES = ["pyproject.toml", "README.md", "model_interface", "runners", "conf", "data"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources: a build leaves build/ behind, whose stale
    files a later build of the checkout would ship."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (PROJECT_ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(PROJECT_ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(PROJECT_ROOT / name, source / name)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        str(out),
        str(source),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_holds_every_module_config_and_sample_file(wheel) -> None:
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        *(
            str(path.relative_to(PROJECT_ROOT))
            for package in ("model_interface", "runners")
            for path in (PROJECT_ROOT / package).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        ),
        *(
            f"runners/{path.relative_to(PROJECT_ROOT)}"
            for folder in ("conf", "data")
            for path in (PROJECT_ROOT / folder).rglob("*")
            if path.is_file()
        ),
    }
    assert (
        "runners/conf/config.yaml" in expected
        and "runners/data/sample_docs/annotation.csv" in expected
        and "model_interface/chat_templates/qwen3_vl_thinking.jinja" in expected
    )
    assert sorted(expected - shipped) == []


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site_packages, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def run_installed(
    installed: Path, command: list[str], *, cwd: Path, cache_dir: Path, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``command`` in ``cwd`` with only the fresh venv's bin/ (and the system's) on the PATH."""
    env = {
        "PATH": f"{installed}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(cwd)),
        "MODEL_INTERFACE_CACHE": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=check
    )


@pytest.mark.parametrize("command", [["vlm-run"], ["python", "-m", "runners.run"]])
def test_the_installed_wheel_runs_the_main_job_from_an_empty_directory(
    installed, command, model_cache, tmp_path
) -> None:
    show = "import runners.config.paths as c; print(c.__file__); print(c.CONFIG_DIR)"
    where = run_installed(
        installed, ["python", "-c", show], cwd=tmp_path, cache_dir=model_cache, check=True
    ).stdout.split()
    assert [Path(line).is_relative_to(installed.parent) for line in where] == [True, True], where
    result = run_installed(
        installed,
        [*command, "run_name=main", "runner.progress=false"],
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "outputs" / "main" / "metrics.csv").iloc[0]
    assert (metrics["status"], metrics["n_samples"], metrics["dataset"]) == (
        "ok",
        48,
        "sample_docs",
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["outputs"]


def test_the_readmes_own_config_directory_reaches_the_installed_runner(
    installed, model_cache, tmp_path
) -> None:
    (line,) = [line for line in readme_lines() if line.startswith("vlm-run --config-dir")]
    arguments = shlex.split(line, comments=True)[1:]
    folder = tmp_path / arguments[arguments.index("--config-dir") + 1]
    model = next(a.partition("=")[2] for a in arguments if a.startswith("model="))
    (folder / "model").mkdir(parents=True)
    packaged = (PROJECT_ROOT / "conf" / "model" / "tiny_qwen2_vl.yaml").read_text()
    (folder / "model" / f"{model}.yaml").write_text(
        packaged.replace("max_new_tokens: 16", "max_new_tokens: 3")
    )
    result = run_installed(
        installed,
        ["vlm-run", *arguments, "run_name=mine", "runner.progress=false"],
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    predictions = pd.read_csv(tmp_path / "outputs" / "mine" / "predictions.csv")
    assert len(predictions) == 2 and predictions["completion_tokens"].max() == 3
