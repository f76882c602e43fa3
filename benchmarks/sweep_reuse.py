"""A sweep over datasets with one model loads the model once.

    python benchmarks/sweep_reuse.py [--model tiny_qwen2_vl] [--limit 8]

Runs ``python -m runners.run --multirun dataset.doc_class=invoice,receipt,id_card`` (three jobs,
same model config, Hydra's basic launcher: one process) and counts the jobs whose model was
loaded rather than reused, from the sweep's summary.csv.
"""

from __future__ import annotations

import argparse
import csv

from common import print_figures, print_table, run_command, scratch_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny_qwen2_vl", help="a conf/model config name")
    parser.add_argument("--limit", type=int, default=8, help="samples per job")
    args = parser.parse_args()

    sweep_dir = scratch_dir("bench_sweep_")
    seconds = run_command(
        [
            "python",
            "-m",
            "runners.run",
            "--multirun",
            f"model={args.model}",
            "dataset.doc_class=invoice,receipt,id_card",
            f"runner.limit={args.limit}",
            "runner.progress=false",
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    with (sweep_dir / "summary.csv").open() as handle:
        jobs = list(csv.DictReader(handle))
    loads = sum(job["model_reused"] == "False" for job in jobs)
    print(f"\n{len(jobs)} jobs in {seconds:.1f} s")
    print_table(
        ["job", "dataset", "n_samples", "load_s", "model_reused"],
        [[j["job"], j["dataset"], j["n_samples"], j["load_s"], j["model_reused"]] for j in jobs],
    )
    print_figures(sweep_model_loads=loads)


if __name__ == "__main__":
    main()
