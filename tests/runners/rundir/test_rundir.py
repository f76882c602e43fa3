"""The run directory's files: predictions.csv torn by a kill or a full disk, huge fields,
atomic rewrites."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from runners.errors import RunnerError
from runners.rundir.files import (
    exclusive,
    read_complete_rows,
    remove_stale_temporaries,
    temporary_path,
)
from runners.rundir.predictions import PredictionsFile, has_rows

COLUMNS = ["sample_id", "sample_index", "prediction", "error"]


def written(path: Path, rows: list[dict]) -> PredictionsFile:
    predictions = PredictionsFile(path, COLUMNS)
    predictions.open(resume=True)
    predictions.append(rows)
    predictions.close()
    return predictions


def test_a_torn_last_row_is_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    rows = [
        {"sample_id": "a", "sample_index": 0, "prediction": "x", "error": ""},
        {"sample_id": "b", "sample_index": 1, "prediction": "", "error": "boom"},
    ]
    written(path, rows)
    with path.open("a") as handle:
        handle.write('c,2,"an answer cut off\nin the mid')  # a kill during a write

    again = PredictionsFile(path, COLUMNS)
    kept = again.open(resume=True)
    assert [row["sample_id"] for row in kept] == ["a"]  # failed "b" is retried, torn "c" dropped
    again.close()
    assert path.read_bytes() == b"sample_id,sample_index,prediction,error\r\na,0,x,\r\n"


@pytest.mark.parametrize("cut", range(1, 9))
def test_a_row_cut_inside_a_multi_byte_character_is_dropped(tmp_path: Path, cut: int) -> None:
    # A full disk stops a write at any byte: here inside "жёлтый" (two bytes per letter).
    path = tmp_path / "predictions.csv"
    written(path, [{"sample_id": "a", "sample_index": 0, "prediction": "синий", "error": ""}])
    tail = "b,1,жёлтый,\r\n".encode()
    with path.open("ab") as handle:
        handle.write(tail[: 4 + cut])
    assert [row["sample_id"] for row in read_complete_rows(path)] == ["a"]
    again = PredictionsFile(path, COLUMNS)
    assert [row["prediction"] for row in again.open(resume=True)] == ["синий"]
    again.close()


def test_a_field_longer_than_pythons_csv_limit_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    long_answer = "x" * 500_000  # csv's default field limit is 131,072 characters
    written(path, [{"sample_id": "a", "sample_index": 0, "prediction": long_answer, "error": ""}])
    (row,) = read_complete_rows(path)
    assert row["prediction"] == long_answer


def test_damage_before_the_end_is_refused_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    path.write_bytes(b"sample_id,sample_index,prediction,error\r\na,0,\xff\xfe,\r\nb,1,y,\r\n")
    with pytest.raises(RunnerError, match=r"predictions.csv is damaged: byte \d+ is not UTF-8"):
        read_complete_rows(path)


def test_rows_are_rewritten_in_dataset_order_with_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    predictions = PredictionsFile(path, ["sample_id", "sample_index", "prediction"])
    predictions.open(resume=False)
    predictions.append(
        [
            {"sample_id": "c", "sample_index": 2, "prediction": "two\nlines"},
            {"sample_id": "a", "sample_index": 0, "prediction": "zero"},
        ]
    )
    predictions.append([{"sample_id": "b", "sample_index": 1, "prediction": "ü, one"}])
    predictions.rewrite_in_order(
        lambda row: {**row, "length": len(row["prediction"])},
        ["sample_id", "sample_index", "prediction", "length"],
    )
    frame = pd.read_csv(path)
    assert frame["sample_id"].tolist() == ["a", "b", "c"]
    assert frame["prediction"].tolist() == ["zero", "ü, one", "two\nlines"]
    assert frame["length"].tolist() == [4, 6, 9]


def test_resume_drops_the_score_columns_of_an_earlier_attempt(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    path.write_text("sample_id,sample_index,prediction,error,anls\r\na,0,x,,0.5\r\n")
    predictions = PredictionsFile(path, COLUMNS)
    assert predictions.open(resume=True) == [
        {"sample_id": "a", "sample_index": "0", "prediction": "x", "error": "", "anls": "0.5"}
    ]
    predictions.close()
    assert next(csv.reader(io.StringIO(path.read_text()))) == COLUMNS


def test_has_rows_reads_only_the_first_lines(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    assert not has_rows(path)
    path.write_text("sample_id,prediction\r\n")
    assert not has_rows(path)
    path.write_text("sample_id,prediction\r\na,x\r\n")
    assert has_rows(path)


def test_rows_longer_than_the_csv_limit_are_rewritten_in_order(tmp_path: Path) -> None:
    """A fresh run scores a long answer too, not only a resumed one (the limit is raised when
    the runner is imported, not when a file is first read back)."""
    long = "x" * 300_000
    predictions = written(
        tmp_path / "predictions.csv",
        [
            {"sample_id": "b", "sample_index": 1, "prediction": long, "error": ""},
            {"sample_id": "a", "sample_index": 0, "prediction": "short", "error": ""},
        ],
    )
    predictions.rewrite_in_order(dict, COLUMNS)
    rows = read_complete_rows(tmp_path / "predictions.csv")
    assert [(row["sample_id"], len(row["prediction"])) for row in rows] == [
        ("a", 5),
        ("b", 300_000),
    ]


def test_a_lock_is_held_for_the_block_and_its_file_removed_after(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with exclusive(lock, "the answers in x"):
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(RunnerError) as refused, exclusive(lock, "the answers in x"):
            pass
        assert str(refused.value).startswith("the answers in x is in use by another process (pid ")
    assert not lock.exists()
    with exclusive(lock, "the answers in x"):  # and it can be taken again
        assert lock.exists()
    assert not lock.exists()


@pytest.mark.slow
def test_a_waiting_process_takes_the_lock_its_holder_removed(tmp_path: Path) -> None:
    """The holder removes the file as it lets go; the process that waited on the old file must
    lock a file that is still in the folder, or a third process could hold the lock with it."""
    lock = tmp_path / ".lock"
    script = (
        "import sys, pathlib\n"
        "from runners.rundir.files import exclusive\n"
        "lock = pathlib.Path(sys.argv[1])\n"
        "with exclusive(lock, 'the merge', wait=True):\n"
        "    print(lock.exists(), lock.stat().st_ino, flush=True)\n"
        "    input()\n"  # held until the test says so
    )
    with exclusive(lock, "the merge"):
        waiter = subprocess.Popen(
            [sys.executable, "-c", script, str(lock)],
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        # the waiter blocks on the file this block holds; wait until it has opened it
        for _ in range(500):
            if str(lock) in _open_files(waiter.pid):
                break
            time.sleep(0.01)
    exists, inode = waiter.stdout.readline().split()
    assert exists == "True" and int(inode) == lock.stat().st_ino
    with (
        pytest.raises(RunnerError, match="the merge is in use by another process"),
        exclusive(lock, "the merge"),
    ):
        pass
    waiter.communicate("\n", timeout=30)
    assert waiter.returncode == 0 and not lock.exists()


def _open_files(pid: int) -> list[str]:
    """The paths process ``pid`` has open; its descriptors come and go while they are read."""
    paths = []
    with contextlib.suppress(OSError):  # the process ended
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                paths.append(os.readlink(descriptor))
    return paths


@pytest.mark.slow
def test_temporaries_of_dead_processes_of_this_host_are_removed(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = temporary_path(tmp_path / "predictions.csv", pid=int(finished.stdout))
    dead.write_text("half a merge")
    alive = temporary_path(tmp_path / "fingerprint.json")  # this process's own
    alive.write_text("being written")
    other_host = tmp_path / "fingerprint.json.some-other-host.1.tmp"
    other_host.write_text("a shard on another machine sharing the disk")
    remove_stale_temporaries(tmp_path)
    assert not dead.exists() and alive.exists() and other_host.exists()
