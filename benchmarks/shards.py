"""One run split into shards: wall clock against one process, and the merge is exact.

    python benchmarks/shards.py [--samples 10000] [--repeats 3]

``--samples`` generated questions (a small PNG each), batch 8, with two models: the dummy
model, which costs nothing, so the runner's own work and the start-up of processes are all
there is; and the dummy model waiting ``--model-ms`` per batch without using the CPU
(``tests.support.wrappers:SlowDummy``), as a model on its own GPU would. One process (``python -m
runners.run``) against the same run split into 2 and 4 shards through the joblib launcher
(``--multirun hydra/launcher=joblib hydra.launcher.n_jobs=N runner.shard_index='range(0,N)'
runner.num_shards=N``), the
last shard merging them; each a whole command, start to exit, the three interleaved
``--repeats`` times. Where sbatch is on PATH (``scripts/slurm_local.sh up``), the 4-shard run
of the dummy model also goes through SLURM (``hydra/launcher=slurm_cpu``), once.

Figures: each sharded command's wall clock over the single process's (medians), and whether
every merged predictions.csv equals the single process's once the timing columns (``call_s``,
``batch_size``) are left out (1: identical).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd
from common import generated_dataset, median, print_figures, print_table, run_command, scratch_dir

JOBLIB = ["hydra/launcher=joblib"]


def command(
    dataset: Path, out: Path, model: list[str], shards: int, launcher: list[str]
) -> list[str]:
    run = [
        sys.executable,
        "-m",
        "runners.run",
        *model,
        "dataset=vlmhyperbench",
        f"dataset.root={dataset}",
        "runner.progress=false",
        "runner.report=false",
    ]
    if shards == 1:
        return [*run, f"hydra.run.dir={out}"]
    if launcher == JOBLIB:
        launcher = [*launcher, f"hydra.launcher.n_jobs={shards}"]  # its default: one per core
    return [
        *run[:3],
        "--multirun",
        *run[3:],
        *launcher,
        f"runner.shard_index=range(0,{shards})",
        f"runner.num_shards={shards}",
        f"hydra.sweep.dir={out}",
    ]


def predictions(out: Path) -> pd.DataFrame:
    """The run's predictions.csv (a sweep's one run, for shards) without the timing columns."""
    (path,) = (
        [out / "predictions.csv"]
        if (out / "predictions.csv").is_file()
        else [path for path in out.glob("*/predictions.csv")]
    )
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    return rows.drop(columns=["call_s", "batch_size"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-ms", type=float, default=20)
    args = parser.parse_args()

    work = scratch_dir("bench_shards_")
    dataset = generated_dataset(work / "data", args.samples)
    models = {
        "dummy": ["model=dummy"],
        "model_bound": [
            "model=custom",
            "model.class_path=tests.support.wrappers:SlowDummy",
            "model.init_params.model_name=slow",
            f"+model.init_params.delay_s={args.model_ms / 1000}",
        ],
    }
    setups = [(model, shards, JOBLIB) for model in models for shards in (1, 2, 4)]
    if shutil.which("sbatch"):
        setups.append(("dummy", 4, ["hydra/launcher=slurm_cpu"]))
    times: dict[tuple[str, int, str], list[float]] = {}
    identical = True
    for repeat in range(args.repeats):
        for model, shards, launcher in setups:
            if launcher != JOBLIB and repeat:
                continue  # SLURM once: its polling, not the run, sets its pace
            kind = launcher[0].rpartition("=")[2] if shards > 1 else "-"
            out = work / "out" / f"{repeat}_{model}_{shards}_{kind}"
            seconds = run_command(command(dataset, out, models[model], shards, launcher))
            times.setdefault((model, shards, kind), []).append(seconds)
            single = work / "out" / f"{repeat}_{model}_1_-"
            identical &= predictions(out).equals(predictions(single))

    print(f"\n{args.samples} samples, batch 8; whole commands, medians of {args.repeats}")
    rows, figures = [], {}
    for (model, shards, kind), values in times.items():
        ratio = median(values) / median(times[(model, 1, "-")])
        rows.append([model, shards, kind, median(values), ratio])
        if shards > 1:
            figures[f"{model}_shards{shards}_{kind}_over_single"] = ratio
    print_table(["model", "shards", "launcher", "wall_s", "over 1 process"], rows)
    print_figures(**figures, merged_identical=float(identical))


if __name__ == "__main__":
    main()
