"""Reports: ``python -m runners.report RUN_DIR... [--out DIR] [--worst N]``.

Writes ``report.html`` (self-contained: styles, one small script and the thumbnails are in the
file; nothing is fetched) and ``report.md`` with the same tables:

* one run: what ran (model, dataset, config, environment), the metrics, the per-group tables
  with a bar in every score cell, the distribution of call times, and the worst samples with
  their image, prompt, reference and prediction, the differences marked;
* several runs (a list, or a sweep's directory standing for its jobs): the runs side by side
  and quality against speed;
* exactly two runs of the same dataset: how many answers are the same (the check to make before
  trusting a switch of backend, e.g. transformers to vLLM: see :func:`same_answer`) and where
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
import base64
import csv
import difflib
import functools
import heapq
import html
import io
import itertools
import json
import math
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from runners.config import RunnerError
from runners.outputs import PREDICTION_COLUMNS, read_json
from runners.sweeps import SWEEP_FILE, sweep_runs
from runners.tasks.base import SCORE_GUIDE_FILE, ScoreGuide

# What the report knew of the built-in tasks before each run wrote its score_guide.json
# (model-interface 0.2): runs made then are read with it. The first score a run has ranks it.
LEGACY_SCORES = {
    "anls": True,
    "field_f1": True,
    "correct": True,
    "exact_match": True,
    "all_fields_correct": True,
    "field_anls": True,
    "field_exact_match": True,
    "field_precision": True,
    "field_recall": True,
    "json_valid": True,
    "schema_valid": True,
    "cer": False,
    "wer": False,
    "field_cer": False,
}
LEGACY_CORRECTNESS = ("exact_match", "correct", "all_fields_correct")
LEGACY_GROUP_FILES = (
    "metrics_by_group.csv",
    "metrics_by_doc_class.csv",
    "metrics_by_field.csv",
    "metrics_by_label.csv",
    "confusion_matrix.csv",
    "metrics_by_document.csv",
)
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
MAX_GROUP_ROWS = 20  # a table with more rows shows its worst 20
BOOTSTRAP_RESAMPLES = 2000
THUMBNAIL_PX = 220
MAX_THUMBNAIL_SOURCE_PIXELS = 64_000_000
# A prompt, reference or answer is shown up to this many characters: marking the differences
# takes time quadratic in the length, and a page is for reading (the CSV files hold it all).
MAX_SHOWN_CHARS = 2000


class ReportError(RunnerError):
    """A report that can't be made: one line saying why."""


@dataclass
class Run:
    """A finished run directory, as the report reads it."""

    path: Path
    name: str
    metrics: dict[str, str]
    # predictions.csv, read in one pass and not kept (a run may have millions of rows): ...
    n_rows: int
    scores: list[str]  # ... the per-sample score columns it has,
    call_times: list[float]  # ... each row's call_s,
    worst: list[dict[str, str]]  # ... and its worst rows (worst_samples)
    guide: ScoreGuide  # how its task's scores read
    tables: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    config: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] | None = None

    @functools.cached_property
    def rows(self) -> list[dict[str, str]]:
        """Every row of predictions.csv, in its order: read (and kept) when a comparison asks."""
        return _read_csv(self.path / "predictions.csv")

    @property
    def dataset_root(self) -> Path | None:
        root = (self.fingerprint or {}).get("dataset", {}).get("root")
        return Path(root) if root else None

    def number(self, key: str) -> float | None:
        return _number(self.metrics.get(key))

    @property
    def rank_by(self) -> str | None:
        """The per-sample score its worst samples are ranked by, if the run has it."""
        return self.guide.rank_by if self.guide.rank_by in self.scores else None

    def higher_is_better(self, name: str) -> bool:
        return self.guide.higher_is_better.get(name, True)


def read_run(path: Path, name: str | None = None, *, worst: int = 12) -> Run:
    """The run in ``path``, keeping its ``worst`` worst rows; refuses a directory that holds no
    finished run."""
    missing = [file for file in ("metrics.csv", "predictions.csv") if not (path / file).is_file()]
    if missing:
        raise ReportError(
            f"{path} is not a finished run (no {' or '.join(missing)}): give a run's output "
            "directory, or a sweep's, e.g. outputs/<run_name> or outputs/multirun/<run_name>"
        )
    # A merged run's config is its shards' (runners/shards.py), each in its own folder.
    configs = [path / ".hydra" / "config.yaml", *sorted(path.glob("shards/*/.hydra/config.yaml"))]
    hydra_config = next((config for config in configs if config.is_file()), configs[0])
    guide_file = path / SCORE_GUIDE_FILE
    try:
        guide = (
            ScoreGuide.from_json(read_json(guide_file))
            if guide_file.is_file()
            else _legacy_guide(_header(path / "predictions.csv"))
        )
    except ValueError as error:  # bad JSON included
        raise ReportError(
            f"{guide_file} is damaged ({error}); delete it to read the run with the built-in "
            "tasks' defaults"
        ) from None
    predictions = path / "predictions.csv"
    n_rows, scores, call_times, worst_rows = _read_predictions(predictions, guide, worst)
    return Run(
        path=path,
        name=name or path.name,
        metrics=_read_csv(path / "metrics.csv")[0],
        n_rows=n_rows,
        scores=scores,
        call_times=call_times,
        worst=worst_rows,
        tables={
            file: _read_csv(path / file) for file in guide.group_files if (path / file).is_file()
        },
        config=hydra_config.read_text(encoding="utf-8") if hydra_config.is_file() else "",
        environment=_read_json_or_empty(path / "environment.json"),
        fingerprint=_read_json_or_empty(path / "fingerprint.json") or None,
        guide=guide,
    )


def _read_predictions(
    path: Path, guide: ScoreGuide, worst: int
) -> tuple[int, list[str], list[float], list[dict[str, str]]]:
    """One pass over predictions.csv: its number of rows, its score columns (those holding a
    number), each row's call_s, and its ``worst`` worst rows: failed ones first, then by the
    score its task ranks by, then in sample order."""
    from runners.outputs import iter_complete_rows

    rows = iter_complete_rows(path)
    first = next(rows, None)
    columns = [column for column in first or {} if column not in PREDICTION_COLUMNS]
    numeric: set[str] = set()
    call_times: list[float] = []
    n_rows = 0
    rank_by = guide.rank_by if guide.rank_by in columns else None
    sign = 1 if rank_by is None or guide.higher_is_better.get(rank_by, True) else -1

    def counted(row: dict[str, str]) -> dict[str, str]:
        nonlocal n_rows
        n_rows += 1
        if (seconds := _number(row.get("call_s"))) is not None:
            call_times.append(seconds)
        numeric.update(
            column
            for column in columns
            if column not in numeric and _number(row[column]) is not None
        )
        return row

    def badness(row: dict[str, str]) -> tuple[int, float, int]:
        value = _number(row.get(rank_by)) if rank_by else None
        score = -math.inf if value is None else sign * value  # no score: as bad as can be
        return (0 if row.get("error") else 1, score, int(row["sample_index"]))

    every_row = map(counted, itertools.chain([first] if first else [], rows))
    worst_rows = heapq.nsmallest(worst, every_row, key=badness)
    return n_rows, [column for column in columns if column in numeric], call_times, worst_rows


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle), [])


def _legacy_guide(scores: list[str]) -> ScoreGuide:
    """How the scores of a run made before runs wrote score_guide.json read (``scores``: the
    columns of its predictions.csv)."""
    return ScoreGuide(
        higher_is_better=LEGACY_SCORES,
        rank_by=next((name for name in LEGACY_SCORES if name in scores), None),
        correctness=next((name for name in LEGACY_CORRECTNESS if name in scores), None),
        group_files=LEGACY_GROUP_FILES,
    )


def run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Each path as given, but a sweep's directory replaced by its jobs that left results."""
    found: list[Path] = []
    for path in paths:
        if (path / SWEEP_FILE).is_file() and not (path / "metrics.csv").is_file():
            jobs = [run for run in sweep_runs(path) if (run / "metrics.csv").is_file()]
            if not jobs:
                raise ReportError(f"no job of the sweep in {path} has results yet")
            found.extend(jobs)
        else:
            found.append(path)
    return found


# --- Comparing two runs -----------------------------------------------------------------------


@dataclass
class MetricDifference:
    name: str
    mean_a: float
    mean_b: float
    low: float  # 95% paired bootstrap interval of mean_b - mean_a
    high: float

    @property
    def difference(self) -> float:
        return self.mean_b - self.mean_a


@dataclass
class Agreement:
    """How often two runs answered a sample the same (samples both answered without error)."""

    compared: int
    as_written: int  # texts equal character for character
    same: int  # equal by :func:`same_answer` (as_written included)
    token_counts_known: int  # samples with completion_tokens in both runs
    same_token_count: int
    different: list[tuple[dict[str, str], dict[str, str], int]]  # rows, first differing index

    def summary(self) -> str:
        if not self.compared:
            return "answers: no sample answered without error in both runs"
        normalised = self.same - self.as_written
        return (
            f"answers: {self.same} of {self.compared} the same"
            + (f" ({normalised} after normalisation)" if normalised else "")
            + f", {len(self.different)} different"
        )


@dataclass
class Pair:
    """Two runs of the same dataset, sample by sample (samples both answered)."""

    a: Run
    b: Run
    n_paired: int
    only_a: int
    only_b: int
    answers: Agreement
    correctness: str | None  # the 0/1 column compared, None when the runs have none in common
    right_only_a: list[tuple[dict[str, str], dict[str, str]]]  # (row of a, row of b)
    right_only_b: list[tuple[dict[str, str], dict[str, str]]]
    mcnemar_p: float | None
    metrics: list[MetricDifference]


def compare(a: Run, b: Run, *, seed: int = 0) -> Pair:
    """Pair the samples of ``a`` and ``b`` by id; refuses runs of different datasets."""
    pairs = paired_rows(a, b)
    declared = a.guide.correctness  # the same task's runs declare the same
    shared = declared == b.guide.correctness and declared in a.scores and declared in b.scores
    correctness = declared if shared else None
    right_only_a, right_only_b = [], []
    if correctness:
        for row_a, row_b in pairs:
            right_a, right_b = _number(row_a[correctness]) == 1, _number(row_b[correctness]) == 1
            if right_a and not right_b:
                right_only_a.append((row_a, row_b))
            elif right_b and not right_a:
                right_only_b.append((row_a, row_b))
    shared = [name for name in a.scores if name in b.scores]
    return Pair(
        a=a,
        b=b,
        n_paired=len(pairs),
        only_a=a.n_rows - len(pairs),
        only_b=b.n_rows - len(pairs),
        answers=agreement(pairs),
        correctness=correctness,
        right_only_a=right_only_a,
        right_only_b=right_only_b,
        mcnemar_p=mcnemar_exact_p(len(right_only_a), len(right_only_b)) if correctness else None,
        metrics=[_paired_difference(name, pairs, seed) for name in shared],
    )


def paired_rows(a: Run, b: Run) -> list[tuple[dict[str, str], dict[str, str]]]:
    """The rows of the samples both runs have, by id, in ``a``'s order."""
    _require_same_dataset(a, b)
    by_id_b = {row["sample_id"]: row for row in b.rows}
    pairs = [(row, by_id_b[row["sample_id"]]) for row in a.rows if row["sample_id"] in by_id_b]
    if not pairs:
        raise ReportError(f"{a.path} and {b.path} have no sample in common to compare")
    return pairs


def same_answer(a: str, b: str) -> bool:
    """Whether two answers are the same after the report's normalisation, which forgives only
    what a backend changes in the writing, never in the content:

    * U+FFFD at the end is dropped: generation that stops inside a multi-byte character ends,
      decoded by transformers, in U+FFFD, while vLLM leaves the incomplete character out;
    * two JSON objects or arrays are compared written without whitespace between tokens,
      since grammars for the same schema may place it differently (keys stay in order, and
      ``1``, ``1.0`` and ``true`` stay different).
    """
    a, b = a.rstrip("\ufffd"), b.rstrip("\ufffd")
    if a == b:
        return True
    compact_a = _compact_json(a)
    return compact_a is not None and compact_a == _compact_json(b)


def _compact_json(text: str) -> str | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict | list):
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def agreement(pairs: Sequence[tuple[dict[str, str], dict[str, str]]]) -> Agreement:
    """Answer agreement of paired rows (see :class:`Agreement`)."""
    answered = [(a, b) for a, b in pairs if not a["error"] and not b["error"]]
    counts = [
        (_number(a["completion_tokens"]), _number(b["completion_tokens"])) for a, b in answered
    ]
    known = [(x, y) for x, y in counts if x is not None and y is not None]
    different = [
        (a, b, _first_difference(a["prediction"], b["prediction"]))
        for a, b in answered
        if not same_answer(a["prediction"], b["prediction"])
    ]
    return Agreement(
        compared=len(answered),
        as_written=sum(a["prediction"] == b["prediction"] for a, b in answered),
        same=len(answered) - len(different),
        token_counts_known=len(known),
        same_token_count=sum(x == y for x, y in known),
        different=different,
    )


def _first_difference(a: str, b: str) -> int:
    shorter = min(len(a), len(b))
    return next((i for i in range(shorter) if a[i] != b[i]), shorter)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test: under "both runs are as often right", each discordant pair
    is a fair coin, so the p-value is a binomial tail (exact integers, any number of pairs)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def _paired_difference(name: str, pairs: Sequence[tuple[dict, dict]], seed: int) -> Any:
    import numpy as np

    values = [(_number(a[name]), _number(b[name])) for a, b in pairs]
    both = np.array([(x, y) for x, y in values if x is not None and y is not None], dtype=float)
    if len(both) == 0:
        return MetricDifference(name, math.nan, math.nan, math.nan, math.nan)
    differences = both[:, 1] - both[:, 0]
    resampled = np.random.default_rng(seed).integers(
        0, len(differences), (BOOTSTRAP_RESAMPLES, len(differences))
    )
    means = differences[resampled].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return MetricDifference(name, both[:, 0].mean(), both[:, 1].mean(), float(low), float(high))


def _require_same_dataset(a: Run, b: Run) -> None:
    for run in (a, b):
        if run.fingerprint is None:
            raise ReportError(
                f"{run.path} has no fingerprint.json, so there is no telling which dataset it "
                "ran on; only runs made by this version can be compared sample by sample"
            )
    identity = ("format", "sample_ids", "annotation_sha256")
    dataset_a, dataset_b = a.fingerprint["dataset"], b.fingerprint["dataset"]  # type: ignore[index]
    if any(dataset_a.get(key) != dataset_b.get(key) for key in identity):
        raise ReportError(
            f"{a.name} and {b.name} ran on different datasets ({dataset_a.get('file')} and "
            f"{dataset_b.get('file')} differ in content), so their samples can't be paired; "
            "compare runs of the same annotation file"
        )


# --- Writing the report -----------------------------------------------------------------------


def write_report(
    runs: Sequence[Run], out_dir: Path, *, worst: int = 12, pair: bool | None = None
) -> tuple[Path, Path]:
    """report.html and report.md of ``runs`` in ``out_dir``.

    ``pair``: compare two runs sample by sample (refused for different datasets); ``None``:
    when there are exactly two runs of the same dataset.
    """
    if pair and len(runs) != 2:
        raise ReportError(f"a sample-by-sample comparison takes exactly two runs, not {len(runs)}")
    if pair is None:
        pair = len(runs) == 2 and _same_dataset(runs[0], runs[1])
    page = Page(_title(runs))
    if len(runs) == 1:
        _one_run(page, runs[0], worst)
    else:
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
    return html_path, md_path


def _same_dataset(a: Run, b: Run) -> bool:
    try:
        _require_same_dataset(a, b)
    except ReportError:
        return False
    return True


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
    from runners.metrics import RunTally

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
    for name, rows in run.tables.items():
        page.section(name, level=3)
        shown = _worst_groups(rows, run)
        if len(shown) < len(rows):
            page.note(f"the {len(shown)} lowest-scoring of {len(rows)} rows; all are in {name}")
        page.table(shown, bars=_shares(run))


def worst_samples(run: Run, count: int) -> list[dict[str, str]]:
    """The ``count`` worst rows (at most those :func:`read_run` kept): failed ones first, then
    by the score its task ranks by."""
    return run.worst[:count]


def _worst_groups(rows: list[dict[str, str]], run: Run) -> list[dict[str, str]]:
    if len(rows) <= MAX_GROUP_ROWS:
        return rows
    ranked = [run.guide.rank_by, *run.guide.higher_is_better]
    score = next((name for name in ranked if name and name in rows[0]), None)
    if score is None:
        return rows[:MAX_GROUP_ROWS]
    sign = 1 if run.higher_is_better(score) else -1
    return sorted(rows, key=lambda row: sign * (_number(row[score]) or 0))[:MAX_GROUP_ROWS]


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
                "McNemar exact p (two-sided)": _show(pair.mcnemar_p),
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
                "A from there": _shortened(row_a["prediction"][index:]),
                "B from there": _shortened(row_b["prediction"][index:]),
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


# --- Figures ----------------------------------------------------------------------------------


QUALITY_PREFERENCE = ("anls", "exact_match", "cer", "wer")


def plot_summary(summary: Any, path: Path) -> None:
    """summary.png: :func:`summary_figure` saved."""
    import matplotlib.pyplot as plt

    figure = summary_figure(summary)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def summary_figure(summary: Any) -> Any:
    """Quality against model time per sample: one point per job, told apart by its job name
    (marker, colour, legend and label), the quality axis from 0."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    quality = next((name for name in QUALITY_PREFERENCE if name in summary), None)
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    finished = summary.dropna(subset=[c for c in ("s_per_sample", quality) if c in summary])
    if quality is not None and "s_per_sample" in finished:
        markers = "osD^v<>ph*"
        for number, job in enumerate(finished.itertuples()):
            point = (job.s_per_sample, getattr(job, quality))
            axes.scatter(*point, label=str(job.job), s=45, marker=markers[number % len(markers)])
            axes.annotate(
                str(job.job), point, fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        top = max(finished[quality].max(), 1.0 if quality in ("anls", "exact_match") else 0.0)
        axes.set_ylim(0, top * 1.05 if math.isfinite(top) and top > 0 else 1)
        axes.set_xlim(left=0)
        axes.legend(fontsize=8, title="job")
    failed = len(summary) - len(finished)
    axes.set_xlabel("model seconds per sample (model time / samples that reached the model)")
    axes.set_ylabel(f"{quality}, mean over samples" if quality else "(no quality metric)")
    note = f"; {failed} job(s) without results not shown" if failed else ""
    axes.set_title(f"quality against model time, one point per job{note}", fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


# --- HTML and Markdown ------------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;
  padding:0 16px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;
  margin-top:32px}
h3{font-size:15px;margin-top:22px}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.bar{background:linear-gradient(90deg,#cfe3ff calc(var(--v)*100%),transparent 0)}
.note{color:#666;font-size:12px}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:360px}
.sample{display:grid;grid-template-columns:230px 1fr;gap:12px;border:1px solid #ddd;
  padding:8px;margin:8px 0}
.sample img{max-width:220px;max-height:220px;border:1px solid #ccc}
.sample .text{white-space:pre-wrap;word-break:break-word}
del{background:#ffd6d6;text-decoration:none}ins{background:#c9f2c9;text-decoration:none}
.err{color:#b00}.cards{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
svg text{font-size:11px;fill:#444}
"""
# Sorting a table by a click on its header: the only script, so the page works without it.
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var up = th.dataset.order !== "up"; th.dataset.order = up ? "up" : "down";
    rows.sort(function (x, y) {
      var a = x.cells[column].dataset.v || x.cells[column].textContent;
      var b = y.cells[column].dataset.v || y.cells[column].textContent;
      var d = (parseFloat(a) - parseFloat(b)) || a.localeCompare(b);
      return up ? d : -d;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


class Page:
    """The report, built once as HTML and once as Markdown, section by section."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._html: list[str] = []
        self._md: list[str] = [f"# {_md(title)}", ""]
        self._thumbnails: dict[Path, str] = {}  # a page's image shown twice is encoded once

    def open_cards(self) -> None:
        """What follows, up to :meth:`close_cards`, sits side by side (in HTML)."""
        self._html.append('<div class="cards">')

    def close_cards(self) -> None:
        self._html.append("</div>")

    def section(self, title: str, *, level: int) -> None:
        self._html.append(f"<h{level}>{_e(title)}</h{level}>")
        self._md += [f"{'#' * level} {_md(title)}", ""]

    def note(self, text: str) -> None:
        self._html.append(f'<p class="note">{_e(text)}</p>')
        self._md += [f"*{_md(text)}*", ""]

    def facts(self, facts: dict[str, Any]) -> None:
        items = "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(_show(v))}</td></tr>" for k, v in facts.items()
        )
        self._html.append(f"<table>{items}</table>")
        self._md += [f"- **{_md(key)}**: {_md(_show(value))}" for key, value in facts.items()]
        self._md.append("")

    def table(self, rows: Sequence[dict[str, Any]], *, bars: Collection[str] = ()) -> None:
        """``rows`` as a sortable table; a cell of a column in ``bars`` holding a share (0 to
        1) gets a bar."""
        if not rows:
            self.note("(no rows)")
            return
        columns = list(rows[0])
        head = "".join(f"<th>{_e(column)}</th>" for column in columns)
        body = "".join(
            "<tr>" + "".join(_cell(column, row.get(column), bars) for column in columns) + "</tr>"
            for row in rows
        )
        self._html.append(
            f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        )
        self._md += [_md_row(columns), _md_row(["---"] * len(columns))]
        self._md += [_md_row([_show(row.get(column)) for column in columns]) for row in rows]
        self._md.append("")

    def histogram(self, values: Sequence[float], caption: str, bins: int = 30) -> None:
        if not values:
            self.note("no sample reached the model")
            return
        low, high = min(values), max(values)
        width = (high - low) / bins or 1.0
        counts = [0] * bins
        for value in values:
            counts[min(int((value - low) / width), bins - 1)] += 1
        tallest, plot_w, plot_h = max(counts), 600, 160
        bars = "".join(
            f'<rect x="{40 + i * plot_w / bins:.1f}" y="{10 + plot_h * (1 - c / tallest):.1f}" '
            f'width="{plot_w / bins - 1:.1f}" height="{plot_h * c / tallest:.1f}" fill="#6b9bd1">'
            f"<title>{c} samples from {low + i * width:.4g} s</title></rect>"
            for i, c in enumerate(counts)
        )
        right, base = 40 + plot_w, plot_h + 26
        axes = (
            f'<text x="40" y="{base}">{low:.4g} s</text>'
            f'<text x="{right}" y="{base}" text-anchor="end">{high:.4g} s</text>'
            f'<text x="2" y="18">{tallest}</text><text x="2" y="{plot_h + 10}">0</text>'
        )
        percentiles = _call_time_figures(values)
        self._html.append(
            f'<svg width="{plot_w + 60}" height="{plot_h + 34}" role="img">{bars}{axes}</svg>'
            f'<p class="note">{_e(caption)}; {_e(percentiles)}</p>'
        )
        self._md += [f"{_md(caption)}: {_md(percentiles)}", ""]

    def figure(self, figure: Any, caption: str) -> None:
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        plt.close(figure)
        data = base64.b64encode(buffer.getvalue()).decode()
        self._html.append(f'<img alt="{_e(caption)}" src="data:image/png;base64,{data}">')
        self._md += [f"*{_md(caption)}: see report.html*", ""]

    def samples(self, rows: Sequence[dict[str, str]], run: Run, scores: list[str]) -> None:
        for row in rows:
            reference = _shortened(_reference_text(row["reference"]))
            prediction, prompt = _shortened(row["prediction"]), _shortened(row["prompt"])
            figures = ", ".join(f"{name} {_show(_number(row.get(name)))}" for name in scores)
            failure = f"; error: {row['error']}" if row.get("error") else ""
            error = f'<div class="err">error: {_e(row["error"])}</div>' if row.get("error") else ""
            self._html.append(
                f'<div class="sample">{self._thumbnail(row, run)}<div class="text">'
                f"<b>sample {_e(row['sample_id'])}</b> {_e(figures)}{error}\n"
                f"<b>prompt</b>: {_e(prompt)}\n"
                f"<b>reference</b>: {_diff(prediction, reference)[1]}\n"
                f"<b>prediction</b>: {_diff(prediction, reference)[0]}</div></div>"
            )
            self._md.append(
                f"- sample {_md(row['sample_id'])} ({_md(figures + failure)}): "
                f"prompt {_md_code(prompt)}, reference {_md_code(reference)}, "
                f"prediction {_md_code(prediction)}"
            )
        self._md.append("")

    def flips(self, pairs: Sequence[tuple[dict[str, str], dict[str, str]]], pair: Pair) -> None:
        for row_a, row_b in pairs:
            reference = _shortened(_reference_text(row_a["reference"]))
            prompt_a, prompt_b = _shortened(row_a["prompt"]), _shortened(row_b["prompt"])
            answer_a, answer_b = _shortened(row_a["prediction"]), _shortened(row_b["prediction"])
            self._html.append(
                f'<div class="sample">{self._thumbnail(row_a, pair.a)}<div class="text">'
                f"<b>sample {_e(row_a['sample_id'])}</b>\n"
                f"<b>reference</b>: {_e(reference)}\n"
                f"<b>A</b> ({_e(prompt_a)}): {_diff(answer_a, reference)[0]}\n"
                f"<b>B</b> ({_e(prompt_b)}): {_diff(answer_b, reference)[0]}"
                "</div></div>"
            )
            self._md.append(
                f"- sample {_md(row_a['sample_id'])}: reference {_md_code(reference)}, "
                f"A {_md_code(answer_a)}, B {_md_code(answer_b)}"
            )
        self._md.append("")

    def preformatted(self, title: str, text: str) -> None:
        self._html.append(f"<details><summary>{_e(title)}</summary><pre>{_e(text)}</pre></details>")
        # The summary line is raw HTML to a Markdown reader, so it is escaped as HTML. The text is
        # fenced by more backticks than it has in a row anywhere, so no line of it ends the fence.
        fence = "`" * max(3, 1 + max(map(len, re.findall("`+", text)), default=0))
        self._md += [
            f"<details><summary>{_e(_one_line(title))}</summary>",
            "",
            fence,
            text.rstrip(),
            fence,
            "",
            "</details>",
            "",
        ]

    def _thumbnail(self, row: dict[str, str], run: Run) -> str:
        """The sample's first image, made small; only ever a file inside the dataset root."""
        images = _image_entries(row)
        if not images:
            return "<div>(no image)</div>"
        root = run.dataset_root
        path = inside_dataset_root(images[0], root)
        if root is None or path is None:
            return "<div>(image outside the dataset root)</div>"
        if path not in self._thumbnails:
            self._thumbnails[path] = _thumbnail_uri(path)
        uri = self._thumbnails[path]
        named = root / images[0]  # as the dataset names it; ``path`` may be a link's target
        if not uri:
            return f"<div>(image not readable: {_e(str(named))})</div>"
        return f'<div><img alt="{_e(named.name)}" src="{uri}"></div>'

    def html(self) -> str:
        stamp = datetime.now().isoformat(timespec="seconds")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(self.title)}</title><style>{STYLE}</style></head><body>"
            f'<h1>{_e(self.title)}</h1><p class="note">made {stamp} by runners.report</p>'
            + "\n".join(self._html)
            + f"<script>{SCRIPT}</script></body></html>\n"
        )

    def markdown(self) -> str:
        return "\n".join(self._md).rstrip() + "\n"


def inside_dataset_root(entry: str, root: Path | None) -> Path | None:
    """The file an image entry of predictions.csv names, symbolic links followed, if it lies
    inside the dataset ``root``; None for anything else, and for every entry when the run
    recorded no root.

    The runner refuses to read an image outside the root (runners/datasets.py) and a report is
    made to be mailed, so a report shows no more than its run could read: an absolute path
    elsewhere, ``..`` or a link leading out gets no thumbnail. Only names and links are looked
    at here; no file is opened."""
    from runners.datasets import inside_root  # the runner's own rule

    if root is None:
        return None
    try:
        return inside_root(root.resolve(), entry)
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL in the name
        return None


def _image_entries(row: dict[str, str]) -> list[str]:
    """The image paths a row of predictions.csv lists (a JSON list), as written."""
    try:
        images = json.loads(row.get("image_paths") or "[]")
    except json.JSONDecodeError:
        return []
    return [str(image) for image in images] if isinstance(images, list) else []


def _thumbnail_uri(path: Path) -> str:
    """A small JPEG of the image as a data URI; "" when it is not a readable regular image file
    (a FIFO would block, a decompression bomb would fill the memory)."""
    from PIL import Image

    if not path.is_file():
        return ""
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_THUMBNAIL_SOURCE_PIXELS:
                return ""
            image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEG: decode at a smaller scale
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=75)
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _shortened(text: str) -> str:
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    return f"{text[:MAX_SHOWN_CHARS]}… ({len(text) - MAX_SHOWN_CHARS:,} more characters)"


def _diff(prediction: str, reference: str) -> tuple[str, str]:
    """Prediction and reference as HTML, what one has and the other lacks marked."""
    matcher = difflib.SequenceMatcher(None, reference, prediction, autojunk=False)
    shown_prediction, shown_reference = [], []
    for operation, r0, r1, p0, p1 in matcher.get_opcodes():
        if operation == "equal":
            shown_prediction.append(_e(prediction[p0:p1]))
            shown_reference.append(_e(reference[r0:r1]))
            continue
        if p1 > p0:
            shown_prediction.append(f"<ins>{_e(prediction[p0:p1])}</ins>")
        if r1 > r0:
            shown_reference.append(f"<del>{_e(reference[r0:r1])}</del>")
    return "".join(shown_prediction), "".join(shown_reference)


def _reference_text(encoded: str) -> str:
    """A reference as written in predictions.csv, in words: several answers joined by " | "."""
    try:
        value = json.loads(encoded)
    except (json.JSONDecodeError, TypeError):
        return encoded or ""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return " | ".join(value)
    return encoded if not isinstance(value, str) else value


def _cell(column: str, value: Any, bars: Collection[str]) -> str:
    number = _number(value)
    if number is None:
        return f"<td>{_e(_show(value))}</td>"
    bar = column in bars and 0 <= number <= 1
    style = f' class="n bar" style="--v:{number:.4f}"' if bar else ' class="n"'
    return f'<td{style} data-v="{number!r}">{_e(_show(number))}</td>'


def _call_time_figures(values: Sequence[float]) -> str:
    # metrics.csv's percentile, so that its call_p50_s and call_p95_s are the figures shown here.
    from runners.metrics import percentile

    return (
        f"{len(values)} samples, median {percentile(values, 0.5):.4g} s, "
        f"p95 {percentile(values, 0.95):.4g} s, max {max(values):.4g} s"
    )


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def _show(value: Any) -> str:
    """A value as a report shows it: numbers read from text to four significant digits."""
    if value is None:
        return ""
    if isinstance(value, str):
        number = _number(value)
        if number is None or "." not in value:
            return value
        value = number
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


# What Markdown would read as markup in a value from data, a model or a config: HTML's three
# characters, backslash, code, emphasis, link, table, strikethrough and heading syntax, and an
# underscore unless a letter or digit is on both sides of it (there it is plain text, and
# column names such as exact_match stay readable).
_MD_SPECIAL = re.compile(r"[&<>\\`*\[\]|~#]|(?<![^\W_])_|_(?![^\W_])")
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _md(text: Any) -> str:
    """``text`` as Markdown that shows it as written and renders nothing from it: one line,
    HTML characters as entities, Markdown syntax backslash-escaped."""
    return _MD_SPECIAL.sub(
        lambda match: _MD_ENTITIES.get(match[0], "\\" + match[0]), _one_line(str(text))
    )


def _md_code(text: str) -> str:
    """``text`` as a Markdown code span, where nothing is rendered: a backtick would end the
    span, so it becomes a quote; an empty span would not be one, so it holds a space."""
    flat = _one_line(text).replace("`", "'")
    return f"`{flat or ' '}`"


def _one_line(text: str) -> str:
    # A line ending in a value would start a new Markdown block (a heading, raw HTML...).
    return re.sub(r"\r\n|\r|\n", " ", text)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_md(cell) for cell in cells) + " |"


def _read_csv(path: Path) -> list[dict[str, str]]:
    from runners.outputs import read_complete_rows

    return list(read_complete_rows(path))


def _read_json_or_empty(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def _write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file renamed over it: a report that can't be
    written leaves the one before it whole."""
    from runners.outputs import replace_atomically

    replace_atomically(path, lambda handle: handle.write(text.encode("utf-8")), _cannot_write)


def _cannot_write(path: Path, error: OSError) -> ReportError:
    # Exit code 1, as runners.outputs.write_error: the machine failed, not what was asked.
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


# --- Command line -----------------------------------------------------------------------------


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
        html_path, _ = write_report(runs, out, worst=arguments.worst, pair=len(runs) == 2)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    if len(runs) == 2:  # compared sample by sample above
        print(agreement(paired_rows(*runs)).summary())
    print(html_path)
    return 0


def _default_out(given: Sequence[Path]) -> Path:
    if len(given) == 1:
        return given[0]
    return Path("outputs", "reports", datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))


if __name__ == "__main__":
    sys.exit(main())
