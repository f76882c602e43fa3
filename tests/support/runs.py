"""Two run directories compared: the same answers and metrics, timing and cost aside."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from tests.support.helpers import read_metrics

TIMING = {"call_s", "batch_size"}  # a row's timing: which call answered it, with how many others
# metrics.csv columns that describe how fast and where, not what was answered
COST = {
    "model_s",
    "s_per_sample",
    "samples_per_s",
    "call_p50_s",
    "call_p95_s",
    "tokens_per_s",
    "import_s",
    "load_s",
    "wall_s",
    "peak_rss_mb",
    "peak_gpu_mb",
    "model_reused",
    "cache_hit",
}
SAME_FILES = [
    "answers.csv",
    "metrics_by_group.csv",
    "metrics_by_doc_class.csv",
    "metrics_by_document.csv",
]


def without_timing(path: Path) -> str:
    """predictions.csv as text, the timing columns taken out (the rest byte for byte)."""
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    keep = [index for index, column in enumerate(rows[0]) if column not in TIMING]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[row[i] for i in keep] for row in rows])
    return out.getvalue()


def assert_same_run(merged: Path, single: Path, *, resumed: bool = False) -> None:
    assert without_timing(merged / "predictions.csv") == without_timing(single / "predictions.csv")
    a, b = read_metrics(merged), read_metrics(single)
    assert a.keys() == b.keys()
    differing = {key for key in a if a[key] != b[key] and not (pd.isna(a[key]) and pd.isna(b[key]))}
    allowed = COST | {"answered_now"} if resumed else COST  # what the last attempts answered
    assert differing <= allowed, differing - allowed
    for name in SAME_FILES:
        assert (merged / name).read_bytes() == (single / name).read_bytes(), name
