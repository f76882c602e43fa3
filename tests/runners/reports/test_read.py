"""A run read back for its report: a per-group file is streamed, only its worst rows kept."""

from __future__ import annotations

import csv
from pathlib import Path

from runners.reports.read import MAX_GROUP_ROWS, read_group_table
from runners.tasks.base import ScoreGuide


def write_groups(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_group_file_keeps_its_lowest_scoring_rows_ties_in_file_order(tmp_path) -> None:
    scores = [0.5 if index % 2 else 1.0 for index in range(50)]  # 25 rows tie at 0.5
    scores[40] = 0.0
    path = write_groups(
        tmp_path / "metrics_by_document.csv",
        [{"document_id": f"d{index}", "anls": score} for index, score in enumerate(scores)],
    )
    table = read_group_table(path, ScoreGuide({"anls": True}, rank_by="anls"))
    assert table.total == 50
    assert len(table.rows) == MAX_GROUP_ROWS == 20
    shown = [row["document_id"] for row in table.rows]
    assert shown == ["d40", *[f"d{index}" for index in range(1, 39, 2)]]


def test_a_lower_is_better_score_shows_its_highest_rows_first(tmp_path) -> None:
    path = write_groups(
        tmp_path / "groups.csv",
        [{"group": f"g{index}", "cer": index / 100} for index in range(30)],
    )
    table = read_group_table(path, ScoreGuide({"cer": False}, rank_by="cer"))
    assert [row["group"] for row in table.rows][:3] == ["g29", "g28", "g27"]
    assert (len(table.rows), table.total) == (20, 30)


def test_a_file_without_a_score_shows_its_first_rows_and_counts_them_all(tmp_path) -> None:
    path = write_groups(tmp_path / "groups.csv", [{"group": f"g{i}", "n": 1} for i in range(25)])
    table = read_group_table(path, ScoreGuide({"anls": True}, rank_by="anls"))
    assert [row["group"] for row in table.rows] == [f"g{i}" for i in range(20)]
    assert table.total == 25
    small = write_groups(tmp_path / "small.csv", [{"group": "a", "anls": 0.1}])
    table = read_group_table(small, ScoreGuide({"anls": True}))
    assert (table.rows, table.total) == ([{"group": "a", "anls": "0.1"}], 1)
