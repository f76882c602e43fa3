"""report.html and report.md of one run, several runs side by side, or a pair compared."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from runners.metrics.summaries import RunTally
from runners.reports.compare import Agreement, Pair, compare, same_dataset
from runners.reports.page import Page, shortened, shown
from runners.reports.plots import summary_figure
from runners.reports.read import ReportError, Run, read_run
from runners.reports.results import results_csv, results_table, spans_datasets
from runners.rundir.files import replace_atomically

# metrics.csv columns of speed and resources; True: higher is better.
SPEED = {
    "samples_per_s": True,
    "s_per_sample": False,
    "call_p50_s": False,
    "call_p95_s": False,
    "wall_s": False,
    "load_s": False,
    "peak_rss_mb": False,
    "peak_gpu_mb": False,
}


def write_report(
    runs: Sequence[Run],
    out_dir: Path,
    *,
    worst: int = 12,
    pair: bool | None = None,
    results: Sequence[dict[str, str]] | None = None,
) -> tuple[Path, Path]:
    """report.html and report.md of ``runs`` in ``out_dir``.

    ``pair``: compare two runs sample by sample (refused for different datasets); ``None``:
    when there are exactly two runs of the same dataset. ``results``: the runs' results table
    (results.csv), if the caller has made it; ``None``: made here where they span datasets.
    """
    if pair and len(runs) != 2:
        raise ReportError(f"a sample-by-sample comparison takes exactly two runs, not {len(runs)}")
    if pair is None:
        pair = len(runs) == 2 and same_dataset(runs[0], runs[1])
    if results is None:
        results = results_table(runs) if spans_datasets(runs) else []
    page = Page(_title(runs))
    if len(runs) == 1:
        _one_run(page, runs[0], worst)
    else:
        if results:
            page.section("Results: each run's headline score", level=2)
            page.table(results, bars=[column for column in results[0] if column != "model"])
        _side_by_side(page, runs)
        if pair:
            _pair(page, compare(runs[0], runs[1]), worst)
        for run in runs:
            page.section(f"Run {run.name}", level=2)
            _run_figures(page, run, worst=min(worst, 3))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _cannot_write(out_dir, error) from None
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    _write_text(html_path, page.html())
    _write_text(md_path, page.markdown())
    if results:
        _write_text(out_dir / "results.csv", results_csv(results))
    return html_path, md_path


def _title(runs: Sequence[Run]) -> str:
    if len(runs) == 1:
        run = runs[0]
        return f"{run.metrics.get('model', '?')} on {run.metrics.get('dataset', '?')}: {run.name}"
    return f"{len(runs)} runs: " + ", ".join(run.name for run in runs)


def _one_run(page: Page, run: Run, worst: int) -> None:
    metrics = run.metrics
    page.open_cards()
    page.facts(
        {
            "run directory": str(run.path),
            "model": metrics.get("model", ""),
            "framework": metrics.get("framework", ""),
            "dataset": metrics.get("dataset", ""),
            "task": metrics.get("task", ""),
            "status": metrics.get("status", ""),
            "samples": metrics.get("n_samples", ""),
            "errors": metrics.get("n_errors", ""),
        }
    )
    quality = quality_columns(metrics)
    page.table([{"quality": key, "value": metrics[key]} for key in quality], bars=())
    page.table([{"speed": key, "value": metrics[key]} for key in SPEED if key in metrics], bars=())
    page.close_cards()
    page.preformatted(
        "metrics.csv, every column", "\n".join(f"{key}: {value}" for key, value in metrics.items())
    )
    _run_figures(page, run, worst)
    page.section("Config and environment", level=2)
    page.preformatted("config (.hydra/config.yaml)", run.config or "(not recorded)")
    page.preformatted("environment.json", json.dumps(run.environment, indent=2))


def quality_columns(metrics: dict[str, str]) -> list[str]:
    """The columns of a metrics.csv row that its task computed (the rest are counts, timing
    and resources)."""
    run_columns = {
        *RunTally().summary(),
        *SPEED,
        "model",
        "framework",
        "dataset",
        "task",
        "answers",
        "answered_now",
        "batch_size",
        "import_s",
        "model_reused",
        "cache_hit",
        "status",
    }
    return [key for key in metrics if key not in run_columns]


def _run_figures(page: Page, run: Run, worst: int) -> None:
    calls = run.call_times
    page.section("Call times", level=3)
    page.histogram(
        calls,
        "call_s: seconds of the model call that answered the sample "
        "(the rows of one batch share its call)",
    )
    page.section(f"Worst samples of {run.name}", level=3)
    ranked = worst_samples(run, worst)
    score = run.rank_by
    highest = "" if score is None or run.higher_is_better(score) else " (highest)"
    page.note(
        f"{len(ranked)} of {run.n_rows}: failed samples first, then by "
        f"{score or 'sample order'}{highest}"
    )
    page.samples(ranked, run, [score] if score else [])
    for name, table in run.tables.items():
        page.section(name, level=3)
        if len(table.rows) < table.total:
            note = f"the {len(table.rows)} lowest-scoring of {table.total} rows; all are in {name}"
            page.note(note)
        page.table(table.rows, bars=_shares(run))


def worst_samples(run: Run, count: int) -> list[dict[str, str]]:
    """The ``count`` worst rows (at most those :func:`read_run` kept): failed ones first, then
    by the score its task ranks by."""
    return run.worst[:count]


def _side_by_side(page: Page, runs: Sequence[Run]) -> None:
    import pandas as pd

    page.section("Side by side", level=2)
    keys = ["model", "framework", "dataset", "task", "status", "n_samples", "n_errors"]
    quality = list(dict.fromkeys(key for run in runs for key in quality_columns(run.metrics)))
    speed = [key for key in SPEED if any(run.number(key) is not None for run in runs)]
    columns = ["run", *keys, *quality, *speed]
    rows = [{"run": run.name, **run.metrics} for run in runs]
    page.table([{key: row.get(key, "") for key in columns} for row in rows], bars=_shares(*runs))
    summary = pd.DataFrame(
        [
            {
                "job": run.name,
                "model": run.metrics.get("model", ""),
                **{key: run.number(key) for key in [*quality, "s_per_sample"]},
            }
            for run in runs
        ]
    )
    page.figure(summary_figure(summary), "quality against model time per sample")


def _pair(page: Page, pair: Pair, worst: int) -> None:
    a, b = pair.a.name, pair.b.name
    page.section(f"{b} against {a}, sample by sample", level=2)
    page.facts(
        {
            "A": f"{a} ({pair.a.path})",
            "B": f"{b} ({pair.b.path})",
            "samples in both": pair.n_paired,
            "only in A / only in B": f"{pair.only_a} / {pair.only_b}",
        }
    )
    _answers(page, pair.answers, worst)
    if pair.correctness:
        page.section(f"Correctness ({pair.correctness})", level=3)
        page.facts(
            {
                "right in A only": len(pair.right_only_a),
                "right in B only": len(pair.right_only_b),
                "McNemar exact p (two-sided)": shown(pair.mcnemar_p),
            }
        )
    else:
        page.note("the two runs have no correctness column in common: no flips to count")
    page.section("Per-sample metrics: B − A, paired bootstrap 95% interval", level=3)
    page.table(
        [
            {
                "metric": m.name,
                "A": m.mean_a,
                "B": m.mean_b,
                "B − A": m.difference,
                "95% low": m.low,
                "95% high": m.high,
                "better": _better(m.name, m.low, m.high, pair.a),
            }
            for m in pair.metrics
        ],
        bars=(),
    )
    page.section("Speed", level=3)
    speed_rows = []
    for key, more_is_faster in SPEED.items():
        value_a, value_b = pair.a.number(key), pair.b.number(key)
        if value_a is None or value_b is None:
            continue
        ratio = value_b / value_a if value_a else math.nan
        speed_rows.append(
            {
                "figure": key,
                "A": value_a,
                "B": value_b,
                "B / A": ratio,
                "better when": "higher" if more_is_faster else "lower",
            }
        )
    page.table(speed_rows, bars=())
    for title, flipped in (
        ("Right in A, wrong in B", pair.right_only_a),
        ("Right in B, wrong in A", pair.right_only_b),
    ):
        page.section(f"{title} ({len(flipped)})", level=3)
        if len(flipped) > worst:
            page.note(f"the first {worst} in dataset order")
        page.flips(flipped[:worst], pair)


def _answers(page: Page, answers: Agreement, worst: int) -> None:
    page.section("Answers", level=3)
    page.facts(
        {
            "answered in both (no error)": answers.compared,
            "the same as written": answers.as_written,
            "the same after normalisation": answers.same,
            "the same number of completion tokens": (
                f"{answers.same_token_count} of {answers.token_counts_known}"
            ),
        }
    )
    page.note(
        "normalisation: U+FFFD at the end is dropped (a character cut by the token limit), and "
        "two JSON objects or arrays are compared without whitespace between their tokens"
    )
    if not answers.different:
        return
    if len(answers.different) > worst:
        page.note(f"the first {worst} of {len(answers.different)} different answers")
    page.table(
        [
            {
                "sample": row_a["sample_id"],
                "first different character": index,
                "A from there": shortened(row_a["prediction"][index:]),
                "B from there": shortened(row_b["prediction"][index:]),
            }
            for row_a, row_b, index in answers.different[:worst]
        ],
        bars=(),
    )


def _better(name: str, low: float, high: float, run: Run) -> str:
    if math.isnan(low) or low <= 0 <= high:
        return "no clear difference"
    return "B" if (low > 0) == run.higher_is_better(name) else "A"


def _shares(*runs: Run) -> set[str]:
    """The columns a bar is drawn in: scores where higher is better (a share of 0 to 1 gets
    a bar; other values are shown plain)."""
    return {name for run in runs for name, higher in run.guide.higher_is_better.items() if higher}


def _write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file renamed over it: a report that can't be
    written leaves the one before it whole."""
    replace_atomically(path, lambda handle: handle.write(text.encode("utf-8")), _cannot_write)


def _cannot_write(path: Path, error: OSError) -> ReportError:
    # Exit code 1, as runners.rundir.files.write_error: the machine failed, not what was asked.
    return ReportError(
        f"cannot write {path}: {error.strerror or error}; free space or fix the permissions, "
        "or write the report elsewhere with --out DIR",
        exit_code=1,
    )


def report_run(run_dir: Path) -> Path | None:
    """report.html and report.md of a run that just ended, in its directory. A report that
    can't be made is logged, not raised: the run's own files are written by then."""
    import logging

    try:
        return write_report([read_run(run_dir)], run_dir)[0]
    except Exception as error:  # a figure that fails must not turn a finished run into a failed one
        logging.getLogger(__name__).warning("report.html not written: %s", error)
        return None
