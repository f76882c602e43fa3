"""Every ``python -m runners.run`` command in README.md runs, so an example never rots.

A command runs for real with ``runner.limit=2`` appended, after the README's imports of
VLMHyperBench benchmarks (written where the importer writes by default, ``./conf-vlmhyperbench``
of a temporary directory, which every command searches).
One that needs what this machine lacks (a GPU, a hub download, a server, SLURM, a dataset
elsewhere, a package not installed) is composed with ``--cfg job`` instead: its overrides must
parse and its config must compose; a sweep is composed job by job.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from model_interface import ModelFactory, tiny
from runners.config.paths import CONFIG_DIR, PROJECT_ROOT
from tests.support.helpers import run_cli
from tests.support.readme import COMMAND, readme_commands

SERVE_COMMAND = "python -m runners.serve"
EVALUATE_COMMAND = "python -m runners.evaluate"
IMPORT_COMMAND = "python -m runners.import_vlmhyperbench"
REPORT_COMMAND = "python -m runners.report"
MERGE_COMMAND = "python -m runners.merge"


def what_it_needs(arguments: list[str]) -> str | None:
    """What the command needs that this machine lacks, or None if it can run here."""
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key == "model":
            for choice in value.split(","):
                model = OmegaConf.load(CONFIG_DIR / "model" / f"{choice}.yaml")
                if model.name == "openai":
                    return "an OpenAI-compatible server"
                if model.name == "sglang":
                    return "SGLang, on a GPU"
                if model.name == "vllm" and importlib.util.find_spec("vllm") is None:
                    return "vLLM (test_vllm_engine.py runs this one where it is)"
                local = model.name not in ("hf", "vllm") or tiny.is_tiny_model(
                    model.init_params.model_name
                )
                if not local:
                    return "a model from the hub"
        if key == "model.name" and not ModelFactory.is_registered(value):
            return f"a package registering the model {value!r}"
        if key == "model.class_path":
            module = value.replace(":", ".").rpartition(".")[0]
            if importlib.util.find_spec(module.split(".")[0]) is None:
                return f"the package of {value}"
        if key == "judge" and value == "openai_compatible":
            return "an OpenAI-compatible server to judge (test_judge.py serves one)"
        if key == "hydra/launcher" and value.startswith("slurm"):
            return "SLURM"
        if key == "dataset.root" and not Path(value).exists():
            return f"the dataset {value}"
        if key == "dataset" and _hub_dataset(value):
            return "a hub dataset (test_standard_benchmarks.py runs local copies of these)"
        if key == "dataset.hf.data_files":
            return "parquet files of your own (tests/runners/datasets/test_hub.py reads some)"
    return None


def _hub_dataset(choices: str) -> bool:
    """Whether any of the dataset configs ``choices`` (``a,b``) loads a hub dataset."""
    for choice in choices.split(","):
        config = OmegaConf.load(CONFIG_DIR / "dataset" / f"{choice}.yaml")
        fields = config.get("dataset", config)  # a benchmark's config is global
        if fields.get("format") == "hf":
            return True
    return False


def single_jobs(arguments: list[str]) -> list[list[str]]:
    """The jobs of a sweep as single runs: job i takes the i-th value of every list (a list is
    ``a,b,c`` or ``range(start,stop)``)."""
    arguments = [argument for argument in arguments if argument not in ("-m", "--multirun")]
    lists = [_sweep_values(argument.partition("=")[2]) for argument in arguments]
    count = max((len(values) for values in lists), default=1)
    jobs = []
    for index in range(count):
        job = []
        for argument, values in zip(arguments, lists, strict=True):
            key = argument.partition("=")[0]
            job.append(
                f"{key}={values[min(index, len(values) - 1)]}" if "=" in argument else argument
            )
        jobs.append(job)
    return jobs


def _sweep_values(value: str) -> list[str]:
    if match := re.fullmatch(r"range\((\d+),\s*(\d+)\)", value):
        return [str(number) for number in range(int(match[1]), int(match[2]))]
    if value.startswith("["):  # a list is one value, not a sweep over its items
        return [value]
    return value.split(",")


def test_the_readme_has_the_commands_it_should() -> None:
    commands = readme_commands()
    assert commands[0] == COMMAND  # the first command a new user runs
    assert len(commands) >= 10
    assert any("prompt_template" in command for command in commands)


@pytest.mark.slow
def test_every_runner_command_in_the_readme_works(model_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(PROJECT_ROOT / "examples")
    for command in readme_commands(IMPORT_COMMAND):  # into ./conf-vlmhyperbench, its default
        arguments = shlex.split(command, comments=True)[3:]
        result = run_cli(
            *arguments, module="runners.import_vlmhyperbench", cwd=tmp_path, cache_dir=model_cache
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}"
    assert not list(CONFIG_DIR.glob("experiment/vlmhyperbench*"))  # not the project's conf/
    # Every command may name an imported experiment, as the README's own do.
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'conf-vlmhyperbench'}]"

    def with_searchpath(arguments: list[str]) -> list[str]:
        named = any(argument.startswith("hydra.searchpath=") for argument in arguments)
        return arguments if named else [*arguments, searchpath]

    ran, composed = [], []
    for command in readme_commands():
        arguments = with_searchpath(shlex.split(command, comments=True)[3:])
        # "<run>" stands for the directory of a single run made earlier: the latest one.
        if any("<run>" in argument for argument in arguments):
            runs = [path.parent for path in (tmp_path / "outputs").glob("*/.hydra")]
            latest = max(runs, key=lambda path: path.stat().st_mtime)
            arguments = [argument.replace("<run>", latest.name) for argument in arguments]
        arguments = [argument.replace("$PWD", str(tmp_path)) for argument in arguments]
        need = what_it_needs(arguments)
        if need is None:
            result = run_cli(*arguments, "runner.limit=2", cwd=tmp_path, cache_dir=model_cache)
            assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}"
            ran.append(command)
            continue
        for job in single_jobs(arguments):
            result = run_cli(*job, "--cfg", "job", cwd=tmp_path, cache_dir=model_cache)
            assert result.returncode == 0, f"{command} (needs {need})\n{result.stdout[-3000:]}"
            assert "runner:" in result.stdout and "model:" in result.stdout
        composed.append(command)
    assert len(ran) >= 6 and len(composed) >= 3, (ran, composed)
    assert any("experiment=vlmhyperbench_demo" in command for command in ran)
    # Scoring without a model reads what the runs above wrote.
    for command in readme_commands(EVALUATE_COMMAND):
        arguments = with_searchpath(shlex.split(command, comments=True)[3:])
        result = run_cli(*arguments, module="runners.evaluate", cwd=tmp_path, cache_dir=model_cache)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}"
        ran.append(command)
    # A run split into shards above is merged again by hand.
    merges = readme_commands(MERGE_COMMAND)
    assert merges
    for command in merges:
        arguments = shlex.split(command, comments=True)[3:]
        result = run_cli(*arguments, module="runners.merge", cwd=tmp_path, cache_dir=model_cache)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}"
        assert "merged 2 shards" in result.stdout
    # Reports read the runs above: two runs of one dataset are compared sample by sample.
    reports = readme_commands(REPORT_COMMAND)
    assert len(reports) >= 2
    for command in reports:
        arguments = shlex.split(command, comments=True)[3:]
        result = run_cli(*arguments, module="runners.report", cwd=tmp_path, cache_dir=model_cache)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}"
    pair = (tmp_path / "outputs/reports/plain_vs_brief/report.md").read_text(encoding="utf-8")
    assert "- **samples in both**: 2" in pair
    # The imported benchmark's eval-only row re-scored the first row's answers with BLEU.
    rescored = tmp_path / "outputs" / "evaluate" / "multirun" / "vlmhyperbench_demo_evaluate"
    assert "bleu" in (rescored / "0" / "metrics.csv").read_text().splitlines()[0].split(",")


@pytest.mark.slow
def test_the_quoted_prompt_template_example_reaches_the_prompts(model_cache, tmp_path) -> None:
    commands = [c for c in readme_commands() if "Answer briefly" in c]
    assert commands
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", f"{command} --cfg job"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                "PYTHONPATH": str(PROJECT_ROOT),
                "MODEL_INTERFACE_CACHE": str(model_cache),
            },
        )
        assert result.returncode == 0, result.stderr
        assert "prompt_template: Answer briefly. {prompt}" in result.stdout


@pytest.mark.slow
def test_every_serve_command_in_the_readme_composes(model_cache, tmp_path) -> None:
    # A server runs until stopped: its commands are composed, not run.
    commands = readme_commands(SERVE_COMMAND)
    assert len(commands) >= 2
    for command in commands:
        arguments = shlex.split(command, comments=True)[3:]
        result = run_cli(
            *arguments,
            "--cfg",
            "job",
            module="runners.serve",
            cwd=tmp_path,
            cache_dir=model_cache,
            timeout=60,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}"
        assert "serve:" in result.stdout and "limits:" in result.stdout
