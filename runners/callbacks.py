"""Sweeps: each job's record, and the summary of every job when a sweep ends.

A sweep's jobs may run in this process, in joblib workers or on SLURM nodes, so they report
through files. When the sweep starts, ``sweep.json`` at its root gets a fresh id. Each job
writes ``job.json`` in its directory when it starts (status ``running``) and when it ends
(``ok``, ``too_many_errors`` or ``failed`` with the error), and a job that fails does not stop
the others. At the end, ``summary.csv`` holds one row per job of *this* sweep (by the id, so
folders left by an earlier sweep with the same run_name are ignored), ordered by job number;
the sweep exits with status 1 if any job did not end ``ok``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runners.errors import RunnerError
from runners.reports.plots import plot_summary
from runners.reports.read import read_run
from runners.reports.write import write_report
from runners.rundir.files import read_complete_rows, read_json, write_json
from runners.rundir.naming import shard_folder
from runners.rundir.sweeps import JOB_FILE, SWEEP_FILE, sweep_runs

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Marks the sweep when it starts; writes summary.csv, summary.png and report.html (with
    report.md) when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            write_json(sweep_dir / SWEEP_FILE, {"id": uuid.uuid4().hex, "started": started})
        except (OSError, RunnerError):
            return  # an unwritable sweep directory: the launcher, making it next, says so

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = finish_sweep(sweep_dir)
        if summary is None:
            log.warning("no job of this sweep left a record under %s", sweep_dir)
            return
        log.info("sweep summary: %s (%d runs)", sweep_dir / "summary.csv", len(summary))
        failed = summary[summary["status"] != "ok"]
        if len(failed):
            log.error(
                "%d of %d runs did not end ok: %s",
                len(failed),
                len(summary),
                "; ".join(f"{row.job}: {row.status}" for row in failed.itertuples()),
            )
            raise SystemExit(1)


def finish_sweep(sweep_dir: Path) -> Any:
    """Write the sweep's summary.csv, summary.png and report once per sweep, and return the
    summary (None: no job left a record). Every callback that needs them (this one, tracking)
    asks, in any order: the first writes them and says so in sweep.json, the others read
    summary.csv back. A sweep run again into the same folder writes a new sweep.json."""
    import pandas as pd

    sweep_file = sweep_dir / SWEEP_FILE
    record = read_json(sweep_file) if sweep_file.is_file() else None
    if record is not None and "summarized" in record:
        if not record["summarized"]:
            return None
        return pd.read_csv(sweep_dir / "summary.csv").convert_dtypes()
    summary = write_summary(sweep_dir)
    if summary is not None:
        _write_sweep_report(sweep_dir)
    if record is not None:
        write_json(sweep_file, {**record, "summarized": summary is not None})
    return summary


def _write_sweep_report(sweep_dir: Path) -> None:

    jobs = [run for run in sweep_runs(sweep_dir) if (run / "metrics.csv").is_file()]
    if not jobs:
        return
    try:
        path, _ = write_report([read_run(job) for job in jobs], sweep_dir)
        log.info("sweep report: %s", path)
    except Exception as error:  # the summary is written; a figure that fails must not hide it
        log.warning("sweep report not written: %s", error)


def run_sweep_job(
    run: Callable[[DictConfig, Path], dict[str, Any]],
    cfg: DictConfig,
    output_dir: Path,
    hydra_config: Any,
) -> dict[str, Any] | None:
    """Run one job of a sweep with ``run``; whatever happens, record how it ended in job.json
    (a shard's in its own folder: the shards of a run share its directory).

    A job that fails (a model that can't load, a bad dataset, a crash) logs why and returns,
    so the launcher goes on to the next job.
    """
    job_dir = output_dir / shard_folder_of(cfg)
    job_dir.mkdir(parents=True, exist_ok=True)
    sweep_file = Path(hydra_config.sweep.dir) / SWEEP_FILE
    record = {
        "sweep_id": read_json(sweep_file)["id"] if sweep_file.is_file() else None,
        "num": int(hydra_config.job.num),
        "job": output_dir.name,
        "shard": job_dir != output_dir,
        "overrides": list(hydra_config.overrides.task),
        "model": _config_value(cfg, "model.init_params.model_name", "model.name"),
        "dataset": _config_value(cfg, "dataset.name", "dataset.root"),
        "status": "running",
        "error": "",
    }
    write_json(job_dir / JOB_FILE, record)
    row = None
    try:
        row = run(cfg, output_dir)
        record["status"] = row["status"]
        if record["shard"]:
            record.update(merged=row["merged"], waiting_for=row.get("waiting_for", []))
    except RunnerError as error:
        log.error("%s", error)
        record.update(status="failed", error=str(error))
    except KeyboardInterrupt:  # the sweep stops here: its other jobs are not run
        write_json(job_dir / JOB_FILE, {**record, "status": "interrupted"})
        raise
    except Exception as error:  # one job's crash must not cost the sweep its other jobs
        log.exception("job %s failed", output_dir.name)
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
    write_json(job_dir / JOB_FILE, record)
    return row


def shard_folder_of(cfg: DictConfig) -> str:
    """The shard's folder in the run directory that ``cfg`` runs (``shard_folder``)."""
    try:
        return shard_folder(int(cfg.runner.shard_index), int(cfg.runner.num_shards))
    except Exception:  # not numbers: the run itself says so, in its one line
        return ""


def write_summary(sweep_dir: Path) -> Any:
    """summary.csv (one row per run of this sweep, by job number: the shards of a run are one)
    and summary.png."""
    import pandas as pd

    rows = []
    for run_dir, jobs in sweep_runs(sweep_dir).items():
        first = jobs[0]
        row = {key: first[key] for key in ("num", "job", "model", "dataset")}
        row.update(_run_status(run_dir, jobs))
        metrics_file = run_dir / "metrics.csv"
        if row["status"] in ("ok", "too_many_errors") and metrics_file.is_file():
            metrics = pd.read_csv(metrics_file).iloc[0].to_dict()
            row.update({key: value for key, value in metrics.items() if key != "status"})
        rows.append(row)
    if not rows:
        return None
    summary = pd.DataFrame(rows).sort_values("num", kind="stable").reset_index(drop=True)
    summary = summary.convert_dtypes()  # integer columns stay integers beside a failed job
    summary.to_csv(sweep_dir / "summary.csv", index=False)
    plot_summary(summary, sweep_dir / "summary.png")
    return summary


def _run_status(run_dir: Path, jobs: list[dict[str, Any]]) -> dict[str, str]:
    """How a run of the sweep ended: its job's status; for shards, the first failure, else the
    merged run's status, else ``incomplete`` (a shard not run in this sweep is not finished)."""
    if not jobs[0]["shard"]:
        return {"status": jobs[0]["status"], "error": jobs[0]["error"]}
    for job in jobs:
        if job["status"] not in ("ok", "too_many_errors"):
            return {"status": job["status"], "error": job["error"]}
    if any(job.get("merged") for job in jobs):
        (metrics,) = read_complete_rows(run_dir / "metrics.csv")
        return {"status": metrics["status"], "error": ""}
    return {"status": "incomplete", "error": "; ".join(jobs[-1].get("waiting_for", []))}


def _config_value(cfg: DictConfig, *keys: str) -> str:
    """The first of ``keys`` set in ``cfg``, as text (a failed job's config may be incomplete)."""
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, default=None)
        except Exception:  # an interpolation that can't be resolved
            continue
        if value not in (None, "", "???"):
            return str(value)
    return ""
