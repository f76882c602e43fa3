"""The runner end to end: configs composed with Hydra's compose API, real files, real models."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from runners.run import CONFIG_DIR, PROJECT_ROOT, RunnerError, run_experiment

PREDICTION_COLUMNS = {
    "sample_id", "dataset", "model", "framework", "image_paths", "prompt", "prediction",
    "reference", "latency_s", "batch_size", "prompt_tokens", "completion_tokens", "error",
    "exact_match", "anls", "cer", "wer",
}  # fmt: skip
METRICS_COLUMNS = {
    "model", "framework", "dataset", "n_samples", "n_errors", "load_s", "cache_hit", "total_s",
    "samples_per_s", "latency_mean_s", "latency_p50_s", "latency_p95_s", "prompt_tokens",
    "completion_tokens", "tokens_per_s", "peak_rss_mb", "peak_gpu_mb",
    "exact_match", "anls", "cer", "wer",
}  # fmt: skip


@pytest.fixture
def cache_dir(model_cache: Path) -> Path:
    return model_cache


def make_config(cache_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[f"paths.cache_dir={cache_dir}", "runner.progress=false", *overrides],
        )


def run_cli(*args: str, cwd: Path, cache_dir: Path, timeout: float = 300, **kwargs):
    env = {
        **os.environ,
        "MODEL_INTERFACE_CACHE": str(cache_dir),
        "PYTHONPATH": str(PROJECT_ROOT),
        "HF_HUB_OFFLINE": "1",
    }
    env.update(kwargs.pop("env", {}))
    return subprocess.run(
        [sys.executable, "-m", "runners.run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # Hydra logs to stdout, tqdm to stderr: read them together
        text=True,
        timeout=timeout,
        **kwargs,
    )


def write_dataset(root: Path, rows: list[dict[str, str]]) -> Path:
    """A VLMHyperBench-layout dataset: annotation.csv (with BOM) and the images named in it."""
    root.mkdir(parents=True, exist_ok=True)
    columns = ["data_index", "split", "image_path", "question", "answer", "doc_class",
               "question_type"]  # fmt: skip
    with (root / "annotation.csv").open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter=";")
        writer.writeheader()
        for index, row in enumerate(rows):
            writer.writerow(
                {"data_index": index, "split": "test", "question": f"question {index}?",
                 "answer": "42", "doc_class": "form", "question_type": "number", **row}
            )  # fmt: skip
    return root


def read_predictions(output_dir: Path) -> pd.DataFrame:
    return pd.read_csv(output_dir / "predictions.csv", dtype={"sample_id": str, "error": str},
                       keep_default_na=False)  # fmt: skip


# --- the default job -----------------------------------------------------------------------


def test_default_config_runs_tiny_qwen2_vl_on_the_sample_dataset(cache_dir, tmp_path) -> None:
    cfg = make_config(cache_dir)
    assert cfg.model.init_params.model_name == "tiny-qwen2-vl"
    assert cfg.dataset.name == "sample_docs"

    row = run_experiment(cfg, tmp_path)

    predictions = read_predictions(tmp_path)
    assert set(predictions.columns) >= PREDICTION_COLUMNS
    assert len(predictions) == 48 and predictions["sample_id"].is_unique
    assert predictions["sample_index"].tolist() == list(range(48))  # dataset order restored
    assert (predictions["error"] == "").all()
    assert (predictions["completion_tokens"] > 0).all() and (predictions["latency_s"] > 0).all()
    assert set(predictions["framework"]) == {"Hugging Face"}

    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert set(metrics.columns) >= METRICS_COLUMNS and len(metrics) == 1
    assert metrics.loc[0, "n_samples"] == 48 and metrics.loc[0, "n_errors"] == 0
    assert row["samples_per_s"] > 0 and row["status"] == "ok"

    grouped = pd.read_csv(tmp_path / "metrics_by_group.csv")
    assert {"doc_class", "question_type", "n", "anls"} <= set(grouped.columns)
    assert grouped["n"].sum() == 48

    environment = json.loads((tmp_path / "environment.json").read_text())
    assert {"python", "packages", "device", "gpu_name", "git_commit", "seed"} <= set(environment)
    assert environment["packages"]["transformers"]


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
        "model.class_path=tests.wrappers:SlowDummy",
        "model.init_params.model_name=slow",
        "+model.init_params.delay_s=0.1",
        "runner.batch_size=2",
    ]
    env = {
        **os.environ,
        "MODEL_INTERFACE_CACHE": str(cache_dir),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    killed_dir = tmp_path / "outputs" / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "runners.run", *args, "run_name=killed"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            predictions = killed_dir / "predictions.csv"
            if predictions.exists() and predictions.read_text().count("\n") > 10:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
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


def test_a_torn_last_row_is_dropped_on_resume(tmp_path) -> None:
    from runners.outputs import PredictionsFile

    path = tmp_path / "predictions.csv"
    columns = ["sample_id", "sample_index", "prediction", "error"]
    first = PredictionsFile(path, columns)
    first.open(resume=True)
    first.append(
        [
            {"sample_id": "a", "sample_index": 0, "prediction": "x", "error": ""},
            {"sample_id": "b", "sample_index": 1, "prediction": "", "error": "boom"},
        ]
    )
    first.finish()
    with path.open("a") as handle:
        handle.write('c,2,"an answer cut off\nin the mid')  # a kill during a write

    second = PredictionsFile(path, columns)
    kept = second.open(resume=True)
    assert [row["sample_id"] for row in kept] == ["a"]  # failed "b" is retried, torn "c" dropped
    second.finish()
    assert path.read_bytes() == b"sample_id,sample_index,prediction,error\r\na,0,x,\r\n"


def test_rows_written_out_of_order_are_put_back_in_dataset_order(tmp_path) -> None:
    from runners.outputs import PredictionsFile

    path = tmp_path / "predictions.csv"
    predictions = PredictionsFile(path, ["sample_id", "sample_index", "prediction"])
    predictions.open(resume=False)
    predictions.append([{"sample_id": "c", "sample_index": 2, "prediction": "two\nlines"},
                        {"sample_id": "a", "sample_index": 0, "prediction": "zero"}])  # fmt: skip
    predictions.append([{"sample_id": "b", "sample_index": 1, "prediction": "ü, one"}])
    predictions.finish()
    frame = pd.read_csv(path)
    assert frame["sample_id"].tolist() == ["a", "b", "c"]
    assert frame["prediction"].tolist() == ["zero", "ü, one", "two\nlines"]


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


def test_too_many_errors_exits_non_zero(cache_dir, tmp_path, broken_dataset) -> None:
    result = run_cli(
        "model=dummy", "dataset=vlmhyperbench", f"dataset.root={broken_dataset}",
        "runner.max_error_rate=0.5", cwd=tmp_path, cache_dir=cache_dir,
    )  # fmt: skip
    assert result.returncode == 1
    assert "over runner.max_error_rate=0.5" in result.stdout
    (run_dir,) = (tmp_path / "outputs").iterdir()
    assert pd.read_csv(run_dir / "metrics.csv").loc[0, "status"] == "too_many_errors"


def test_a_failing_batch_is_retried_one_sample_at_a_time(cache_dir, tmp_path) -> None:
    root = write_dataset(
        tmp_path / "data",
        [{"image_path": "a.png", "question": "fine"}, {"image_path": "a.png", "question": "boom"},
         {"image_path": "a.png", "question": "also fine"}],
    )  # fmt: skip
    Image.new("RGB", (8, 8)).save(root / "a.png")
    cfg = make_config(
        cache_dir,
        "model=custom",
        "model.class_path=tests.wrappers:FailsOnKeyword",
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=custom", "model.class_path=no_such_pkg.models:Model",
          "model.init_params.model_name=x"], "module 'no_such_pkg.models' cannot be imported"),
        (["model=custom", "model.init_params.model_name=x"], "model.class_path has no value"),
        (["dataset=vlmhyperbench"], "dataset.root has no value"),
        (["dataset.root=/no/such/dir"], "is not a directory; fix dataset.root"),
        (["model=dummy", "runner.metrics=[anl]"], "Did you mean 'anls'?"),
        (["model=no_such_model"], "Could not find 'model/no_such_model'"),
    ],
)  # fmt: skip
def test_config_mistakes_end_with_one_clear_line(cache_dir, tmp_path, args, message) -> None:
    result = run_cli(*args, cwd=tmp_path, cache_dir=cache_dir, timeout=120)
    assert result.returncode != 0
    assert message in result.stdout
    assert "Traceback" not in result.stdout


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


def test_a_run_is_reproducible_from_its_saved_config(cache_dir, tmp_path) -> None:
    first = run_cli("model=dummy", "runner.limit=4", "run_name=first", cwd=tmp_path,
                    cache_dir=cache_dir)  # fmt: skip
    assert first.returncode == 0, first.stdout[-2000:]
    saved = tmp_path / "outputs" / "first" / ".hydra"
    again = run_cli(
        "--config-path", str(saved), "--config-name", "config", "hydra.run.dir=outputs/again",
        cwd=tmp_path, cache_dir=cache_dir,
    )  # fmt: skip
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
        "--multirun", *launcher, "model=dummy", "dataset=sample_docs,sample_docs_invoices",
        "runner.limit=3", "run_name=launched", cwd=tmp_path, cache_dir=cache_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    summary = pd.read_csv(tmp_path / "outputs" / "multirun" / "launched" / "summary.csv")
    assert sorted(summary["dataset"]) == ["sample_docs", "sample_docs_invoices"]
    assert (summary["n_samples"] == 3).all()
