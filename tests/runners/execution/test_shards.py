"""Shards: a run split over workers merges into exactly what one process writes; a killed
shard resumes; a merge refuses what is missing or mismatched."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from runners.errors import RunnerError
from runners.run import run_experiment
from runners.rundir.files import LOCK_FILE, exclusive
from tests.support.helpers import error_lines, make_config, read_metrics, run_cli, run_until_killed
from tests.support.runs import assert_same_run


def run_shards(cache: Path, run_dir: Path, count: int, *overrides: str) -> list[dict]:
    rows = []
    for index in range(count):
        cfg = make_config(
            cache, *overrides, f"runner.num_shards={count}", f"runner.shard_index={index}"
        )
        rows.append(run_experiment(cfg, run_dir))
    return rows


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=dummy"],
        ["model=dummy", "dataset.shuffle=true", "runner.limit=29", "runner.batch_size=3"],
        pytest.param(["model=tiny_qwen2_vl", "runner.limit=20"], marks=pytest.mark.slow),
    ],
    ids=["dummy", "shuffled-limited", "tiny-qwen2-vl"],
)
def test_merged_shards_equal_a_single_run(model_cache, tmp_path, overrides) -> None:
    single = tmp_path / "single"
    run_experiment(make_config(model_cache, *overrides), single)
    rows = run_shards(model_cache, tmp_path / "sharded", 3, *overrides)

    assert [row["merged"] for row in rows] == [False, False, True]
    assert rows[0]["waiting_for"][0].startswith("shard 1 of 3 has not finished")
    assert_same_run(tmp_path / "sharded", single)
    shards = pd.read_csv(tmp_path / "sharded" / "shards.csv")
    n = read_metrics(single)["n_samples"]
    assert shards["n_samples"].tolist() == [n // 3, 2 * n // 3 - n // 3, n - 2 * n // 3]
    assert shards["shard_index"].tolist() == [0, 1, 2]


def test_every_shard_answers_its_own_consecutive_slice(model_cache, tmp_path) -> None:
    run_shards(model_cache, tmp_path, 4, "model=dummy", "runner.limit=10")
    slices = [
        pd.read_csv(tmp_path / "shards" / f"{i}-of-4" / "predictions.csv")["sample_index"]
        for i in range(4)
    ]
    assert [sorted(s.tolist()) for s in slices] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]


def test_more_shards_than_samples_leaves_some_empty(model_cache, tmp_path) -> None:
    single = tmp_path / "single"
    run_experiment(make_config(model_cache, "model=dummy", "runner.limit=2"), single)
    run_shards(model_cache, tmp_path / "sharded", 4, "model=dummy", "runner.limit=2")
    assert_same_run(tmp_path / "sharded", single)


def test_a_shard_with_another_configuration_is_refused_before_its_model_loads(
    model_cache, tmp_path
) -> None:
    run_experiment(make_config(model_cache, "model=dummy", "runner.num_shards=2"), tmp_path)
    other = make_config(
        model_cache, "model=tiny_llava", "runner.num_shards=2", "runner.shard_index=1"
    )
    with pytest.raises(
        RunnerError,
        match=r"holds answers from a different configuration "
        r"\(model\.class: ",
    ):
        run_experiment(other, tmp_path)
    assert not (tmp_path / "shards" / "1-of-2" / "predictions.csv").exists()
    # The number of shards and the selection are the run's too.
    for changed in ["runner.num_shards=3", "runner.limit=5"]:
        cfg = make_config(model_cache, "model=dummy", "runner.num_shards=2", changed)
        with pytest.raises(RunnerError, match=r"different configuration \(shards\."):
            run_experiment(cfg, tmp_path)
    # ... and a single run into a sharded run's directory is another configuration.
    with pytest.raises(RunnerError, match=r"configuration \(shards.num_shards: 2 -> \(not set\)"):
        run_experiment(make_config(model_cache, "model=dummy"), tmp_path)


def test_a_second_process_answering_the_same_shard_is_refused(model_cache, tmp_path) -> None:
    cfg = make_config(model_cache, "model=dummy", "runner.num_shards=2")
    folder = tmp_path / "shards" / "0-of-2"
    folder.mkdir(parents=True)
    held = exclusive(folder / LOCK_FILE, "held by the test")  # another open file: another holder
    refused = pytest.raises(RunnerError, match=r"is in use by another process \(pid \d+ on ")
    with held, refused:
        run_experiment(cfg, tmp_path)
    run_experiment(cfg, tmp_path)  # once it is free


def test_shard_settings_are_checked(model_cache, tmp_path) -> None:
    for overrides, message in [
        (["runner.num_shards=0"], r"runner.num_shards must be >= 1, got 0"),
        (
            ["runner.num_shards=4", "runner.shard_index=4"],
            r"runner.shard_index must be from 0 to runner.num_shards - 1 \(3\), got 4",
        ),
    ]:
        with pytest.raises(RunnerError, match=message):
            run_experiment(make_config(model_cache, "model=dummy", *overrides), tmp_path)


# --- python -m runners.merge -------------------------------------------------------------------


def merge_cli(run_dir: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(str(run_dir), module="runners.merge", cwd=run_dir.parent, cache_dir=cache)


def cli_shards(cache: Path, cwd: Path, indices: range, count: int, *args: str) -> None:
    for index in indices:
        shard = [f"runner.num_shards={count}", f"runner.shard_index={index}"]
        result = run_cli("model=dummy", "run_name=big", *shard, *args, cwd=cwd, cache_dir=cache)
        assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.slow
def test_merge_by_hand_refuses_a_missing_shard_then_merges(model_cache, tmp_path) -> None:
    run_dir = tmp_path / "outputs" / "big"
    cli_shards(model_cache, tmp_path, range(0, 3, 2), 3)  # shards 0 and 2 of 3
    refused = merge_cli(run_dir, model_cache)
    assert refused.returncode == 2
    assert error_lines(refused.stdout) == [
        f"error: cannot merge {run_dir}: shard 1 of 3 has not finished (run runner.shard_index=1)"
    ]
    assert not (run_dir / "predictions.csv").exists()

    cli_shards(model_cache, tmp_path, range(1, 2), 3)  # the last one merges by itself
    merged_by_shard = (run_dir / "predictions.csv").read_bytes()
    for name in ["predictions.csv", "metrics.csv", "answers.csv"]:
        (run_dir / name).unlink()
    merged = merge_cli(run_dir, model_cache)
    assert merged.returncode == 0, merged.stdout[-3000:]
    assert "merged 3 shards" in merged.stdout
    assert (run_dir / "predictions.csv").read_bytes() == merged_by_shard
    single = run_cli("model=dummy", "run_name=single", cwd=tmp_path, cache_dir=model_cache)
    assert single.returncode == 0, single.stdout[-3000:]
    assert_same_run(run_dir, tmp_path / "outputs" / "single")


@pytest.mark.slow
def test_merge_refuses_a_shard_copied_from_another_run(model_cache, tmp_path) -> None:
    cli_shards(model_cache, tmp_path, range(2), 2, "runner.report=false")
    other = run_cli(
        "model=dummy",
        "run_name=other",
        "runner.num_shards=2",
        "runner.shard_index=1",
        'dataset.prompt_template="Q: {prompt}"',
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert other.returncode == 0, other.stdout[-3000:]
    run_dir = tmp_path / "outputs" / "big"
    shutil.rmtree(run_dir / "shards" / "1-of-2")
    shutil.copytree(
        tmp_path / "outputs" / "other" / "shards" / "1-of-2", run_dir / "shards" / "1-of-2"
    )
    refused = merge_cli(run_dir, model_cache)
    assert refused.returncode == 2
    (line,) = error_lines(refused.stdout)
    assert line.startswith(
        f"error: shard 1 of 2 in {run_dir}/shards/1-of-2 ran with a "
        "different configuration (dataset.prompt_template: 'Q: {prompt}' -> "
        "'{prompt}')"
    )  # the shard's, then the run's


@pytest.mark.slow
def test_merge_refuses_a_directory_without_shards(model_cache, tmp_path) -> None:
    refused = merge_cli(tmp_path, model_cache)
    assert refused.returncode == 2
    assert error_lines(refused.stdout) == [
        f"error: {tmp_path} holds no shards (shards/<i>-of-<n>/); give the output directory "
        "the shards of one run answered into"
    ]


# --- a killed shard, sweeps ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_shard_resumes_and_the_merge_equals_a_single_run(model_cache, tmp_path) -> None:
    args = [
        "model=custom",
        "model.class_path=tests.support.wrappers:SlowDummy",
        "model.init_params.model_name=slow",
        "+model.init_params.delay_s=0.1",
        "runner.batch_size=2",
        "runner.num_shards=2",
        "run_name=big",
    ]
    answers = tmp_path / "outputs" / "big" / "shards" / "1-of-2" / "predictions.csv"
    run_until_killed(
        *args, "runner.shard_index=1", cwd=tmp_path, cache_dir=model_cache, answers=answers, lines=6
    )
    kept = answers.read_text().count("\n") - 1
    assert 0 < kept < 24

    for index in (1, 0):  # the killed one resumes; the other one ends last and merges
        result = run_cli(*args, f"runner.shard_index={index}", cwd=tmp_path, cache_dir=model_cache)
        assert result.returncode == 0, result.stdout[-3000:]
    shards = pd.read_csv(tmp_path / "outputs" / "big" / "shards.csv")
    assert shards["answered_now"].tolist()[1] <= 24 - kept + 2  # a torn batch at most again
    single = run_cli(*args[:5], "run_name=single", cwd=tmp_path, cache_dir=model_cache)
    assert single.returncode == 0, single.stdout[-3000:]
    assert_same_run(tmp_path / "outputs" / "big", tmp_path / "outputs" / "single", resumed=True)


@pytest.mark.slow
def test_a_sweep_of_shards_through_joblib_is_one_run_per_model(model_cache, tmp_path) -> None:
    result = run_cli(
        "--multirun",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=dummy,tiny_llava",
        "runner.shard_index=range(0,3)",
        "runner.num_shards=3",
        "runner.limit=12",
        "run_name=s",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    sweep = tmp_path / "outputs" / "multirun" / "s"
    summary = pd.read_csv(sweep / "summary.csv")
    runs = [
        "dummy_sample_docs_3shards_runner.limit=12",
        "tiny_llava_sample_docs_3shards_runner.limit=12",
    ]
    assert sorted(summary["job"]) == runs
    assert (summary["status"] == "ok").all() and (summary["n_samples"] == 12).all()
    for run in runs:
        jobs = sorted((sweep / run / "shards").glob("*/job.json"))
        assert [job.parent.name for job in jobs] == ["0-of-3", "1-of-3", "2-of-3"]
    single = run_cli(
        "model=dummy", "runner.limit=12", "run_name=single", cwd=tmp_path, cache_dir=model_cache
    )
    assert single.returncode == 0, single.stdout[-3000:]
    assert_same_run(sweep / runs[0], tmp_path / "outputs" / "single")
    assert "dummy_sample_docs_3shards" in (sweep / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_sweep_with_a_shard_missing_reports_the_run_incomplete(model_cache, tmp_path) -> None:
    result = run_cli(
        "--multirun",
        "model=dummy",
        "runner.shard_index=0,2",
        "runner.num_shards=3",
        "runner.limit=6",
        "run_name=s",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 1, result.stdout[-3000:]
    summary = pd.read_csv(
        tmp_path / "outputs" / "multirun" / "s" / "summary.csv", keep_default_na=False
    )
    assert summary["status"].tolist() == ["incomplete"]
    assert summary["error"].tolist() == ["shard 1 of 3 has not finished (run runner.shard_index=1)"]
