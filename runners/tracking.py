"""Experiment tracking in MLflow: ``tracking=mlflow`` (conf/tracking/mlflow.yaml).

A Hydra callback. Each job becomes an MLflow run when it ends: the flattened config as params,
its metrics.csv row as metrics (numbers only), status, model, dataset and task as tags, and the
run directory's files as artifacts (predictions.csv, the metrics files, report.html/.md,
fingerprint.json, environment.json, run.log and ``.hydra/``). A shard of a run
(runners/execution/shards.py) is a run of its own, with its shard.json as metrics and its
folder's files; the shard that merged the run adds the merged run's metrics and files. A sweep
is a parent run, made when the sweep starts, with a child run per job; the parent gets the
sweep's summary.csv, summary.png and report when it ends.

The jobs of a sweep may run in other processes (joblib, SLURM), so the parent run's id is kept
in ``tracking.json`` at the sweep's root, where every job finds it. The default store is a
SQLite database, ``outputs/mlflow.db``, with artifacts in ``outputs/mlartifacts/``; browse it
with ``mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db``. ``tracking.uri=`` points
at a team's tracking server instead (which then decides where artifacts go).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runners.callbacks import finish_sweep, shard_folder_of
from runners.execution.shards import RECORD_FILE
from runners.records import flatten
from runners.rundir.files import read_complete_rows, read_json, write_json
from runners.rundir.sweeps import JOB_FILE

log = logging.getLogger(__name__)

PARENT_FILE = "tracking.json"
# Files of a run directory logged as artifacts, when present; .hydra/ goes under "hydra".
RUN_ARTIFACTS = (
    "predictions.csv",
    "answers.csv",
    "report.html",
    "report.md",
    "fingerprint.json",
    "environment.json",
    "run.log",
    JOB_FILE,
    "shard.json",
    "shards.csv",
)
SWEEP_ARTIFACTS = ("summary.csv", "summary.png", "report.html", "report.md", "multirun.yaml")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param's value
BATCH = 100  # MLflow's limit on params or tags per call


class MlflowTracking(Callback):
    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = _absolute_sqlite(uri)
        self.experiment = experiment

    # --- a sweep: the parent run ---

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        client, experiment_id = self._client()
        sweep_dir = Path(config.hydra.sweep.dir)
        run = client.create_run(
            experiment_id, run_name=sweep_dir.name, tags={"sweep_dir": str(sweep_dir.resolve())}
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_json(sweep_dir / PARENT_FILE, {"run_id": run.info.run_id, "uri": self.uri})
        log.info("tracking the sweep as MLflow run %s in %s", run.info.run_id, self.uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        parent = _parent_run(sweep_dir)
        if parent is None:
            return
        client, _ = self._client()
        summary = finish_sweep(sweep_dir)
        for name in SWEEP_ARTIFACTS:
            if (sweep_dir / name).is_file():
                client.log_artifact(parent, str(sweep_dir / name))
        all_ok = summary is not None and bool((summary["status"] == "ok").all())
        client.set_terminated(parent, "FINISHED" if all_ok else "FAILED")

    # --- a job: one run ---

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from mlflow.entities import Metric, Param, RunTag

        run_dir = Path(config.hydra.runtime.output_dir)
        # A shard is logged as a run of its own, from its folder; the shard that merged the run
        # also logs the merged run's metrics and files.
        job_dir = run_dir / shard_folder_of(config)
        shard = job_dir != run_dir
        returned = job_return.return_value if job_return.status == JobStatus.COMPLETED else None
        merged = not shard or bool((returned or {}).get("merged"))
        client, experiment_id = self._client()
        tags = {"run_dir": str(run_dir.resolve())}
        sweep_dir = Path(config.hydra.sweep.dir)
        parent = _parent_run(sweep_dir) if (job_dir / JOB_FILE).is_file() else None
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        name = f"{run_dir.name}/{job_dir.name}" if shard else run_dir.name
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

        try:
            job_config = OmegaConf.to_container(job_return.cfg, resolve=True)
        except Exception:  # a failed job's config may hold what can't be resolved
            job_config = OmegaConf.to_container(job_return.cfg, resolve=False)
        params = [
            Param(key, _text(value)[:MAX_PARAM_CHARS]) for key, value in flatten(job_config).items()
        ]
        metrics_row = _metrics_row(run_dir) if merged else _shard_row(job_dir)
        now_ms = int(time.time() * 1000)
        metrics = [Metric(key, value, now_ms, 0) for key, value in _numbers(metrics_row)]
        status = _status(job_dir, metrics_row)
        labels = {key: str(metrics_row.get(key, "")) for key in ("model", "dataset", "task")}
        run_tags = [RunTag(key, value) for key, value in {"status": status, **labels}.items()]
        for start in range(0, max(len(params), 1), BATCH):
            client.log_batch(
                run_id, params=params[start : start + BATCH], tags=run_tags if start == 0 else []
            )
        if metrics:
            client.log_batch(run_id, metrics=metrics)
        for path in _run_artifacts(job_dir):  # a shard's own under shard/, beside the merged
            client.log_artifact(run_id, str(path), artifact_path="shard" if shard else None)
        for path in _run_artifacts(run_dir) if shard and merged else []:
            client.log_artifact(run_id, str(path))
        if (job_dir / ".hydra").is_dir():
            client.log_artifacts(run_id, str(job_dir / ".hydra"), artifact_path="hydra")
        client.set_terminated(run_id, "FINISHED" if status == "ok" else "FAILED")
        log.info("logged to MLflow run %s (%s)", run_id, status)

    def _client(self) -> tuple[Any, str]:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return client, experiment.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:///"):  # a local store keeps its artifacts beside it
            artifacts = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        return client, client.create_experiment(self.experiment, artifact_location=artifacts)


def _absolute_sqlite(uri: str) -> str:
    """A SQLite URI with its path made absolute (jobs may run elsewhere), its folder made."""
    if not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri.removeprefix("sqlite:///")).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _parent_run(sweep_dir: Path) -> str | None:
    record = sweep_dir / PARENT_FILE
    return read_json(record)["run_id"] if record.is_file() else None


def _metrics_row(run_dir: Path) -> dict[str, str]:
    path = run_dir / "metrics.csv"
    rows = read_complete_rows(path) if path.is_file() else []
    return rows[0] if rows else {}


def _shard_row(shard_dir: Path) -> dict[str, str]:
    """A shard's own record (shard.json: counts, cost, status), as a metrics row."""
    path = shard_dir / RECORD_FILE
    record = read_json(path) if path.is_file() else {}
    return {key: str(value) for key, value in record.items() if key != "fingerprint"}


def _status(job_dir: Path, metrics_row: Mapping[str, str]) -> str:
    """How the job ended: its job.json in a sweep, else its metrics row (none: it failed)."""
    if (job_dir / JOB_FILE).is_file():
        return read_json(job_dir / JOB_FILE)["status"]
    return metrics_row.get("status") or "failed"


def _numbers(row: Mapping[str, str]) -> Iterator[tuple[str, float]]:
    for key, text in row.items():
        try:
            value = float(text)
        except ValueError:
            continue  # text (the model's name), empty (not measured), True/False
        if math.isfinite(value):
            yield key, value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _run_artifacts(run_dir: Path) -> list[Path]:
    named = [run_dir / name for name in RUN_ARTIFACTS]
    return [p for p in [*named, *sorted(run_dir.glob("metrics*.csv"))] if p.is_file()]
