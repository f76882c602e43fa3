"""Shards: one run split over many workers, and put back together exactly.

``runner.num_shards=N runner.shard_index=i`` answers the i-th of N consecutive slices of the
run's selected samples (after filters, shuffling and limits), equal to within one sample;
consecutive, so that the questions about one document stay in one shard and its page is
decoded once. Every shard answers into the same run directory and keeps its own files in
``shards/<i>-of-<N>/``: predictions.csv as answered, ``shard.json`` (its fingerprint and what
its last attempt cost), environment.json, and, under a launcher, job.json and .hydra/. A shard
resumes on its own, like any run. The run's fingerprint covers everything but the shard index:
the number of shards and the selection belong to it, since they decide each shard's samples.

A shard that ends records itself in shard.json; the one that finds every shard finished merges
them (``python -m runners.merge RUN_DIR`` does the same by hand): predictions.csv in dataset
order and every metrics file, as one process answering everything would have written them,
timing aside, and ``shards.csv`` with a row per shard. A merge refuses in one line a shard that
is missing or unfinished, or that ran with another configuration.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runners.config.paths import PROJECT_ROOT
from runners.config.schema import register
from runners.errors import RunnerError
from runners.execution.fingerprint import differences, summary
from runners.execution.plan import bounds, check
from runners.execution.scoring import RunCost, score, write
from runners.metrics.summaries import RunTally
from runners.rundir.environment import environment_record
from runners.rundir.files import (
    exclusive,
    iter_complete_rows,
    read_json,
    remove_stale_temporaries,
    write_csv,
    write_json,
)
from runners.rundir.naming import shard_folder
from runners.rundir.predictions import PredictionsFile

log = logging.getLogger("runners.execution.shards")

RECORD_FILE = "shard.json"
MERGE_LOCK = "shards/.merge.lock"


def name(index: int, count: int) -> str:
    return f"shard {index} of {count}"


# --- a shard ends -----------------------------------------------------------------------------


def finish_shard(run_dir: Path, plan: Any, cost: Any) -> dict[str, Any]:
    """Record this shard as finished; merge the run if every shard is.

    Returns the merged run's metrics row (with ``merged`` True), or this shard's own counts and
    status (``merged`` False, ``waiting_for`` naming the shards not finished yet).
    """
    runner = plan.settings.runner
    index, count = runner.shard_index, runner.num_shards
    folder = plan.answers_dir(run_dir)
    tally = RunTally(plan.pricing)
    for row in iter_complete_rows(folder / "predictions.csv"):
        tally.add(row)
    counts = tally.summary()
    status = "ok" if counts["error_rate"] <= runner.max_error_rate else "too_many_errors"
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(
        folder / RECORD_FILE,
        {
            "shard_index": index,
            "num_shards": count,
            "status": status,
            "n_samples": counts["n_samples"],
            "n_errors": counts["n_errors"],
            **dataclasses.asdict(cost),
            "host": socket.gethostname(),
            "finished": finished,
            "fingerprint": plan.fingerprint,
        },
    )
    with exclusive(run_dir / MERGE_LOCK, f"the merge of {run_dir}", wait=True):
        shards = shards_of(run_dir, plan)
        waiting = unfinished(shards, plan)
        if not waiting:
            return {**write_merged(run_dir, plan, shards), "merged": True}
    log.info(
        "%s answered (%d samples) into %s; the last shard to end merges the run (%s)",
        name(index, count),
        counts["n_samples"],
        folder,
        "; ".join(waiting),
    )
    return {**counts, "status": status, "merged": False, "waiting_for": waiting}


# --- the merge --------------------------------------------------------------------------------


@dataclass
class Shard:
    index: int
    folder: Path
    expected: set[str]  # the ids of its slice of the selection
    record: dict[str, Any] | None  # shard.json: None until the shard first ends


def shards_of(run_dir: Path, plan: Any) -> list[Shard]:
    """Every shard of the run, with the samples it must answer."""
    count = plan.settings.runner.num_shards
    ids = [sample.id for sample in itertools.islice(plan.dataset.samples(), plan.n_selected)]
    shards = []
    for index in range(count):
        start, stop = bounds(len(ids), index, count)
        folder = run_dir / shard_folder(index, count)
        record = folder / RECORD_FILE
        shards.append(
            Shard(
                index, folder, set(ids[start:stop]), read_json(record) if record.is_file() else None
            )
        )
    return shards


def unfinished(shards: list[Shard], plan: Any) -> list[str]:
    """Why each shard that is not finished is not (empty: all are). Raises
    :class:`RunnerError` for a shard that ran with another configuration or selection."""
    count = plan.settings.runner.num_shards
    waiting = []
    for shard in shards:
        label = name(shard.index, count)
        if shard.record is None:
            waiting.append(f"{label} has not finished (run runner.shard_index={shard.index})")
            continue
        changes = differences(shard.record["fingerprint"], plan.fingerprint)
        if changes:
            raise RunnerError(
                f"{label} in {shard.folder} ran with a different configuration "
                f"({summary(changes)}); run it again with this one, or delete its folder"
            )
        answered = [
            row["sample_id"] for row in iter_complete_rows(shard.folder / "predictions.csv")
        ]
        strangers = set(answered) - shard.expected
        if strangers or len(answered) != len(set(answered)):
            example = sorted(strangers)[0] if strangers else "a sample answered twice"
            raise RunnerError(
                f"{label} in {shard.folder} holds answers that are not its slice of the "
                f"selection ({example!r}); delete its folder and run it again"
            )
        if len(answered) < len(shard.expected):
            waiting.append(
                f"{label} answered {len(answered)} of {len(shard.expected)} samples "
                f"(run runner.shard_index={shard.index} again to resume it)"
            )
    return waiting


def merge(run_dir: Path, plan: Any) -> dict[str, Any]:
    """Merge the run's shards (:func:`write_merged`), or refuse in one line if one is not
    finished; returns the metrics row."""
    with exclusive(run_dir / MERGE_LOCK, f"the merge of {run_dir}", wait=True):
        shards = shards_of(run_dir, plan)
        if waiting := unfinished(shards, plan):
            more = f"; and {len(waiting) - 1} more" if len(waiting) > 1 else ""
            raise RunnerError(f"cannot merge {run_dir}: {waiting[0]}{more}")
        return write_merged(run_dir, plan, shards)


def write_merged(run_dir: Path, plan: Any, shards: list[Shard]) -> dict[str, Any]:
    """The finished shards' answers as one predictions.csv, scored and written as a single run
    would be, and shards.csv; returns the metrics row. Call with the merge lock held."""

    remove_stale_temporaries(run_dir)  # what a killed merge was writing
    merged = run_dir / "predictions.csv"
    merged.unlink(missing_ok=True)  # merged anew from the shards every time
    predictions = PredictionsFile(merged)
    predictions.open(resume=False)
    for shard in shards:
        rows = iter_complete_rows(shard.folder / "predictions.csv")
        while batch := list(itertools.islice(rows, 4096)):  # a shard's rows never all in memory
            predictions.append(batch)
    write_json(run_dir / "environment.json", environment_record(plan.settings.seed, PROJECT_ROOT))
    records = [shard.record for shard in shards]
    write_csv(
        run_dir / "shards.csv",
        [
            {key: value for key, value in record.items() if key != "fingerprint"}
            for record in records
        ],
    )
    run_tally, quality = score(run_dir, predictions, plan)
    log.info("merged %d shards into %s", len(shards), run_dir)
    return write(run_dir, plan, _merged_cost(records), run_tally, quality)


def _merged_cost(records: list[dict[str, Any]]) -> Any:
    """The run's cost columns from its shards': samples summed; times and peaks the largest
    shard's (what the run took with its shards side by side)."""

    gpu = [record["peak_gpu_mb"] for record in records if record["peak_gpu_mb"] is not None]
    # A shard with nothing to answer loaded no model: it names none, and says nothing of a cache.
    named = [record for record in records if record["model"]] or records
    hits = [record["cache_hit"] for record in named]
    return RunCost(
        model=named[0]["model"],
        framework=named[0]["framework"],
        answered_now=sum(record["answered_now"] for record in records),
        import_s=max(record["import_s"] for record in records),
        load_s=max(record["load_s"] for record in records),
        model_reused=all(record["model_reused"] for record in records),
        cache_hit=None if None in hits else all(hits),
        wall_s=max(record["wall_s"] for record in records),
        peak_rss_mb=max(record["peak_rss_mb"] for record in records),
        peak_gpu_mb=max(gpu) if gpu else None,
    )


def merge_run_dir(run_dir: Path) -> dict[str, Any]:
    """``python -m runners.merge RUN_DIR``: merge with the config the shards saved."""
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    folders = sorted((run_dir / "shards").glob("*-of-*"))
    if not folders:
        raise RunnerError(
            f"{run_dir} holds no shards (shards/<i>-of-<n>/); give the output directory the "
            "shards of one run answered into"
        )
    counts = {folder.name.partition("-of-")[2] for folder in folders}
    if len(counts) > 1:
        raise RunnerError(
            f"{run_dir} holds shards of runs split {' and '.join(sorted(counts))} "
            "ways; keep the folders of one of them"
        )
    saved = [folder / ".hydra" / "config.yaml" for folder in folders]
    config = next((path for path in saved if path.is_file()), None)
    if config is None:
        raise RunnerError(
            f"no shard in {run_dir} saved its config (.hydra/config.yaml); "
            "run a shard with runners.run to record it"
        )
    setup_globals()  # Hydra's resolvers (now:...) that a saved config may use
    register()  # and the runner's (default_cache_dir, ...)
    return merge(run_dir, check(OmegaConf.load(config)))
