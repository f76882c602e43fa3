"""Names inside the run directories: a sweep job's folder, a shard's folder. Both are
OmegaConf resolvers too (``${sweep_subdir:...}``), so the YAML and the code name folders alike.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any


def shard_folder(index: int, count: int) -> str:
    """Where shard ``index`` of ``count`` keeps its own files inside the run directory
    (``shards/<i>-of-<n>/``); "" for a run that is not split."""
    return f"shards/{index}-of-{count}/" if int(count) > 1 else ""


# Overrides that never make another run of a sweep: the shards of one run differ in the first.
SAME_RUN_OVERRIDES = frozenset(
    {
        "runner.shard_index",
        "run_name",
        "runner.resume",
        "runner.progress",
        "runner.report",
        "tracking",
        "tracking.uri",
        "tracking.experiment",
    }
)


def sweep_subdir(number: int, model: str, dataset: str, num_shards: int, overrides: Any) -> str:
    """A sweep job's folder: ``<n>_<model>_<dataset>``. The shards of one run answer into one
    run directory, so theirs is named by what they share: ``<model>_<dataset>_<N>shards``, then
    every other override of the job (a sweep over batch sizes makes one run per size)."""
    if int(num_shards) <= 1:
        return f"{number}_{model}_{dataset}"
    named = {"model", "dataset", "runner.num_shards", *SAME_RUN_OVERRIDES}
    others = [str(item) for item in overrides if str(item).split("=")[0].lstrip("+~") not in named]
    name = re.sub(r"[^\w.=,+-]", "_", "_".join([f"{model}_{dataset}_{num_shards}shards", *others]))
    if len(name) > 120:  # a folder name must stay short; the digest keeps it unique
        name = f"{name[:100]}_{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name
