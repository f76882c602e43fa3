"""Start-up and whole-process time of ``python -m runners.run``, next to a bare script.

    python benchmarks/startup.py [--samples 64] [--repeats 5]

* ``--help`` and ``--cfg job``: the time to see the options or the composed config (no model
  framework is imported for either);
* the whole 64-sample tiny Qwen2-VL job at batch 8, from command to exit, next to
  ``benchmarks/bare_script.py`` (imports, load, decode, generate, write) on the same data.

Every figure is the median of ``--repeats`` whole processes, interleaved.
"""

from __future__ import annotations

import argparse
import sys

from common import (
    REPO_ROOT,
    cycled_sample_docs,
    median,
    print_figures,
    print_table,
    run_command,
    scratch_dir,
)

from model_interface.tiny import ensure_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    work = scratch_dir("bench_startup_")
    dataset = cycled_sample_docs(work / "data", args.samples)
    model_dir = ensure_tiny_model("tiny-qwen2-vl", work / "cache")
    runner = [sys.executable, "-m", "runners.run"]
    job = [
        *runner,
        "dataset=vlmhyperbench",
        f"dataset.root={dataset}",
        "runner.batch_size=8",
        f"paths.cache_dir={work / 'cache'}",
        "runner.progress=false",
    ]
    bare = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "bare_script.py"),
        str(model_dir),
        str(dataset),
        str(work / "bare.csv"),
    ]
    runs = iter(range(10**6))
    commands = {
        "--help": lambda: [*runner, "--help"],
        "--cfg job": lambda: [*runner, "--cfg", "job"],
        "runner job": lambda: [*job, f"hydra.run.dir={work / 'out' / str(next(runs))}"],
        "bare script": lambda: bare,
    }
    for command in commands.values():  # warm-up: file caches, compiled bytecode
        run_command(command())
    times = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            times[name].append(run_command(command()))
    ratio = median(
        [
            ours / limit
            for ours, limit in zip(times["runner job"], times["bare script"], strict=True)
        ]
    )
    print(
        f"\nwhole processes, median of {args.repeats}; job: tiny Qwen2-VL, {args.samples} "
        "samples, batch 8"
    )
    print_table(["command", "seconds"], [[name, median(t)] for name, t in times.items()])
    print_figures(
        help_s=median(times["--help"]),
        cfg_job_s=median(times["--cfg job"]),
        end_to_end_s=median(times["runner job"]),
        end_to_end_over_bare=ratio,
    )


if __name__ == "__main__":
    main()
