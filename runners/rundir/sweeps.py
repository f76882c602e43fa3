"""A sweep's directory as its jobs leave it: ``sweep.json`` at its root (the sweep's id) and a
``job.json`` per job (:mod:`runners.callbacks` writes both). Reading them is all this module
does, for the sweep's own summary and for reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runners.rundir.files import read_json

SWEEP_FILE = "sweep.json"
JOB_FILE = "job.json"


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The directories of this sweep's jobs (by the id in sweep.json), by job number."""
    sweep_file = sweep_dir / SWEEP_FILE
    sweep_id = read_json(sweep_file)["id"] if sweep_file.is_file() else None
    jobs = []
    for job_file in sweep_dir.rglob(JOB_FILE):
        job = read_json(job_file)
        if job.get("sweep_id") == sweep_id:  # not one left by an earlier sweep into this folder
            jobs.append((int(job["num"]), job_file.parent))
    return [path for _, path in sorted(jobs)]


def sweep_runs(sweep_dir: Path) -> dict[Path, list[dict[str, Any]]]:
    """This sweep's run directories, by their first job's number, each with its jobs' records:
    one job, or one per shard (whose job.json is in ``shards/<i>-of-<n>/`` of the run)."""
    runs: dict[Path, list[dict[str, Any]]] = {}
    for job_dir in sweep_jobs(sweep_dir):
        job = read_json(job_dir / JOB_FILE)
        run_dir = job_dir.parents[1] if job.get("shard") else job_dir
        runs.setdefault(run_dir, []).append(job)
    return runs
