"""Reports: ``python -m runners.report RUN_DIR... [--out DIR] [--worst N]``.

Writes ``report.html`` (self-contained: styles, one small script and the thumbnails are in the
file; nothing is fetched) and ``report.md`` with the same tables:

* one run: what ran (model, dataset, config, environment), the metrics, the per-group tables
  with a bar in every score cell, the distribution of call times, and the worst samples with
  their image, prompt, reference and prediction, the differences marked;
* several runs (a list, or a sweep's directory standing for its jobs): the runs side by side
  and quality against speed; runs of several datasets also a results table, one row per model
  and a column per dataset (printed in Markdown, and written to results.csv:
  :mod:`runners.reports.results`);
* exactly two runs of the same dataset: how many answers are the same (the check to make before
  trusting a switch of backend, e.g. transformers to vLLM: see
  :func:`runners.reports.compare.same_answer`) and where
  each different one first differs, the samples whose correctness flipped, each per-sample
  metric's difference with a paired bootstrap 95% interval, McNemar's exact test on
  correctness, and the differences in throughput and latency. Two runs of different datasets
  (by the annotation file's hash in their fingerprints) are refused.

Everything is read from the run directories, so a report can be made of any finished run, and
is rebuilt the same way from the same files. Only the samples shown get a thumbnail, so the
report of a large run stays small, and only from an image inside the dataset root the run
recorded: a report is mailed, so it shows no file its run was not allowed to read. Every value
from data, a model or a config is escaped, in report.html as HTML and in report.md as Markdown.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from runners.errors import RunnerError
from runners.reports.compare import agreement, paired_rows
from runners.reports.read import read_run, run_dirs
from runners.reports.results import results_markdown, results_table, spans_datasets
from runners.reports.write import write_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runners.report",
        description="Write report.html and report.md for one run, several runs or a sweep; "
        "two runs of the same dataset are also compared sample by sample.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run or sweep output directories")
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write (default: the one directory given, else outputs/reports/<time>)",
    )
    parser.add_argument("--worst", type=int, default=12, help="samples shown per list")
    arguments = parser.parse_args(argv)
    try:
        paths = run_dirs(arguments.runs)
        clash = len({path.name for path in paths}) < len(paths)  # e.g. job 0 of two sweeps
        runs = [
            read_run(
                path, f"{path.parent.name}/{path.name}" if clash else None, worst=arguments.worst
            )
            for path in paths
        ]
        out = arguments.out or _default_out(arguments.runs)
        results = results_table(runs) if spans_datasets(runs) else []
        pair = len(runs) == 2 and not results
        html_path, _ = write_report(runs, out, worst=arguments.worst, pair=pair, results=results)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    if pair:  # compared sample by sample above
        print(agreement(paired_rows(*runs)).summary())
    if results:  # also in results.csv beside the report
        print(results_markdown(results))
    print(html_path)
    return 0


def _default_out(given: Sequence[Path]) -> Path:
    if len(given) == 1:
        return given[0]
    return Path("outputs", "reports", datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))


if __name__ == "__main__":
    sys.exit(main())
