"""Sweeps and shards on a real SLURM cluster: the one-machine cluster of
``scripts/slurm_local.sh`` (CI brings it up), through Hydra's submitit launcher; and the one
line a user gets where SLURM is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.support.helpers import error_lines, read_predictions, run_cli
from tests.support.runs import assert_same_run


@pytest.fixture
def slurm_cluster() -> None:
    state = subprocess.run(
        ["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=30
    )
    states = state.stdout.split()
    assert state.returncode == 0 and {"idle", "mix", "alloc"} & set(states), (
        f"no SLURM node is up ({state.stdout.strip() or state.stderr.strip()}); "
        "bring the local cluster up with: bash scripts/slurm_local.sh up"
    )


def submitted_jobs(sweep: Path) -> list[Path]:
    """The SLURM jobs submitit ran for a sweep: a result file per job, written on the node."""
    return sorted(sweep.glob(".submitit/*/*_result.pkl"))


@pytest.mark.slurm
@pytest.mark.slow
def test_a_two_model_sweep_and_a_four_shard_run_on_slurm(
    slurm_cluster, model_cache, tmp_path
) -> None:
    models = run_cli(
        "--multirun",
        "hydra/launcher=slurm_cpu",
        "model=dummy,tiny_qwen2_vl",
        "runner.limit=6",
        "run_name=models",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=600,
    )
    assert models.returncode == 0, models.stdout[-3000:]
    sweep = tmp_path / "outputs" / "multirun" / "models"
    assert len(submitted_jobs(sweep)) == 2
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["job"].tolist() == ["0_dummy_sample_docs", "1_tiny_qwen2_vl_sample_docs"]
    assert (summary["status"] == "ok").all() and (summary["n_samples"] == 6).all()
    for job in summary["job"]:
        predictions = read_predictions(sweep / job)
        assert len(predictions) == 6 and (predictions["error"] == "").all()
    assert summary["model"].tolist() == ["dummy", "tiny-qwen2-vl"]
    assert (sweep / "report.html").is_file() and (sweep / "summary.png").is_file()

    shards = run_cli(
        "--multirun",
        "hydra/launcher=slurm_cpu",
        "model=dummy",
        "runner.shard_index=range(0,4)",
        "runner.num_shards=4",
        "run_name=shards",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=600,
    )
    assert shards.returncode == 0, shards.stdout[-3000:]
    sweep = tmp_path / "outputs" / "multirun" / "shards"
    assert len(submitted_jobs(sweep)) == 4
    (run,) = pd.read_csv(sweep / "summary.csv").itertuples()
    assert run.job == "dummy_sample_docs_4shards" and run.status == "ok" and run.n_samples == 48
    hosts = pd.read_csv(sweep / run.job / "shards.csv")
    assert hosts["shard_index"].tolist() == [0, 1, 2, 3] and (hosts["status"] == "ok").all()
    single = run_cli("model=dummy", "run_name=single", cwd=tmp_path, cache_dir=model_cache)
    assert single.returncode == 0, single.stdout[-3000:]
    assert_same_run(sweep / run.job, tmp_path / "outputs" / "single")


@pytest.mark.slow
def test_a_slurm_launcher_without_slurm_is_one_line(model_cache, tmp_path) -> None:
    # Only the virtual environment on PATH: no sbatch, whatever this machine has installed.
    environment = {"PATH": str(Path(sys.executable).parent)}
    for launcher in ["hydra/launcher=slurm_gpu", "hydra/launcher=submitit_slurm"]:
        result = run_cli(
            "--multirun",
            launcher,
            "model=dummy",
            "runner.limit=2",
            cwd=tmp_path,
            cache_dir=model_cache,
            env=environment,
            timeout=120,
        )
        assert result.returncode == 2, result.stdout[-3000:]
        assert error_lines(result.stdout) == [
            "error: the launcher submits the jobs to SLURM, which is not installed here (no "
            "sbatch on PATH); run the command on the cluster's login node, or pick a launcher "
            "for this machine: hydra/launcher=joblib (processes) or hydra/launcher=submitit_local"
        ]
        assert "Traceback" not in result.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_a_slurm_cluster_that_does_not_answer_is_one_line(model_cache, tmp_path) -> None:
    """sbatch is installed, but the controller it is configured for is not there."""
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=6999\nAuthType=auth/none\n"
        "CredType=cred/none\nNodeName=localhost CPUs=1 State=UNKNOWN\n"
        "PartitionName=debug Nodes=localhost Default=YES State=UP\n"
    )
    result = run_cli(
        "--multirun",
        "hydra/launcher=slurm_cpu",
        "model=dummy",
        "runner.limit=2",
        cwd=tmp_path,
        cache_dir=model_cache,
        env={"SLURM_CONF": str(conf)},
        timeout=300,
    )
    assert result.returncode == 2, result.stdout[-3000:]
    assert error_lines(result.stdout) == [
        "error: SLURM did not take the jobs (sbatch: error: Batch job submission failed: Unable "
        "to contact slurm controller (connect failure)); check that the cluster answers (sinfo), "
        "or pick a launcher for this machine: hydra/launcher=joblib (processes) or "
        "hydra/launcher=submitit_local"
    ]
    assert "Traceback" not in result.stdout
