"""tracking=mlflow: runs logged to a real MLflow store, read back with MLflow's own client."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.support.helpers import run_cli

mlflow = pytest.importorskip("mlflow")


def runs_in(store: Path) -> dict[str, object]:
    """The runs of the experiment model-interface in ``store``, by run name."""
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("model-interface")
    runs = client.search_runs([experiment.experiment_id])
    return {run.info.run_name: run for run in runs}


def artifacts(store: Path, run_id: str, path: str | None = None) -> set[str]:
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store}")
    return {item.path for item in client.list_artifacts(run_id, path)}


@pytest.mark.slow
def test_a_run_is_logged_with_its_config_metrics_and_files(model_cache, tmp_path) -> None:
    result = run_cli(
        "model=dummy",
        "runner.limit=4",
        "run_name=one",
        "tracking=mlflow",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    store = tmp_path / "outputs" / "mlflow.db"
    (run,) = runs_in(store).values()
    assert run.info.run_name == "one" and run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "dummy"
    assert run.data.params["runner.limit"] == "4"
    assert run.data.params["run_name"] == "one"
    metrics = pd.read_csv(tmp_path / "outputs" / "one" / "metrics.csv").iloc[0]
    assert run.data.metrics["n_samples"] == metrics["n_samples"] == 4
    assert run.data.metrics["anls"] == pytest.approx(metrics["anls"])
    assert run.data.tags["status"] == "ok" and run.data.tags["model"] == "dummy"
    logged = artifacts(store, run.info.run_id)
    assert {
        "predictions.csv",
        "metrics.csv",
        "metrics_by_group.csv",
        "report.html",
        "fingerprint.json",
        "hydra",
    } <= logged
    assert "hydra/config.yaml" in artifacts(store, run.info.run_id, "hydra")
    # Artifacts stay beside the store, under outputs/, not in the working directory.
    assert (tmp_path / "outputs" / "mlartifacts").is_dir()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["outputs"]


@pytest.mark.slow
def test_a_sweep_is_a_parent_run_with_a_child_per_job(model_cache, tmp_path) -> None:
    result = run_cli(
        "--multirun",
        "model=dummy",
        "runner.limit=2,3",
        "run_name=s",
        "tracking=mlflow",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    store = tmp_path / "outputs" / "mlflow.db"
    runs = runs_in(store)
    parent = runs["s"]
    assert parent.info.status == "FINISHED"
    # Jobs in other processes (joblib, SLURM) find the parent run in the sweep's tracking.json.
    record = json.loads((tmp_path / "outputs/multirun/s/tracking.json").read_text())
    assert record["run_id"] == parent.info.run_id
    assert {"summary.csv", "summary.png", "report.html"} <= artifacts(store, parent.info.run_id)
    # Both callbacks ask for the summary; it is written once, and sweep.json says so.
    assert result.stdout.count("sweep report:") == 1, result.stdout[-3000:]
    sweep = json.loads((tmp_path / "outputs/multirun/s/sweep.json").read_text())
    assert sweep["summarized"] is True
    for job, samples in (("0_dummy_sample_docs", 2), ("1_dummy_sample_docs", 3)):
        child = runs[job]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.metrics["n_samples"] == samples
        assert "job.json" in artifacts(store, child.info.run_id)


@pytest.mark.slow
def test_the_shards_of_a_run_are_children_and_the_last_logs_the_merged_run(
    model_cache, tmp_path
) -> None:
    result = run_cli(
        "--multirun",
        "model=dummy",
        "runner.shard_index=0,1",
        "runner.num_shards=2",
        "runner.limit=6",
        "run_name=s",
        "tracking=mlflow",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    store = tmp_path / "outputs" / "mlflow.db"
    runs = runs_in(store)
    first, last = (
        runs["dummy_sample_docs_2shards_runner.limit=6/0-of-2"],
        runs["dummy_sample_docs_2shards_runner.limit=6/1-of-2"],
    )
    for shard in (first, last):
        assert shard.data.tags["mlflow.parentRunId"] == runs["s"].info.run_id
        assert shard.info.status == "FINISHED"
        assert {"shard/predictions.csv", "shard/shard.json", "shard/job.json"} <= artifacts(
            store, shard.info.run_id, "shard"
        )
    # The first shard has its own counts; the last one merged the run and has its metrics.
    assert first.data.metrics["n_samples"] == 3 and "anls" not in first.data.metrics
    assert last.data.metrics["n_samples"] == 6 and "anls" in last.data.metrics
    assert {"predictions.csv", "metrics.csv", "shards.csv"} <= artifacts(store, last.info.run_id)


@pytest.mark.slow
def test_a_failed_run_is_logged_as_failed_at_the_uri_given(model_cache, tmp_path) -> None:
    team_store = tmp_path / "team" / "store.db"
    result = run_cli(
        "model=dummy",
        "dataset=vlmhyperbench",
        f"dataset.root={tmp_path}/none",
        "run_name=broken",
        "tracking=mlflow",
        f"tracking.uri=sqlite:///{team_store}",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 2, result.stdout[-3000:]  # the run's own exit status is kept
    (run,) = runs_in(team_store).values()
    assert run.info.run_name == "broken" and run.info.status == "FAILED"
    assert run.data.tags["status"] == "failed"
    assert "run.log" in artifacts(team_store, run.info.run_id)  # it says what went wrong
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


@pytest.mark.slow
def test_the_readme_mlflow_ui_command_serves_the_store(model_cache, tmp_path) -> None:
    import re
    import shlex
    import subprocess
    import time

    import httpx

    from runners.config.paths import PROJECT_ROOT
    from tests.support.helpers import free_port

    result = run_cli(
        "model=dummy",
        "runner.limit=1",
        "run_name=seen",
        "tracking=mlflow",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    (command,) = re.findall(r"^mlflow ui .*$", readme, flags=re.MULTILINE)
    port = free_port()
    arguments = [
        *shlex.split(command.replace("--port 5000", f"--port {port}")),
        "--host",
        "127.0.0.1",
    ]
    arguments[0] = str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen(
        arguments, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        api, experiment = f"http://127.0.0.1:{port}/api/2.0/mlflow", None
        deadline = time.monotonic() + 90
        while experiment is None and time.monotonic() < deadline and server.poll() is None:
            try:
                named = {"experiment_name": "model-interface"}
                reply = httpx.get(f"{api}/experiments/get-by-name", params=named, timeout=5)
                experiment = reply.json()
            except httpx.TransportError:
                time.sleep(0.5)
        assert experiment is not None, "mlflow ui did not answer within 90 s"
        experiment_id = experiment["experiment"]["experiment_id"]
        found = httpx.post(
            f"{api}/runs/search", json={"experiment_ids": [experiment_id]}, timeout=10
        ).json()
        assert [run["info"]["run_name"] for run in found["runs"]] == ["seen"]
    finally:
        server.terminate()
        server.wait(timeout=30)
