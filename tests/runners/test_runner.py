"""The runner end to end: configs composed with Hydra's compose API, real files, real models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from runners.run import PROJECT_ROOT, RunnerError, run_experiment
from tests.support.helpers import (
    make_config,
    read_predictions,
    run_cli,
    run_until_killed,
    write_dataset,
)

PREDICTION_COLUMNS = {
    "sample_id",
    "sample_index",
    "dataset",
    "model",
    "framework",
    "image_paths",
    "prompt",
    "prediction",
    "reference",
    "call_s",
    "batch_size",
    "prompt_tokens",
    "completion_tokens",
    "reasoning",
    "reasoning_tokens",
    "truncated",
    "image_size",
    "error",
    "exact_match",
    "anls",
    "cer",
    "wer",
}
METRICS_COLUMNS = {
    "model",
    "framework",
    "dataset",
    "task",
    "n_samples",
    "n_errors",
    "n_input_errors",
    "n_model_errors",
    "error_rate",
    "model_s",
    "s_per_sample",
    "samples_per_s",
    "call_p50_s",
    "call_p95_s",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "n_truncated",
    "tokens_per_s",
    "cost",
    "cost_per_sample",
    "answered_now",
    "batch_size",
    "import_s",
    "load_s",
    "model_reused",
    "cache_hit",
    "wall_s",
    "peak_rss_mb",
    "peak_gpu_mb",
    "exact_match",
    "anls",
    "cer",
    "wer",
    "cer_corpus",
    "wer_corpus",
    "status",
}


@pytest.fixture
def cache_dir(model_cache: Path) -> Path:
    return model_cache


# --- the default job -----------------------------------------------------------------------


@pytest.mark.slow
def test_default_config_runs_tiny_qwen2_vl_on_the_sample_dataset(
    cache_dir, tmp_path, caplog
) -> None:
    cfg = make_config(cache_dir)
    assert cfg.model.init_params.model_name == "tiny-qwen2-vl"
    assert cfg.dataset.name == "sample_docs"

    row = run_experiment(cfg, tmp_path)

    predictions = read_predictions(tmp_path)
    assert set(predictions.columns) >= PREDICTION_COLUMNS
    assert len(predictions) == 48 and predictions["sample_id"].is_unique
    assert predictions["sample_index"].tolist() == list(range(48))  # dataset order restored
    assert (predictions["error"] == "").all()
    assert (predictions["completion_tokens"] > 0).all() and (predictions["call_s"] > 0).all()
    assert set(predictions["framework"]) == {"Hugging Face"}

    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert set(metrics.columns) == METRICS_COLUMNS and len(metrics) == 1
    assert metrics.loc[0, "n_samples"] == 48 and metrics.loc[0, "n_errors"] == 0
    assert row["samples_per_s"] > 0 and row["status"] == "ok"

    grouped = pd.read_csv(tmp_path / "metrics_by_group.csv")
    assert {"doc_class", "question_type", "n", "anls"} <= set(grouped.columns)
    assert grouped["n"].sum() == 48

    environment = json.loads((tmp_path / "environment.json").read_text())
    assert {"python", "packages", "device", "gpu_name", "git_commit", "seed"} <= set(environment)
    assert environment["packages"]["transformers"]
    # Its scores of about 0 are the random weights', and the run says so last.
    assert caplog.messages[-1].startswith(
        "tiny-qwen2-vl has random weights: its answers are gibberish and its scores mean nothing"
    )


@pytest.mark.slow
def test_each_sample_records_the_image_size_the_model_received(cache_dir, tmp_path) -> None:
    def run(max_pixels: int, out: Path) -> pd.DataFrame:
        cfg = make_config(
            cache_dir,
            "runner.limit=2",
            "+model.init_params.processor_kwargs.min_pixels=784",
            f"+model.init_params.processor_kwargs.max_pixels={max_pixels}",
        )
        run_experiment(cfg, out)
        return read_predictions(out)

    small, large = run(28 * 28 * 4, tmp_path / "small"), run(28 * 28 * 64, tmp_path / "large")
    for sizes, budget in ((small, 28 * 28 * 4), (large, 28 * 28 * 64)):
        for size in sizes["image_size"]:
            width, height = map(int, size.split("x"))
            assert width % 28 == height % 28 == 0 and width * height <= budget
    assert small["image_size"].tolist() != large["image_size"].tolist()
    # The resolution is part of what decides the answers: a run of another is not resumed.
    with pytest.raises(RunnerError, match="max_pixels: 3136 -> 50176"):
        run_experiment(
            make_config(
                cache_dir,
                "runner.limit=2",
                "+model.init_params.processor_kwargs.min_pixels=784",
                "+model.init_params.processor_kwargs.max_pixels=50176",
            ),
            tmp_path / "small",
        )


@pytest.mark.slow
def test_batched_run_equals_one_by_one_run(cache_dir, tmp_path) -> None:
    batched = make_config(cache_dir, "runner.batch_size=8", "runner.limit=16")
    single = make_config(cache_dir, "runner.batch_size=1", "runner.limit=16")
    run_experiment(batched, tmp_path / "batched")
    run_experiment(single, tmp_path / "single")
    a, b = read_predictions(tmp_path / "batched"), read_predictions(tmp_path / "single")
    assert a["sample_id"].tolist() == b["sample_id"].tolist()
    assert a["prediction"].tolist() == b["prediction"].tolist()
    assert (a["batch_size"] == 8).all() and (b["batch_size"] == 1).all()


@pytest.mark.slow
def test_cli_with_no_arguments_writes_outputs_under_outputs(cache_dir, tmp_path) -> None:
    result = run_cli(cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 0, result.stdout[-2000:]
    assert [path.name for path in tmp_path.iterdir()] == ["outputs"]  # nothing else in cwd
    (run_dir,) = (tmp_path / "outputs").iterdir()
    for name in ("predictions.csv", "metrics.csv", "metrics_by_group.csv", "environment.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "samples_per_s" in result.stdout  # the final metrics table is logged


# --- resume ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_each_sample_exactly_once(cache_dir, tmp_path) -> None:
    args = [
        "model=custom",
        "model.class_path=tests.support.wrappers:SlowDummy",
        "model.init_params.model_name=slow",
        "+model.init_params.delay_s=0.1",
        "runner.batch_size=2",
    ]
    killed_dir = tmp_path / "outputs" / "killed"
    run_until_killed(
        *args,
        "run_name=killed",
        cwd=tmp_path,
        cache_dir=cache_dir,
        answers=killed_dir / "predictions.csv",
        lines=10,
        timeout=60,
    )
    partial = read_predictions(killed_dir)
    assert 0 < len(partial) < 48

    resumed = run_cli(*args, "run_name=killed", cwd=tmp_path, cache_dir=cache_dir)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert "resuming" in resumed.stdout
    uninterrupted = run_cli(*args, "run_name=whole", cwd=tmp_path, cache_dir=cache_dir)
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-2000:]

    after, whole = read_predictions(killed_dir), read_predictions(tmp_path / "outputs" / "whole")
    assert after["sample_id"].is_unique and len(after) == 48
    columns = ["sample_id", "prediction", "reference", "exact_match", "cer"]
    pd.testing.assert_frame_equal(after[columns], whole[columns])


def test_rerun_without_resume_refuses_to_write_twice(cache_dir, tmp_path) -> None:
    run_experiment(make_config(cache_dir, "model=dummy", "runner.limit=2"), tmp_path)
    with pytest.raises(RunnerError, match=r"exists; pass runner.resume=true"):
        run_experiment(make_config(cache_dir, "model=dummy", "runner.resume=false"), tmp_path)


# --- bad input -------------------------------------------------------------------------------


@pytest.fixture
def broken_dataset(tmp_path) -> Path:
    root = tmp_path / "broken"
    images = root / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(images / "good.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (images / "empty.png").write_bytes(b"")
    good = (images / "good.png").read_bytes()
    noise = Image.effect_noise((64, 64), 80).convert("RGB")
    noise.save(images / "noise.png")
    (images / "truncated.png").write_bytes((images / "noise.png").read_bytes()[:300])
    Image.new("1", (4000, 4000)).save(images / "huge.png")
    (tmp_path / "outside.png").write_bytes(good)
    rows = [
        {"image_path": "images/good.png"},
        {"image_path": "images/missing.png"},
        {"image_path": "images/corrupt.png"},
        {"image_path": "images/truncated.png"},
        {"image_path": "images/empty.png"},
        {"image_path": "images/huge.png"},
        {"image_path": "../outside.png"},
        {"image_path": "images/noise.png"},
    ]
    return write_dataset(root, rows)


def test_each_broken_image_fails_only_its_own_sample(cache_dir, tmp_path, broken_dataset) -> None:
    cfg = make_config(
        cache_dir,
        "model=dummy",
        "dataset=vlmhyperbench",
        f"dataset.root={broken_dataset}",
        "runner.max_image_pixels=1000000",
        "runner.batch_size=4",
        "runner.max_error_rate=1.0",
    )
    row = run_experiment(cfg, tmp_path / "out")
    predictions = read_predictions(tmp_path / "out").set_index("sample_id")
    errors = predictions["error"]
    assert errors["0"] == "" and predictions.loc["0", "prediction"].startswith("40x30")
    assert errors["7"] == "" and predictions.loc["7", "prediction"].startswith("64x64")
    assert "missing.png' does not exist" in errors["1"]
    assert "cannot load image" in errors["2"] and "corrupt.png" in errors["2"]
    assert "truncated.png" in errors["3"]
    assert "empty file" in errors["4"]
    assert "over the limit of 1,000,000" in errors["5"]
    assert "leaves the dataset root" in errors["6"]
    assert (row["n_samples"], row["n_errors"], row["status"]) == (8, 6, "ok")
    # failed samples are scored as empty answers, not skipped
    assert predictions.loc["1", "exact_match"] == 0.0 and predictions.loc["1", "cer"] == 1.0


@pytest.mark.slow
def test_too_many_errors_exits_non_zero(cache_dir, tmp_path, broken_dataset) -> None:
    result = run_cli(
        "model=dummy",
        "dataset=vlmhyperbench",
        f"dataset.root={broken_dataset}",
        "runner.max_error_rate=0.5",
        cwd=tmp_path,
        cache_dir=cache_dir,
    )
    assert result.returncode == 1
    assert "over runner.max_error_rate=0.5" in result.stdout
    (run_dir,) = (tmp_path / "outputs").iterdir()
    assert pd.read_csv(run_dir / "metrics.csv").loc[0, "status"] == "too_many_errors"


def test_a_failing_batch_is_retried_one_sample_at_a_time(cache_dir, tmp_path) -> None:
    root = write_dataset(
        tmp_path / "data",
        [
            {"image_path": "a.png", "question": "fine"},
            {"image_path": "a.png", "question": "boom"},
            {"image_path": "a.png", "question": "also fine"},
        ],
    )
    Image.new("RGB", (8, 8)).save(root / "a.png")
    cfg = make_config(
        cache_dir,
        "model=custom",
        "model.class_path=tests.support.wrappers:FailsOnKeyword",
        "model.init_params.model_name=flaky",
        "dataset=vlmhyperbench",
        f"dataset.root={root}",
        "runner.max_error_rate=1.0",
        "runner.sort_window_batches=1",
    )
    run_experiment(cfg, tmp_path / "out")
    predictions = read_predictions(tmp_path / "out").set_index("sample_id")
    assert predictions.loc["1", "error"] == "RuntimeError: cannot handle 'boom'"
    assert predictions.loc["0", "error"] == "" and predictions.loc["2", "error"] == ""
    assert predictions.loc["0", "prediction"].endswith("fine")
    assert predictions["batch_size"].tolist() == [1, 1, 1]


# --- configuration mistakes ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "model=custom",
                "model.class_path=no_such_pkg.models:Model",
                "model.init_params.model_name=x",
            ],
            "module 'no_such_pkg.models' cannot be imported",
        ),
        (
            ["model=custom", "model.init_params.model_name=x"],
            "model=custom needs the wrapper to run",
        ),
        (["dataset=vlmhyperbench"], "dataset.root is not set; pass dataset.root="),
        (["dataset.root=/no/such/dir"], "is not a directory; fix dataset.root"),
        (["model=dummy", "runner.metrics=[anl]"], "Did you mean 'anls'?"),
        (["model=no_such_model"], "Could not find 'model/no_such_model'"),
    ],
)
def test_config_mistakes_end_with_one_clear_line(cache_dir, tmp_path, args, message) -> None:
    result = run_cli(*args, cwd=tmp_path, cache_dir=cache_dir, timeout=120)
    assert result.returncode != 0
    assert message in result.stdout
    assert "Traceback" not in result.stdout


@pytest.mark.slow
def test_missing_model_weights_say_how_to_fetch_them(cache_dir, tmp_path) -> None:
    result = run_cli(
        "model=qwen2_vl_2b", "runner.limit=1", cwd=tmp_path, cache_dir=tmp_path / "empty_cache"
    )
    assert result.returncode == 2
    assert "python -m model_interface.cache download Qwen/Qwen2-VL-2B-Instruct" in result.stdout
    assert "Traceback" not in result.stdout


# --- third-party wrappers --------------------------------------------------------------------

UPSTREAM_WRAPPER = """
from model_interface.model_interface import ModelInterface


class AcmeModel(ModelInterface):
    def __init__(self, model_name, system_prompt, cache_dir):
        super().__init__(model_name, system_prompt, cache_dir)
        self.framework = "Acme"

    def predict_on_image(self, image, question):
        return f"{self.model_name}: {image.size[0]}x{image.size[1]} {question}"

    def predict_on_images(self, images, question):
        return f"{self.model_name}: {len(images)} images {question}"
"""


@pytest.mark.slow
def test_an_upstream_style_wrapper_runs_from_the_command_line(cache_dir, tmp_path) -> None:
    package = tmp_path / "site" / "acme_vlm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(UPSTREAM_WRAPPER)
    result = run_cli(
        "model=custom",
        "model.class_path=acme_vlm.models:AcmeModel",
        "model.init_params.model_name=acme-7b",
        "runner.limit=5",
        "run_name=acme",
        cwd=tmp_path,
        cache_dir=cache_dir,
        env={"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{PROJECT_ROOT}"},
    )
    assert result.returncode == 0, result.stdout[-2000:]
    predictions = read_predictions(tmp_path / "outputs" / "acme")
    assert len(predictions) == 5 and set(predictions["framework"]) == {"Acme"}
    assert predictions.loc[0, "prediction"] == "acme-7b: 420x594 What is the subtotal?"


# --- sweeps and reproducibility --------------------------------------------------------------


@pytest.mark.slow
def test_multirun_of_two_models_and_two_datasets(cache_dir, tmp_path) -> None:
    result = run_cli(
        "--multirun",
        "model=tiny_qwen2_vl,tiny_llava",
        "dataset=sample_docs,sample_docs_invoices",
        "runner.limit=6",
        "run_name=sweep",
        cwd=tmp_path,
        cache_dir=cache_dir,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    sweep = tmp_path / "outputs" / "multirun" / "sweep"
    jobs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert jobs == [
        "0_tiny_qwen2_vl_sample_docs",
        "1_tiny_qwen2_vl_sample_docs_invoices",
        "2_tiny_llava_sample_docs",
        "3_tiny_llava_sample_docs_invoices",
    ]
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 4 and set(summary.columns) >= METRICS_COLUMNS
    assert (sweep / "summary.png").stat().st_size > 1000
    # consecutive jobs with the same model config reuse the loaded model
    assert summary["model_reused"].tolist() == [False, True, False, True]
    # a job that reuses the model imported and loaded nothing
    assert summary.loc[[1, 3], ["import_s", "load_s"]].eq(0).all().all()
    assert summary.loc[[0, 2], "load_s"].gt(0).all()
    assert summary["num"].tolist() == [0, 1, 2, 3] and (summary["status"] == "ok").all()


@pytest.mark.slow
def test_a_run_is_reproducible_from_its_saved_config(cache_dir, tmp_path) -> None:
    first = run_cli(
        "model=dummy", "runner.limit=4", "run_name=first", cwd=tmp_path, cache_dir=cache_dir
    )
    assert first.returncode == 0, first.stdout[-2000:]
    saved = tmp_path / "outputs" / "first" / ".hydra"
    again = run_cli(
        "--config-path",
        str(saved),
        "--config-name",
        "config",
        "hydra.run.dir=outputs/again",
        cwd=tmp_path,
        cache_dir=cache_dir,
    )
    assert again.returncode == 0, again.stdout[-2000:]
    columns = ["sample_id", "prompt", "prediction"]
    pd.testing.assert_frame_equal(
        read_predictions(tmp_path / "outputs" / "first")[columns],
        read_predictions(tmp_path / "outputs" / "again")[columns],
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["hydra/launcher=submitit_local"]],
)
def test_sweeps_run_through_the_process_launchers(cache_dir, tmp_path, launcher) -> None:
    result = run_cli(
        "--multirun",
        *launcher,
        "model=dummy",
        "dataset=sample_docs,sample_docs_invoices",
        "runner.limit=3",
        "run_name=launched",
        cwd=tmp_path,
        cache_dir=cache_dir,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    summary = pd.read_csv(tmp_path / "outputs" / "multirun" / "launched" / "summary.csv")
    assert sorted(summary["dataset"]) == ["sample_docs", "sample_docs_invoices"]
    assert (summary["n_samples"] == 3).all()


# --- what the numbers mean -------------------------------------------------------------------


def test_any_of_references_score_the_best_match_and_stay_json(model_cache, tmp_path) -> None:
    from tests.support.helpers import write_jsonl

    root = write_jsonl(
        tmp_path / "data",
        [
            {"id": "a", "image": "a.png", "prompt": "ten", "answer": ["10", "ten"]},
            {"id": "b", "image": "b.png", "prompt": "11", "answer": ["10", "ten"]},
            {"id": "c", "image": "c.png", "prompt": "1999", "answer": 1999},
        ],
    )
    cfg = make_config(
        model_cache,
        "model=custom",
        "model.class_path=tests.support.wrappers:PromptEcho",
        "model.init_params.model_name=echo",
        "dataset=jsonl",
        f"dataset.root={root}",
        "runner.metrics=[exact_match,cer]",
    )
    row = run_experiment(cfg, tmp_path / "out")
    predictions = read_predictions(tmp_path / "out").set_index("sample_id")
    assert predictions.loc["a", "reference"] == '["10", "ten"]'
    assert predictions["exact_match"].tolist() == [1.0, 0.0, 1.0]
    assert predictions.loc["b", "cer"] == 0.5  # "11" against "10": the better of the two
    assert row["exact_match"] == pytest.approx(2 / 3)


def test_timing_columns_say_what_they_measure(model_cache, tmp_path, broken_dataset) -> None:
    cfg = make_config(
        model_cache,
        "model=custom",
        "model.class_path=tests.support.wrappers:SlowDummy",
        "model.init_params.model_name=slow",
        "+model.init_params.delay_s=0.02",
        "dataset=vlmhyperbench",
        f"dataset.root={broken_dataset}",
        "runner.batch_size=8",
        "runner.max_error_rate=1.0",
        "runner.max_image_pixels=1000000",
    )
    row = run_experiment(cfg, tmp_path / "out")
    predictions = read_predictions(tmp_path / "out")
    reached = predictions[predictions["batch_size"] > 0]
    failed_early = predictions[predictions["batch_size"] == 0]
    # Six samples failed on their image: they never reached the model and have no call time.
    assert len(failed_early) == row["n_input_errors"] == 6
    assert (failed_early["call_s"] == "").all() and (failed_early["error"] != "").all()
    # The two good samples went to the model together: one call, its wall time on both rows.
    assert reached["batch_size"].tolist() == [2, 2]
    call_s = float(reached["call_s"].iloc[0])
    assert reached["call_s"].astype(float).tolist() == [call_s, call_s]
    assert call_s >= 0.02
    # Per run: model time counts each call once; throughput counts only samples it answered.
    assert row["model_s"] == pytest.approx(call_s)
    assert row["s_per_sample"] == pytest.approx(call_s / 2)
    assert row["samples_per_s"] == pytest.approx(2 / call_s)
    assert row["call_p50_s"] == pytest.approx(call_s) and row["n_model_errors"] == 0


def test_model_time_per_sample_does_not_grow_with_the_batch(model_cache, tmp_path) -> None:
    # SlowDummy sleeps once per call: per-sample model time must shrink as batches grow, while
    # the call time each row records stays the batch's.
    rows = {}
    for batch_size in (1, 8):
        cfg = make_config(
            model_cache,
            "model=custom",
            "model.class_path=tests.support.wrappers:SlowDummy",
            "model.init_params.model_name=slow",
            "+model.init_params.delay_s=0.05",
            "model=custom",
            "runner.limit=16",
            f"runner.batch_size={batch_size}",
        )
        rows[batch_size] = run_experiment(cfg, tmp_path / str(batch_size))
    assert rows[8]["s_per_sample"] < rows[1]["s_per_sample"] / 3
    assert rows[8]["call_p50_s"] >= 0.05 and rows[1]["call_p50_s"] >= 0.05


@pytest.mark.slow
def test_a_fifo_in_the_dataset_fails_its_sample_without_blocking(model_cache, tmp_path) -> None:
    (tmp_path / "data" / "images").mkdir(parents=True)
    os.mkfifo(tmp_path / "data" / "images" / "pipe.png")
    root = write_dataset(
        tmp_path / "data", [{}, {"image_path": "images/pipe.png"}, {}], images=True
    )
    result = run_cli(
        "model=dummy",
        "dataset=vlmhyperbench",
        f"dataset.root={root}",
        "runner.max_error_rate=1",
        "run_name=fifo",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    errors = read_predictions(tmp_path / "outputs" / "fifo")["error"].tolist()
    assert errors[0] == errors[2] == ""
    assert "pipe.png' is not a regular file" in errors[1]
    # The report shows the failed sample first, without trying to read the pipe.
    report = (tmp_path / "outputs" / "fifo" / "report.html").read_text(encoding="utf-8")
    assert "(image not readable:" in report and "pipe.png" in report


@pytest.mark.slow
def test_a_wrapper_that_skips_super_init_runs_from_the_command_line(model_cache, tmp_path):
    result = run_cli(
        "model=custom",
        "model.class_path=tests.support.upstream_wrappers:Qwen2_5_VLStyleModel",
        "model.init_params.model_name=Qwen2.5-VL-3B-Instruct",
        "+model.init_params.device_map=auto",
        "runner.limit=3",
        "run_name=upstream",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    predictions = read_predictions(tmp_path / "outputs" / "upstream")
    assert predictions["prediction"].tolist()[0] == "420x594 | What is the subtotal?"
    assert set(predictions["framework"]) == {"Hugging_Face"}


FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size=160k tmpfs "$DISK"
python -m runners.run "$@" > "$OUT/first.log" 2>&1; echo $? > "$OUT/first.rc"
find "$DISK" -name '*.tmp' > "$OUT/leftovers"
cp "$DISK/run/predictions.csv" "$OUT/partial.csv"
mount -o remount,size=16m "$DISK"
python -m runners.run "$@" > "$OUT/second.log" 2>&1; echo $? > "$OUT/second.rc"
cp -r "$DISK/run" "$OUT/run"
"""


def _can_mount_a_private_tmpfs() -> bool:
    probe = ["unshare", "--mount", "--map-root-user", "sh", "-c", "mount -t tmpfs none /mnt"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_a_private_tmpfs(), reason="needs unshare and a tmpfs mount")
def test_a_full_disk_ends_the_run_with_one_line_and_resume_finishes_it(model_cache, tmp_path):
    # Long prompts echoed back make rows of ~2 kB: 200 of them overflow a 160 kB disk mid-run.
    root = write_dataset(
        tmp_path / "data", [{"question": f"{i} " + "word " * 400} for i in range(200)], images=True
    )
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    args = [
        "model=custom",
        "model.class_path=tests.support.wrappers:PromptEcho",
        "model.init_params.model_name=echo",
        "dataset=vlmhyperbench",
        f"dataset.root={root}",
        "runner.batch_size=4",
        "runner.progress=false",
    ]
    env = {
        **os.environ,
        "DISK": str(disk),
        "OUT": str(out),
        "PYTHONPATH": str(PROJECT_ROOT),
        "MODEL_INTERFACE_CACHE": str(model_cache),
    }
    subprocess.run(
        [
            "unshare",
            "--mount",
            "--map-root-user",
            "bash",
            "-c",
            FULL_DISK_SCRIPT,
            "script",
            *args,
            f"hydra.run.dir={disk / 'run'}",
        ],
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=True,
    )
    first_log = (out / "first.log").read_text()
    assert (out / "first.rc").read_text().strip() == "1", first_log
    (line,) = [line for line in first_log.splitlines() if "[ERROR]" in line]
    assert f"cannot write {disk / 'run'}" in line and "No space left on device" in line
    assert "run the same command again: the run resumes where it stopped" in line
    assert "Traceback" not in first_log and "Logging error" not in first_log
    assert (out / "leftovers").read_text() == ""  # no temporary file left on the disk
    partial = pd.read_csv(out / "partial.csv")
    assert 0 < len(partial) < 200

    second_log = (out / "second.log").read_text()
    assert (out / "second.rc").read_text().strip() == "0", second_log
    assert "resuming" in second_log
    whole = run_cli(*args, "run_name=whole", cwd=tmp_path, cache_dir=model_cache)
    assert whole.returncode == 0, whole.stdout[-2000:]
    resumed, uninterrupted = (
        read_predictions(out / "run"),
        read_predictions(tmp_path / "outputs" / "whole"),
    )
    columns = ["sample_id", "prompt", "prediction", "reference", "exact_match", "cer"]
    pd.testing.assert_frame_equal(resumed[columns], uninterrupted[columns])


# --- interrupted, unwritable, nothing left to do --------------------------------------------


@pytest.mark.slow
def test_ctrl_c_keeps_the_answers_says_so_in_one_line_and_the_run_resumes(
    cache_dir, tmp_path
) -> None:
    run_dir = tmp_path / "run"
    args = (
        "model=custom",
        "model.class_path=tests.support.wrappers:SlowDummy",
        "+model.init_params.delay_s=0.05",
        "runner.batch_size=1",
        f"hydra.run.dir={run_dir}",
    )
    env = {**os.environ, "MODEL_INTERFACE_CACHE": str(cache_dir), "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "runners.run", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C comes from a terminal; a test run started in the background by a shell
        # inherits SIGINT ignored, which Python would keep.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    answers = run_dir / "predictions.csv"
    for _ in range(3000):  # until a few answers are in, or the run ended (bounded)
        if process.poll() is not None or (answers.exists() and answers.read_text().count("\n") > 3):
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    kept = len(read_predictions(run_dir))
    assert output.rstrip().splitlines()[-1] == (
        f"interrupted: {kept} answers kept in {run_dir}, run the same command to resume"
    )
    assert "Traceback" not in output and not (run_dir / ".lock").exists()
    resumed = run_cli(*args, cwd=tmp_path, cache_dir=cache_dir)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert f"resuming: {kept} samples already answered, {48 - kept} to go" in resumed.stdout
    assert read_predictions(run_dir)["sample_index"].tolist() == list(range(48))


@pytest.mark.slow
@pytest.mark.parametrize("multirun", [False, True])
def test_an_output_directory_that_cannot_be_made_is_one_line(cache_dir, tmp_path, multirun):
    (tmp_path / "a_file").write_text("")
    where = tmp_path / "a_file" / "run"
    args = ["--multirun", f"hydra.sweep.dir={where}"] if multirun else [f"hydra.run.dir={where}"]
    result = run_cli(*args, "model=dummy", cwd=tmp_path, cache_dir=cache_dir, timeout=120)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"error: cannot write {where}: Not a directory; run from a directory you can write, or "
        "choose the output directory with hydra.run.dir=... (hydra.sweep.dir=... for --multirun)"
    )


@pytest.mark.slow
def test_a_log_file_that_cannot_be_written_on_resume_is_one_line(cache_dir, tmp_path) -> None:
    """Hydra opens run.log before the job starts (a directory stands in for a read-only file:
    the tests run as root, whom permissions don't stop)."""
    run_dir = tmp_path / "run"
    (run_dir / "run.log").mkdir(parents=True)
    result = run_cli("model=dummy", f"hydra.run.dir={run_dir}", cwd=tmp_path, cache_dir=cache_dir)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"error: cannot write {run_dir / 'run.log'}: Is a directory; run from a directory you "
        "can write, or choose the output directory with hydra.run.dir=... (hydra.sweep.dir=... "
        "for --multirun)"
    )


FINISHED_FILES = ["predictions.csv", "answers.csv", "metrics.csv", "report.html", "report.md"]


@pytest.mark.slow
def test_a_run_with_nothing_left_to_answer_loads_no_model_and_leaves_no_lock(
    cache_dir, tmp_path
) -> None:
    loads = tmp_path / "loads.txt"
    args = (
        "model=custom",
        "model.class_path=tests.support.wrappers:CountsLoads",
        f"+model.init_params.loads_file={loads}",
        "runner.limit=4",
        "run_name=again",
    )
    run_dir = tmp_path / "outputs" / "again"
    finished = {}
    for _ in range(2):
        result = run_cli(*args, cwd=tmp_path, cache_dir=cache_dir)
        assert result.returncode == 0, result.stdout[-2000:]
        finished = finished or {name: (run_dir / name).read_bytes() for name in FINISHED_FILES}
    assert loads.read_text() == "loaded\n"
    assert (
        f"every selected sample is answered and scored already: nothing to do "
        f"({run_dir / 'metrics.csv'} is kept; delete it to score the answers again)"
    ) in result.stdout
    assert not (run_dir / ".lock").exists()
    # The finished run's files are left as they were: metrics.csv keeps what answering cost.
    assert {name: (run_dir / name).read_bytes() for name in FINISHED_FILES} == finished
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics.loc[0, "n_samples"] == 4 and metrics.loc[0, "answered_now"] == 4
    assert metrics.loc[0, "model"] == "custom" and metrics.loc[0, "status"] == "ok"
    # a larger limit loads it again, for the new samples only
    more = run_cli(
        *args[:-2], "runner.limit=6", "run_name=again", cwd=tmp_path, cache_dir=cache_dir
    )
    assert more.returncode == 0 and loads.read_text() == "loaded\n" * 2
    assert pd.read_csv(run_dir / "metrics.csv").loc[0, "answered_now"] == 2


def test_a_finished_run_is_kept_only_when_it_answered_exactly_this_selection(
    cache_dir, tmp_path
) -> None:
    """Resuming a finished run keeps its files only if its answers are this selection's, all
    without an error; otherwise the run answers what is missing and scores everything again."""
    first = make_config(cache_dir, "model=dummy", "runner.limit=4")
    run_experiment(first, tmp_path)
    metrics = (tmp_path / "metrics.csv").read_bytes()
    assert run_experiment(first, tmp_path)["answered_now"] == 4  # kept: the first run's row
    assert (tmp_path / "metrics.csv").read_bytes() == metrics
    # As many samples, but others: answered, and all six scored again.
    other = make_config(cache_dir, "model=dummy", "runner.limit=4", "dataset.shuffle=true")
    row = run_experiment(other, tmp_path)
    assert row["answered_now"] > 0 and row["n_samples"] > 4
    # A failed answer is asked again.
    frame = read_predictions(tmp_path)
    frame.loc[0, "error"] = "ImageLoadError: gone"
    frame.to_csv(tmp_path / "predictions.csv", index=False)
    assert run_experiment(other, tmp_path)["answered_now"] == 1


@pytest.mark.slow
def test_what_a_killed_process_was_writing_is_removed_by_the_next_run(cache_dir, tmp_path) -> None:
    from runners.rundir.files import temporary_path

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = temporary_path(run_dir / "predictions.csv", pid=int(finished.stdout))
    stale.write_text("half of a merged predictions.csv")
    run_experiment(make_config(cache_dir, "model=dummy", "runner.limit=2"), run_dir)
    assert not stale.exists() and not list(run_dir.glob("*.tmp"))


@pytest.mark.slow
def test_a_wrapper_registered_by_an_entry_point_runs_by_its_name(cache_dir, tmp_path) -> None:
    site = tmp_path / "site"
    (site / "acme_vlm").mkdir(parents=True)
    (site / "acme_vlm" / "__init__.py").write_text("")
    (site / "acme_vlm" / "models.py").write_text(
        "from model_interface.backends.dummy import DummyModel\n\n"
        "class AcmeVLM(DummyModel):\n    framework = 'acme'\n"
    )
    dist_info = site / "acme_vlm-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-vlm\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[model_interface.models]\nmy-vlm = acme_vlm.models:AcmeVLM\n"
    )
    result = run_cli(
        "model=custom",
        "model.name=my-vlm",
        "runner.limit=2",
        "run_name=acme",
        cwd=tmp_path,
        cache_dir=cache_dir,
        env={"PYTHONPATH": f"{site}:{PROJECT_ROOT}"},
    )
    assert result.returncode == 0, result.stdout[-2000:]
    predictions = read_predictions(tmp_path / "outputs" / "acme")
    assert set(predictions["framework"]) == {"acme"} and set(predictions["model"]) == {"my-vlm"}


def test_filters_that_match_nothing_list_the_values_there_are(cache_dir, tmp_path) -> None:
    cfg = make_config(
        cache_dir,
        "model=dummy",
        "dataset.doc_class=passport",
        "dataset.question_type=[amount,nope]",
    )
    with pytest.raises(RunnerError) as refused:
        run_experiment(cfg, tmp_path / "run")
    assert str(refused.value) == (
        "dataset 'sample_docs' has no samples to run: no sample matches "
        "dataset.doc_class=['passport'] (its doc_class values: 'id_card', 'invoice', 'receipt') "
        "and dataset.question_type=['amount', 'nope'] (its question_type values: 'amount', "
        "'date', 'name', 'number', 'text')"
    )


def test_a_limit_that_keeps_one_class_of_several_is_warned_about(cache_dir, tmp_path, caplog):
    args = (
        "model=custom",
        "model.class_path=tests.support.wrappers:PromptEcho",
        "task=classification",
        "dataset=sample_docs_classes",
        "runner.limit=6",
    )
    run_experiment(make_config(cache_dir, *args), tmp_path / "first")
    assert (
        "runner.limit=6 keeps 6 of 24 samples, all of class 'invoice' (the dataset has 5: "
        "'id_card', 'invoice', 'passport', 'receipt', 'snils'): their scores say nothing about "
        "the other classes; set dataset.shuffle=true for a subset holding each class in "
        "proportion"
    ) in caplog.messages
    caplog.clear()
    run_experiment(make_config(cache_dir, *args, "dataset.shuffle=true"), tmp_path / "shuffled")
    assert not [message for message in caplog.messages if "keeps 6 of 24" in message]
    classes = pd.read_csv(tmp_path / "shuffled" / "predictions.csv")["reference"]
    assert classes.nunique() >= 3  # 6 samples in proportion to the 5 classes


def test_a_long_prompt_and_a_document_of_many_fields_are_scored_whole(cache_dir, tmp_path):
    """Both crashed at scoring, after every sample was answered, on the csv module's field
    limit; and a report diffed the whole texts, quadratic in their length."""
    image = tmp_path / "data" / "page.png"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), "white").save(image)
    long_prompt = "word " * 60_000
    (tmp_path / "data" / "data.jsonl").write_text(
        json.dumps({"id": "long", "image": "page.png", "prompt": long_prompt, "answer": "x"}) + "\n"
    )
    data = tmp_path / "data"
    cfg = make_config(cache_dir, "model=dummy", "dataset=jsonl", f"dataset.root={data}")
    row = run_experiment(cfg, tmp_path / "long")
    assert row["status"] == "ok" and (tmp_path / "long" / "report.html").is_file()
    assert read_predictions(tmp_path / "long").loc[0, "prompt"] == long_prompt

    kie = tmp_path / "kie"
    (kie / "jsons").mkdir(parents=True)
    (kie / "images").mkdir()
    Image.new("RGB", (32, 32), "white").save(kie / "images" / "p1.png")
    fields = {f"field_{index}": f"value {index}" for index in range(20_000)}
    (kie / "jsons" / "p1.json").write_text(json.dumps(fields))
    row = run_experiment(
        make_config(
            cache_dir, "model=dummy", "task=kie", "dataset=kie_json", f"dataset.root={kie}"
        ),
        tmp_path / "fields",
    )
    assert row["status"] == "ok" and row["n_samples"] == 1
    assert len(pd.read_csv(tmp_path / "fields" / "fields.csv")) == 20_000
    assert not list((tmp_path / "fields").glob("*.tmp"))
    assert (tmp_path / "fields" / "report.html").is_file()
