"""Hugging Face backend throughput against batch size, through the runner.

    python benchmarks/batching.py [--model tiny_qwen2_vl] [--samples 64] [--repeats 5]

The same samples at batch 1, 4, 8 and 16, interleaved, ``--repeats`` times after a warm-up;
samples/s is the runner's own figure (inference loop, from files to CSV). Within each window of
batches the runner sorts samples by image size and prompt length, so a batch pads little.
"""

from __future__ import annotations

import argparse

from common import (
    compose_config,
    cycled_sample_docs,
    median,
    print_figures,
    print_table,
    scratch_dir,
)

from runners.run import ModelCache, run_experiment

# One model for every run of the script, as the jobs of a sweep share it: runs time answering.
MODELS = ModelCache()

BATCH_SIZES = (1, 4, 8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny_qwen2_vl", help="a conf/model config name")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    work = scratch_dir("bench_batching_")
    dataset = cycled_sample_docs(work / "data", args.samples)
    configs = {
        batch_size: compose_config(
            f"model={args.model}",
            "dataset=vlmhyperbench",
            f"dataset.root={dataset}",
            f"runner.batch_size={batch_size}",
            f"paths.cache_dir={work / 'cache'}",
        )
        for batch_size in BATCH_SIZES
    }
    runs = iter(range(10**6))

    def samples_per_s(batch_size: int) -> float:
        row = run_experiment(configs[batch_size], work / "out" / str(next(runs)), MODELS)
        assert row["n_errors"] == 0, row
        # The whole answering loop (decoding, model, writing), not only the model's time.
        return row["answered_now"] / row["wall_s"]

    for batch_size in BATCH_SIZES:  # warm-up
        samples_per_s(batch_size)
    speeds = {batch_size: [] for batch_size in BATCH_SIZES}
    for _ in range(args.repeats):
        for batch_size in BATCH_SIZES:
            speeds[batch_size].append(samples_per_s(batch_size))
    # Speed-ups pair each run with the batch-1 run of the same round.
    speedups = {
        batch_size: median([s / one for s, one in zip(speeds[batch_size], speeds[1], strict=True)])
        for batch_size in BATCH_SIZES
    }
    print(f"\n{args.model}, {args.samples} samples, median of {args.repeats} runs")
    print_table(
        ["batch", "samples/s", "speed-up"],
        [[b, median(speeds[b]), speedups[b]] for b in BATCH_SIZES],
    )
    print_figures(batch8_speedup=speedups[8])


if __name__ == "__main__":
    main()
