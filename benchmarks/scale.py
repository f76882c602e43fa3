"""The runner on a large dataset: throughput and peak memory at 1k and 10k samples.

    python benchmarks/scale.py [--samples 10000] [--repeats 3]

A generated dataset of small images (one PNG per sample), the dummy model (so the model costs
almost nothing and the runner's own work shows), batch 8. Each run is a whole process
(``python -m runners.run``); its peak RSS is the kernel's figure for that process. Streaming
means peak memory does not grow with the dataset.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

from common import REPO_ROOT, generated_dataset, median, print_figures, print_table, scratch_dir


def run(dataset: Path, limit: int, output_dir: Path) -> tuple[float, float]:
    """(samples/s of the whole answering loop, peak RSS in MB of the whole process)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runners.run",
            "model=dummy",
            "dataset=vlmhyperbench",
            f"dataset.root={dataset}",
            f"runner.limit={limit}",
            "runner.progress=false",
            f"hydra.run.dir={output_dir}",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"run failed:\n{process.stderr.read().decode()[-3000:]}")
    with (output_dir / "metrics.csv").open() as handle:
        metrics = next(csv.DictReader(handle))
    # The runner's throughput: wall_s is the whole answering loop (decoding, model, writing),
    # where samples_per_s in metrics.csv counts the model's time only.
    runner_speed = float(metrics["answered_now"]) / float(metrics["wall_s"])
    return runner_speed, usage.ru_maxrss / 1024  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = scratch_dir("bench_scale_")
    dataset = generated_dataset(work / "data", args.samples)
    sizes = [args.samples // 10, args.samples]
    results = {size: [] for size in sizes}
    runs = iter(range(10**6))
    for _ in range(args.repeats):
        for size in sizes:
            results[size].append(run(dataset, size, work / "out" / str(next(runs))))
    rows = []
    for size in sizes:
        speeds, peaks = zip(*results[size], strict=True)
        rows.append([size, median(speeds), median(peaks)])
    print(
        f"\ndummy model, batch 8, {args.samples // 10} and {args.samples} samples, "
        f"median of {args.repeats} runs"
    )
    print_table(["samples", "samples/s", "peak_rss_mb"], rows)
    print_figures(rss_10k_over_1k=rows[1][2] / rows[0][2], samples_per_s_10k=rows[1][1])


if __name__ == "__main__":
    main()
