"""VLMHyperBench data and benchmark configs as their users have them: a dataset shaped like their
demo (several questions per scan, ``data_index`` naming the document), and ``user_config.csv`` /
``vlm_base.csv`` imported into an experiment and run end to end with upstream-style wrappers."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from runners.import_vlmhyperbench import USER_CONFIG_COLUMNS, VLM_BASE_COLUMNS
from runners.run import run_experiment
from tests.helpers import (
    DEMO_QUESTIONS,
    error_lines,
    make_config,
    read_predictions,
    run_cli,
    run_until_killed,
    write_demo_dataset,
)

ECHO = ["model=custom", "model.class_path=tests.wrappers:PromptEcho",
        "model.init_params.model_name=echo"]  # fmt: skip
N_QUESTIONS = 22  # 7 + 7 + 4 + 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "Datasets" / "VQA" / "demo_mini")


def test_the_demo_shaped_dataset_is_what_their_demo_is(demo: Path) -> None:
    annotation = (demo / "annotation.csv").read_bytes()
    assert annotation.startswith(b"\xef\xbb\xbf")
    rows = pd.read_csv(demo / "annotation.csv", sep=";", encoding="utf-8-sig")
    assert rows["data_index"].value_counts().sort_index().tolist() == [7, 7, 4, 4]
    assert rows["answer_bbox"].str.startswith("[[").all()
    assert rows["question"].str.contains("Какое").all()
    for image_path in rows["image_path"].unique():
        with Image.open(demo / image_path) as image:
            assert 1500 <= max(image.size) <= 2500
            assert image.format == ("JPEG" if image_path.endswith(".jpg") else "PNG")
        assert (demo / image_path).stat().st_size > 200_000  # compresses like a scan


def test_every_question_is_answered_once_by_its_row_and_grouped_by_document(
    model_cache, tmp_path, demo
) -> None:
    cfg = make_config(model_cache, *ECHO, "dataset=vlmhyperbench", f"dataset.root={demo}",
                      "runner.batch_size=4")  # fmt: skip
    metrics = run_experiment(cfg, tmp_path / "run")
    assert metrics["n_samples"] == N_QUESTIONS and metrics["n_errors"] == 0

    predictions = read_predictions(tmp_path / "run")
    annotation = pd.read_csv(demo / "annotation.csv", sep=";", encoding="utf-8-sig")
    assert predictions["sample_id"].tolist() == [str(index) for index in range(N_QUESTIONS)]
    assert predictions["document_id"].tolist() == annotation["data_index"].tolist()
    assert predictions["prompt"].tolist() == annotation["question"].tolist()

    answers = pd.read_csv(tmp_path / "run" / "answers.csv", sep=";", encoding="utf-8-sig")
    assert answers["id"].tolist() == list(range(N_QUESTIONS))

    by_document = pd.read_csv(tmp_path / "run" / "metrics_by_document.csv")
    assert by_document["document_id"].tolist() == [0, 1, 2, 3]
    assert by_document["n"].tolist() == [7, 7, 4, 4]
    by_class = pd.read_csv(tmp_path / "run" / "metrics_by_doc_class.csv")
    assert dict(zip(by_class["doc_class"], by_class["n"], strict=True)) == {
        "invoice": 8, "passport": 14}  # fmt: skip
    assert {"cer", "cer_corpus", "wer_corpus"} <= set(by_class.columns)


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_file_an_uninterrupted_run_writes(
    model_cache, tmp_path, demo
) -> None:
    args = ["model=custom", "model.class_path=tests.wrappers:SlowDummy",
            "model.init_params.model_name=slow", "+model.init_params.delay_s=0.3",
            "runner.batch_size=2", "dataset=vlmhyperbench", f"dataset.root={demo}"]  # fmt: skip
    killed_dir = tmp_path / "outputs" / "killed"
    run_until_killed(*args, "run_name=killed", cwd=tmp_path, cache_dir=model_cache,
                     answers=killed_dir / "predictions.csv", lines=6)  # fmt: skip
    assert 0 < len(read_predictions(killed_dir)) < N_QUESTIONS

    resumed = run_cli(*args, "run_name=killed", cwd=tmp_path, cache_dir=model_cache)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert "resuming" in resumed.stdout
    whole = run_cli(*args, "run_name=whole", cwd=tmp_path, cache_dir=model_cache)
    assert whole.returncode == 0, whole.stdout[-2000:]

    timing = ["call_s", "batch_size"]  # when a sample was answered, not what it answered
    after = read_predictions(killed_dir).drop(columns=timing)
    uninterrupted = read_predictions(tmp_path / "outputs" / "whole").drop(columns=timing)
    assert after["sample_id"].tolist() == [str(index) for index in range(N_QUESTIONS)]
    pd.testing.assert_frame_equal(after, uninterrupted)
    for name in ("answers.csv", "metrics_by_document.csv", "metrics_by_doc_class.csv"):
        assert (killed_dir / name).read_bytes() == (
            tmp_path / "outputs" / "whole" / name
        ).read_bytes()


# --- the importer ----------------------------------------------------------------------------


def write_semicolon_csv(path: Path, columns: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def write_collection(path: Path, style: str) -> Path:
    """A prompt collection with a prompt for every (doc_class, question_type) of the demo."""
    rows = [[f"{style}: {question_type}", f"{doc_class} {question_type}", "0.1"]
            for doc_class, types in DEMO_QUESTIONS.items() for question_type in types]  # fmt: skip
    return write_semicolon_csv(path, ["prompt", "doc_class_question_type", "cer"], rows)


VLM_BASE_ROWS = [
    ["Hugging Face", "Qwen2.5-VL", "Qwen2.5-VL-3B-Instruct", "ghcr.io/x/qwen25:0.1",
     "git+https://example.org/model_qwen2.5-vl.git@0.1.1", "tests", "upstream_wrappers",
     "Qwen2_5_VLStyleModel"],
    ["Hugging Face", "Qwen2-VL", "Qwen2-VL-2B-Instruct", "ghcr.io/x/qwen2:0.1",
     "git+https://example.org/model_qwen2-vl.git@0.1.1", "tests", "upstream_wrappers",
     "Qwen2VLStyleModel"],
]  # fmt: skip
AGGREGATORS = "['by_id', 'by_doc_question', 'by_doc_type', 'general']"


def user_config_row(
    model: str,
    collection: str,
    *,
    metrics: str = "['CER']",
    only_evaluate: str = "False",
    system_prompt: str = "",
) -> list[str]:
    return ["demo_mini", "VQA", "Hugging Face", model, system_prompt, collection, metrics,
            only_evaluate, AGGREGATORS, "", ""]  # fmt: skip


@pytest.fixture
def benchmark(tmp_path: Path, demo: Path) -> Path:
    """Their data folder (Datasets/, PromptCollections/, SystemPrompts/) and two config CSVs."""
    data = tmp_path / "data_dirs"
    shutil.copytree(demo, data / "Datasets" / "VQA" / "demo_mini")
    write_collection(data / "PromptCollections" / "VQA" / "demo_mini" / "brief.csv", "Кратко")
    write_collection(data / "PromptCollections" / "VQA" / "demo_mini" / "detailed.csv", "Подробно")
    (data / "SystemPrompts").mkdir()
    (data / "SystemPrompts" / "strict.txt").write_text("Отвечай только значением.\n")
    write_semicolon_csv(tmp_path / "vlm_base.csv", VLM_BASE_COLUMNS, VLM_BASE_ROWS)
    return tmp_path


def import_cli(
    benchmark: Path,
    rows: list[list[str]],
    *extra: str,
    cache: Path,
    columns: list[str] = USER_CONFIG_COLUMNS,
) -> subprocess.CompletedProcess[str]:
    write_semicolon_csv(benchmark / "user_config.csv", columns, rows)
    return run_cli(str(benchmark / "user_config.csv"), str(benchmark / "vlm_base.csv"),
                   "--data-dir", str(benchmark / "data_dirs"), "--out", str(benchmark / "conf"),
                   *extra, cwd=benchmark, cache_dir=cache, timeout=60,
                   module="runners.import_vlmhyperbench")  # fmt: skip


@pytest.mark.slow
def test_two_models_by_two_prompt_collections_run_as_four_jobs_with_their_prompts(
    model_cache, benchmark
) -> None:
    rows = [
        user_config_row("Qwen2.5-VL-3B-Instruct", "demo_mini/brief.csv",
                        system_prompt="strict.txt"),
        user_config_row("Qwen2.5-VL-3B-Instruct", "demo_mini/detailed.csv"),
        user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv"),
        user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/detailed.csv"),
        # Re-score the first row's answers with other metrics, without running the model again.
        user_config_row("Qwen2.5-VL-3B-Instruct", "demo_mini/brief.csv", system_prompt="strict.txt",
                        metrics="['CER', 'WER', 'BLEU']", only_evaluate="True"),
    ]  # fmt: skip
    imported = import_cli(benchmark, rows, cache=model_cache)
    assert imported.returncode == 0, imported.stdout
    searchpath = f"hydra.searchpath=[file://{benchmark / 'conf'}]"
    assert (
        f"python -m runners.run --multirun experiment=user_config '{searchpath}'" in imported.stdout
    )

    run = run_cli("--multirun", "experiment=user_config", searchpath, cwd=benchmark,
                  cache_dir=model_cache)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    sweep = benchmark / "outputs" / "multirun" / "user_config"
    jobs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert jobs == [f"{index}_custom_vlmhyperbench" for index in range(4)]

    annotation = pd.read_csv(benchmark / "data_dirs" / "Datasets" / "VQA" / "demo_mini" /
                             "annotation.csv", sep=";", encoding="utf-8-sig")  # fmt: skip
    sizes = {path: "{}x{}".format(*Image.open(benchmark / "data_dirs" / "Datasets" / "VQA" /
                                              "demo_mini" / path).size)
             for path in annotation["image_path"].unique()}  # fmt: skip
    qwen25, qwen2 = "Qwen2.5-VL-3B-Instruct", "Qwen2-VL-2B-Instruct"
    expected = [(qwen25, "Кратко"), (qwen25, "Подробно"), (qwen2, "Кратко"), (qwen2, "Подробно")]
    for index, (model, style) in enumerate(expected):
        predictions = read_predictions(sweep / f"{index}_custom_vlmhyperbench")
        assert predictions["sample_id"].tolist() == [str(row) for row in range(N_QUESTIONS)]
        assert set(predictions["model"]) == {model}
        prompts = [f"{style}: {question_type}" for question_type in annotation["question_type"]]
        assert predictions["prompt"].tolist() == prompts
        # The wrapper answers with the size of the image and the prompt it was given.
        assert predictions["prediction"].tolist() == [
            f"{sizes[path]} | {prompt}" for path, prompt in zip(annotation["image_path"], prompts,
                                                               strict=True)]  # fmt: skip
        metrics = pd.read_csv(sweep / f"{index}_custom_vlmhyperbench" / "metrics.csv")
        assert "cer" in metrics.columns and "wer" not in metrics.columns
    configs = [(sweep / job / ".hydra" / "config.yaml").read_text() for job in jobs]
    assert ["SystemPrompts/strict.txt" in config for config in configs] == [
        True,
        False,
        False,
        False,
    ]

    evaluation = run_cli("--multirun", "experiment=user_config_evaluate", searchpath,
                         cwd=benchmark, cache_dir=model_cache,
                         module="runners.evaluate")  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stdout[-3000:]
    scored = benchmark / "outputs" / "evaluate" / "multirun" / "user_config_evaluate" / "0"
    rescored = read_predictions(scored)
    first = read_predictions(sweep / "0_custom_vlmhyperbench")
    assert rescored["prediction"].tolist() == first["prediction"].tolist()
    metrics = pd.read_csv(scored / "metrics.csv").iloc[0]
    assert {"cer", "wer", "bleu"} <= set(metrics.index)
    assert metrics["cer"] == pytest.approx(pd.read_csv(sweep / "0_custom_vlmhyperbench" /
                                                       "metrics.csv").iloc[0]["cer"])  # fmt: skip


def test_the_system_prompt_file_and_filters_reach_the_job_config(model_cache, benchmark) -> None:
    row = user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv",
                          system_prompt="strict.txt")  # fmt: skip
    row[-2:] = ["['passport']", "['Имя', 'Фамилия']"]
    assert import_cli(benchmark, [row], "--name", "filtered", cache=model_cache).returncode == 0
    cfg = make_config(model_cache, "+vlmhyperbench/filtered=job_0",
                      f"hydra.searchpath=[file://{benchmark / 'conf'}]")  # fmt: skip
    assert cfg.model.class_path == "tests.upstream_wrappers:Qwen2VLStyleModel"
    assert cfg.model.init_params.system_prompt_file.endswith("SystemPrompts/strict.txt")
    assert list(cfg.dataset.doc_class) == ["passport"]
    assert list(cfg.dataset.question_type) == ["Имя", "Фамилия"]
    assert list(cfg.runner.metrics) == ["cer"]
    metrics = run_experiment(cfg, benchmark / "run")
    assert metrics["n_samples"] == 4  # two passports, two of their questions each
    assert set(read_predictions(benchmark / "run")["prompt"]) == {"Кратко: Имя", "Кратко: Фамилия"}


def test_with_hf_the_rows_run_on_the_built_in_backend(model_cache, benchmark) -> None:
    """A model the project has a config for gets it (dtype, image bounds); another gets a new
    model config with the settings of their wrappers."""
    write_semicolon_csv(benchmark / "vlm_base.csv", VLM_BASE_COLUMNS, [*VLM_BASE_ROWS, [
        "Hugging Face", "Qwen2.5-VL", "Qwen2.5-VL-32B-Instruct", "", "", "model_qwen2_5_vl",
        "models", "Qwen2_5_VLModel"]])  # fmt: skip
    rows = [user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv"),
            user_config_row("Qwen2.5-VL-32B-Instruct", "demo_mini/brief.csv")]  # fmt: skip
    assert import_cli(benchmark, rows, "--hf", "--name", "on_hf", cache=model_cache).returncode == 0
    searchpath = f"hydra.searchpath=[file://{benchmark / 'conf'}]"

    known = make_config(model_cache, "+vlmhyperbench/on_hf=job_0", searchpath)
    assert known.model.name == "hf"
    assert known.model.init_params.model_name == "Qwen/Qwen2-VL-2B-Instruct"
    assert known.model.init_params.processor_kwargs.max_pixels == 1280 * 28 * 28

    new = make_config(model_cache, "+vlmhyperbench/on_hf=job_1", searchpath)
    assert (
        benchmark / "conf" / "model" / "vlmhyperbench_qwen_qwen2_5_vl_32b_instruct.yaml"
    ).is_file()
    assert new.model.name == "hf"
    assert new.model.init_params.model_name == "Qwen/Qwen2.5-VL-32B-Instruct"
    assert (new.model.init_params.dtype, new.model.init_params.max_new_tokens) == ("bfloat16", 512)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("column", "user_config.csv: unknown column(s) ['temperature'], missing []"),
        ("metric", "user_config.csv line 2: metric 'ROUGE' has no counterpart here; importable: "
                   "['BLEU', 'CER', 'WER']"),
        ("model", "user_config.csv line 2: no vlm_base.csv row for framework 'Hugging Face' and "
                  "model 'Pixtral-12B'"),
        ("task", "user_config.csv line 2: task 'KIE' has no counterpart here; importable: ['VQA']"),
        ("collection", "user_config.csv line 2: {data}/PromptCollections/VQA/demo_mini/gone.csv "
                       "does not exist; check --data-dir and the prompt_collection column"),
        ("name", "the experiment name 'my bench' may hold only letters, digits"),
        ("evaluate_only", "user_config.csv line 2 only evaluates, but no row runs its model on its "
                          "questions"),
    ],
)  # fmt: skip
def test_what_has_no_counterpart_is_refused_in_one_line_and_nothing_is_written(
    model_cache, benchmark, change, message
) -> None:
    row = user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv")
    columns, extra = list(USER_CONFIG_COLUMNS), []
    if change == "column":
        columns.append("temperature")
        row.append("0.7")
    elif change == "metric":
        row[6] = "['CER', 'ROUGE']"
    elif change == "model":
        row[3] = "Pixtral-12B"
    elif change == "task":
        row[1] = "KIE"
    elif change == "evaluate_only":
        row[7] = "True"
    elif change == "name":
        extra = ["--name", "my bench"]
    elif change == "collection":
        row[5] = "demo_mini/gone.csv"
    result = import_cli(benchmark, [row], *extra, cache=model_cache, columns=columns)
    assert result.returncode == 2
    (line,) = error_lines(result.stdout)
    assert line.startswith(f"error: {message.format(data=benchmark / 'data_dirs')}")
    assert not (benchmark / "conf").exists()
