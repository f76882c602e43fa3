"""What the runner adds on top of the model: runner end to end vs a bare transformers loop.

    python benchmarks/overhead.py [--models tiny-qwen2-vl tiny-llava] [--samples 64] [--repeats 7]

The bare loop (``common.bare_loop``) is the limit: processor + chat template + ``generate`` on
images already decoded in memory. The runner goes from files on disk to predictions.csv and
metrics.csv (reading the dataset, decoding images, batching, scoring, writing). Both run in this
process with the same torch threads, interleaved, ``--repeats`` times after a warm-up; the table
shows median times and the median of the paired ratios runner / bare (each runner run divided
by the bare run just before it, which saw the same load on this shared machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (
    bare_loop,
    compose_config,
    cycled_sample_docs,
    decoded_samples,
    load_bare,
    median,
    print_figures,
    print_table,
    scratch_dir,
    timed,
)

from model_interface.tiny import ensure_tiny_model
from runners.run import ModelCache, run_experiment

# One model for every run of the script, as the jobs of a sweep share it: runs time answering.
MODELS = ModelCache()


def measure(name: str, dataset: Path, work: Path, batch_sizes: list[int], repeats: int):
    """Rows (model, batch, bare_s, runner_s, ratio) for one tiny model."""
    samples = decoded_samples(dataset)
    processor, model = load_bare(ensure_tiny_model(name, work / "cache"))
    config_name = name.replace("tiny-qwen2.5-vl", "tiny-qwen2-5-vl").replace("-", "_")
    configs = {
        batch_size: compose_config(
            f"model={config_name}",
            "model.init_params.max_new_tokens=16",
            "dataset=vlmhyperbench",
            f"dataset.root={dataset}",
            f"runner.batch_size={batch_size}",
            f"paths.cache_dir={work / 'cache'}",
        )
        for batch_size in batch_sizes
    }
    outputs = iter(range(10**6))

    def bare(batch_size: int) -> float:
        return timed(lambda: bare_loop(processor, model, samples, batch_size))

    def runner(batch_size: int) -> float:
        output_dir = work / "out" / f"{config_name}_{next(outputs)}"
        return timed(lambda: run_experiment(configs[batch_size], output_dir, MODELS))

    for batch_size in batch_sizes:  # warm-up: model loads, first-call allocations
        bare(batch_size)
        runner(batch_size)
    times = {(kind, b): [] for kind in ("bare", "runner") for b in batch_sizes}
    for _ in range(repeats):
        for batch_size in batch_sizes:
            times["bare", batch_size].append(bare(batch_size))
            times["runner", batch_size].append(runner(batch_size))
    rows = []
    for batch_size in batch_sizes:
        ours, limit = times["runner", batch_size], times["bare", batch_size]
        ratio = median([r / b for r, b in zip(ours, limit, strict=True)])
        rows.append([name, batch_size, median(limit), median(ours), ratio])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny-qwen2-vl", "tiny-llava"])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    work = scratch_dir("bench_overhead_")
    dataset = cycled_sample_docs(work / "data", args.samples)
    rows = [
        row
        for name in args.models
        for row in measure(name, dataset, work, args.batch_sizes, args.repeats)
    ]
    print(f"\n{args.samples} samples, max_new_tokens 16, greedy; median of {args.repeats} runs")
    print_table(["model", "batch", "bare_s", "runner_s", "runner/bare"], rows)
    first = [row for row in rows if row[0] == args.models[0]]
    print_figures(**{f"overhead_batch{row[1]}": row[4] for row in first if row[1] in (1, 8)})


if __name__ == "__main__":
    main()
