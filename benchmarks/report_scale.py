"""The report of a large run: how long it takes beside the run itself, and how big it is.

    python benchmarks/report_scale.py [--samples 10000] [--repeats 3]

One run of the dummy model over ``--samples`` questions cycling over the sample documents (real
420x594 scans, so thumbnails are what a document run shows), with ``runner.report=false``; then
``python -m runners.report`` on its directory, a whole process each time, ``--repeats`` times.
Figures: the report's wall time over the run's (the run with the near-free dummy model is the
smallest a real run can be), and the size of report.html over predictions.csv's.
"""

from __future__ import annotations

import argparse
import sys

from common import cycled_sample_docs, median, print_figures, print_table, run_command, scratch_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = scratch_dir("bench_report_")
    dataset = cycled_sample_docs(work / "data", args.samples)
    run_dir = work / "run"
    run_s = run_command(
        [
            sys.executable,
            "-m",
            "runners.run",
            "model=dummy",
            "dataset=vlmhyperbench",
            f"dataset.root={dataset}",
            "runner.progress=false",
            "runner.report=false",
            f"hydra.run.dir={run_dir}",
        ]
    )
    report_s = median(
        [
            run_command([sys.executable, "-m", "runners.report", str(run_dir)])
            for _ in range(args.repeats)
        ]
    )
    html_kb = (run_dir / "report.html").stat().st_size / 1024
    predictions_kb = (run_dir / "predictions.csv").stat().st_size / 1024
    print(f"\n{args.samples} samples, dummy model; report: median of {args.repeats} processes")
    print_table(
        ["run_s", "report_s", "report.html KB", "predictions.csv KB"],
        [[run_s, report_s, html_kb, predictions_kb]],
    )
    print_figures(
        report_over_run=report_s / run_s,
        report_html_kb=html_kb,
        report_over_predictions_size=html_kb / predictions_kb,
    )


if __name__ == "__main__":
    main()
