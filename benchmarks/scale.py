"""The runner at 10k, 100k and 1M samples: what grows with the dataset, and what must not.

    python benchmarks/scale.py [--sizes 10000 100000 1000000] [--repeats 1]

The dummy model (it costs almost nothing, so the runner's own work shows), batch 8, and an
annotation file of N rows made on the fly over 64 small generated images. Each figure is a whole
process (``python -m runners.*``), its peak RSS the kernel's figure for it. At each size:

* ``run``: a fresh run with the default report: samples/s of the whole process, peak RSS;
* ``resume``: the same command again, with nothing left to answer (seconds);
* ``shards``: the same run as 4 shards, one process after another (the last one merges);
* ``merge``: ``python -m runners.merge`` on those 4 finished shards, over the time the shards
  took to write them;
* ``report``: ``python -m runners.report`` on the run, over the run's time.

Goals (issue 20): throughput at 1M >= 0.9x that at 10k; peak RSS at 1M <= 1.5x that at 10k;
resume with nothing left at 100k <= 2 s; the merge of 4 x 250k <= 1.2x the shards' time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import (
    VLMHYPERBENCH_COLUMNS,
    generated_dataset,
    measured_process,
    median,
    print_figures,
    print_table,
    scratch_dir,
)

N_IMAGES = 64


def annotation(root: Path, n_samples: int) -> str:
    """An annotation file of ``n_samples`` rows cycling over the generated images, written
    beside the default one; its file name."""
    template = (root / "annotation.csv").read_text(encoding="utf-8").splitlines()[1:]
    name = f"annotation_{n_samples}.csv"
    with (root / name).open("w", encoding="utf-8", newline="") as handle:
        handle.write(";".join(VLMHYPERBENCH_COLUMNS) + "\r\n")
        for index in range(n_samples):
            row = template[index % len(template)].split(";")
            handle.write(";".join([str(index), *row[1:]]) + "\r\n")
    return name


def run_args(dataset: Path, file: str, output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "runners.run",
        "model=dummy",
        "dataset=vlmhyperbench",
        f"dataset.root={dataset}",
        f"dataset.file={file}",
        "runner.progress=false",
        f"hydra.run.dir={output_dir}",
        *extra,
    ]


def measure(dataset: Path, n_samples: int, out: Path) -> dict[str, float]:
    file = annotation(dataset, n_samples)
    run_s, rss_mb = measured_process(run_args(dataset, file, out / "run"))
    resume_s, _ = measured_process(run_args(dataset, file, out / "run", "runner.resume=true"))
    report_s, _ = measured_process([sys.executable, "-m", "runners.report", str(out / "run")])
    shards_s = 0.0
    for index in range(4):
        shard = ("runner.num_shards=4", f"runner.shard_index={index}", "runner.report=false")
        shards_s += measured_process(run_args(dataset, file, out / "shards", *shard))[0]
    merge_s, _ = measured_process([sys.executable, "-m", "runners.merge", str(out / "shards")])
    (dataset / file).unlink()
    return {
        "samples_per_s": n_samples / run_s,
        "rss_mb": rss_mb,
        "resume_s": resume_s,
        "report_over_run": report_s / run_s,
        "merge_over_shards": merge_s / shards_s,
    }


def label(n_samples: int) -> str:
    """10000 -> 10k, 1000000 -> 1m."""
    for unit, size in (("m", 1_000_000), ("k", 1000)):
        if n_samples % size == 0:
            return f"{n_samples // size}{unit}"
    return str(n_samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    work = scratch_dir("bench_scale_")
    dataset = generated_dataset(work / "data", N_IMAGES)
    results: dict[int, dict[str, float]] = {}
    for size in args.sizes:
        runs = [measure(dataset, size, work / f"{size}_{repeat}") for repeat in range(args.repeats)]
        results[size] = {key: median([run[key] for run in runs]) for key in runs[0]}

    print(f"\ndummy model, batch 8, medians of {args.repeats} run(s) per size")
    columns = list(results[args.sizes[0]])
    print_table(["samples", *columns], [[size, *results[size].values()] for size in args.sizes])
    figures = {
        f"{key}_{label(size)}": value for size in args.sizes for key, value in results[size].items()
    }
    smallest, largest = results[min(args.sizes)], results[max(args.sizes)]
    figures["throughput_largest_over_smallest"] = (
        largest["samples_per_s"] / smallest["samples_per_s"]
    )
    figures["rss_largest_over_smallest"] = largest["rss_mb"] / smallest["rss_mb"]
    print_figures(**figures)


if __name__ == "__main__":
    main()
