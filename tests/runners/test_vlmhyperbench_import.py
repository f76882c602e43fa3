"""VLMHyperBench data and benchmark configs as their users have them: a dataset shaped like their
demo (several questions per scan, ``data_index`` naming the document), and ``user_config.csv`` /
``vlm_base.csv`` imported into an experiment and run end to end with upstream-style wrappers."""

from __future__ import annotations

import csv
import shlex
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from PIL import Image

from model_interface.model_factory import ModelFactory
from runners.config.paths import PROJECT_ROOT
from runners.config.schema import RunConfig, model_config, to_settings
from runners.import_vlmhyperbench import (
    DEFAULT_MAX_NEW_TOKENS,
    PROJECT_CONF,
    USER_CONFIG_COLUMNS,
    VLM_BASE_COLUMNS,
    searchpath_override,
)
from runners.run import run_experiment
from tests.support.helpers import (
    DEMO_QUESTIONS,
    make_config,
    read_metrics,
    read_predictions,
    run_cli,
    run_until_killed,
    write_demo_dataset,
)

ECHO = [
    "model=custom",
    "model.class_path=tests.support.wrappers:PromptEcho",
    "model.init_params.model_name=echo",
]
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
    cfg = make_config(
        model_cache, *ECHO, "dataset=vlmhyperbench", f"dataset.root={demo}", "runner.batch_size=4"
    )
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
        "invoice": 8,
        "passport": 14,
    }
    assert {"cer", "cer_corpus", "wer_corpus"} <= set(by_class.columns)


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_file_an_uninterrupted_run_writes(
    model_cache, tmp_path, demo
) -> None:
    args = [
        "model=custom",
        "model.class_path=tests.support.wrappers:SlowDummy",
        "model.init_params.model_name=slow",
        "+model.init_params.delay_s=0.3",
        "runner.batch_size=2",
        "dataset=vlmhyperbench",
        f"dataset.root={demo}",
    ]
    killed_dir = tmp_path / "outputs" / "killed"
    run_until_killed(
        *args,
        "run_name=killed",
        cwd=tmp_path,
        cache_dir=model_cache,
        answers=killed_dir / "predictions.csv",
        lines=6,
    )
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


def write_semicolon_csv(
    path: Path, columns: list[str], rows: list[list[str]], encoding: str = "utf-8-sig"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        if columns:
            writer.writerow(columns)
        writer.writerows(rows)
    return path


def write_collection(path: Path, style: str) -> Path:
    """A prompt collection with a prompt for every (doc_class, question_type) of the demo."""
    rows = [
        [f"{style}: {question_type}", f"{doc_class} {question_type}", "0.1"]
        for doc_class, types in DEMO_QUESTIONS.items()
        for question_type in types
    ]
    return write_semicolon_csv(path, ["prompt", "doc_class_question_type", "cer"], rows)


VLM_BASE_ROWS = [
    [
        "Hugging Face",
        "Qwen2.5-VL",
        "Qwen2.5-VL-3B-Instruct",
        "ghcr.io/x/qwen25:0.1",
        "git+https://example.org/model_qwen2.5-vl.git@0.1.1",
        "tests.support",
        "upstream_wrappers",
        "Qwen2_5_VLStyleModel",
    ],
    [
        "Hugging Face",
        "Qwen2-VL",
        "Qwen2-VL-2B-Instruct",
        "ghcr.io/x/qwen2:0.1",
        "git+https://example.org/model_qwen2-vl.git@0.1.1",
        "tests.support",
        "upstream_wrappers",
        "Qwen2VLStyleModel",
    ],
]
AGGREGATORS = "['by_id', 'by_doc_question', 'by_doc_type', 'general']"


def user_config_row(
    model: str,
    collection: str,
    *,
    metrics: str = "['CER']",
    only_evaluate: str = "False",
    system_prompt: str = "",
) -> list[str]:
    return [
        "demo_mini",
        "VQA",
        "Hugging Face",
        model,
        system_prompt,
        collection,
        metrics,
        only_evaluate,
        AGGREGATORS,
        "",
        "",
    ]


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
    out: str | None = "conf",
    encoding: str = "utf-8-sig",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The importer on ``rows`` in ``benchmark``, writing to ``benchmark/out`` (None: its
    default folder)."""
    write_semicolon_csv(benchmark / "user_config.csv", columns, rows, encoding=encoding)
    out_args = [] if out is None else ["--out", str(benchmark / out)]
    return run_cli(
        str(benchmark / "user_config.csv"),
        str(benchmark / "vlm_base.csv"),
        "--data-dir",
        str(benchmark / "data_dirs"),
        *out_args,
        *extra,
        cwd=benchmark,
        cache_dir=cache,
        timeout=60,
        module="runners.import_vlmhyperbench",
        env=env or {},
    )


def printed_commands(output: str) -> list[str]:
    """The commands the importer prints to run the import ("run it: ...", "then: ...")."""
    return [
        line.partition(": ")[2]
        for line in output.splitlines()
        if line.startswith(("run it: ", "then: "))
    ]


def run_printed(command: str, *extra: str, cwd: Path, cache: Path, **kwargs) -> str:
    """A printed ``python -m MODULE ARGS`` run as the shell would split it; its output."""
    python, dash_m, module, *arguments = shlex.split(command)
    assert (python, dash_m) == ("python", "-m")
    result = run_cli(*arguments, *extra, cwd=cwd, cache_dir=cache, module=module, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_two_models_by_two_prompt_collections_run_as_four_jobs_with_their_prompts(
    model_cache, benchmark
) -> None:
    rows = [
        user_config_row(
            "Qwen2.5-VL-3B-Instruct", "demo_mini/brief.csv", system_prompt="strict.txt"
        ),
        user_config_row("Qwen2.5-VL-3B-Instruct", "demo_mini/detailed.csv"),
        user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv"),
        user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/detailed.csv"),
        # Re-score the first row's answers with other metrics, without running the model again.
        user_config_row(
            "Qwen2.5-VL-3B-Instruct",
            "demo_mini/brief.csv",
            system_prompt="strict.txt",
            metrics="['CER', 'WER', 'BLEU']",
            only_evaluate="True",
        ),
    ]
    imported = import_cli(benchmark, rows, cache=model_cache)
    assert imported.returncode == 0, imported.stdout
    searchpath = f"hydra.searchpath=[file://{benchmark / 'conf'}]"
    assert (
        f"python -m runners.run --multirun experiment=user_config '{searchpath}'" in imported.stdout
    )

    run = run_cli(
        "--multirun", "experiment=user_config", searchpath, cwd=benchmark, cache_dir=model_cache
    )
    assert run.returncode == 0, run.stdout[-3000:]
    sweep = benchmark / "outputs" / "multirun" / "user_config"
    jobs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert jobs == [f"{index}_custom_vlmhyperbench" for index in range(4)]

    annotation = pd.read_csv(
        benchmark / "data_dirs" / "Datasets" / "VQA" / "demo_mini" / "annotation.csv",
        sep=";",
        encoding="utf-8-sig",
    )
    sizes = {
        path: "{}x{}".format(
            *Image.open(benchmark / "data_dirs" / "Datasets" / "VQA" / "demo_mini" / path).size
        )
        for path in annotation["image_path"].unique()
    }
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
            f"{sizes[path]} | {prompt}"
            for path, prompt in zip(annotation["image_path"], prompts, strict=True)
        ]
        metrics = pd.read_csv(sweep / f"{index}_custom_vlmhyperbench" / "metrics.csv")
        assert "cer" in metrics.columns and "wer" not in metrics.columns
    configs = [(sweep / job / ".hydra" / "config.yaml").read_text() for job in jobs]
    assert ["SystemPrompts/strict.txt" in config for config in configs] == [
        True,
        False,
        False,
        False,
    ]

    evaluation = run_cli(
        "--multirun",
        "experiment=user_config_evaluate",
        searchpath,
        cwd=benchmark,
        cache_dir=model_cache,
        module="runners.evaluate",
    )
    assert evaluation.returncode == 0, evaluation.stdout[-3000:]
    scored = benchmark / "outputs" / "evaluate" / "multirun" / "user_config_evaluate" / "0"
    rescored = read_predictions(scored)
    first = read_predictions(sweep / "0_custom_vlmhyperbench")
    assert rescored["prediction"].tolist() == first["prediction"].tolist()
    metrics = pd.read_csv(scored / "metrics.csv").iloc[0]
    assert {"cer", "wer", "bleu"} <= set(metrics.index)
    assert metrics["cer"] == pytest.approx(
        pd.read_csv(sweep / "0_custom_vlmhyperbench" / "metrics.csv").iloc[0]["cer"]
    )


@pytest.mark.slow
def test_the_system_prompt_file_and_filters_reach_the_job_config(model_cache, benchmark) -> None:
    row = user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv", system_prompt="strict.txt")
    row[-2:] = ["['passport']", "['Имя', 'Фамилия']"]
    assert import_cli(benchmark, [row], "--name", "filtered", cache=model_cache).returncode == 0
    cfg = make_config(
        model_cache,
        "+vlmhyperbench/filtered=job_0",
        f"hydra.searchpath=[file://{benchmark / 'conf'}]",
    )
    assert cfg.model.class_path == "tests.support.upstream_wrappers:Qwen2VLStyleModel"
    assert cfg.model.init_params.system_prompt_file.endswith("SystemPrompts/strict.txt")
    assert list(cfg.dataset.doc_class) == ["passport"]
    assert list(cfg.dataset.question_type) == ["Имя", "Фамилия"]
    assert list(cfg.runner.metrics) == ["cer"]
    metrics = run_experiment(cfg, benchmark / "run")
    assert metrics["n_samples"] == 4  # two passports, two of their questions each
    assert set(read_predictions(benchmark / "run")["prompt"]) == {"Кратко: Имя", "Кратко: Фамилия"}


@pytest.mark.slow
def test_with_hf_the_rows_run_on_the_built_in_backend(model_cache, benchmark) -> None:
    """A model the project has a config for gets it (dtype, image bounds); another gets a new
    model config with the settings of their wrappers."""
    write_semicolon_csv(
        benchmark / "vlm_base.csv",
        VLM_BASE_COLUMNS,
        [
            *VLM_BASE_ROWS,
            [
                "Hugging Face",
                "Qwen2.5-VL",
                "Qwen2.5-VL-32B-Instruct",
                "",
                "",
                "model_qwen2_5_vl",
                "models",
                "Qwen2_5_VLModel",
            ],
        ],
    )
    rows = [
        user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv"),
        user_config_row("Qwen2.5-VL-32B-Instruct", "demo_mini/brief.csv"),
    ]
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
    assert (new.model.init_params.dtype, new.model.init_params.max_new_tokens) == (
        "bfloat16",
        DEFAULT_MAX_NEW_TOKENS,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "column",
            f"user_config.csv: unknown column(s) ['temperature'], missing []; expected "
            f"{USER_CONFIG_COLUMNS}",
        ),
        (
            "metric",
            "user_config.csv line 2: metric 'ROUGE' has no counterpart here; importable: "
            "['BLEU', 'CER', 'WER']",
        ),
        (
            "model",
            "user_config.csv line 2: no vlm_base.csv row for framework 'Hugging Face' and "
            "model 'Pixtral-12B'",
        ),
        ("task", "user_config.csv line 2: task 'KIE' has no counterpart here; importable: ['VQA']"),
        (
            "collection",
            "user_config.csv line 2: {data}/PromptCollections/VQA/demo_mini/gone.csv "
            "does not exist; check --data-dir and the prompt_collection column",
        ),
        (
            "name",
            "the experiment name 'my bench' may hold only letters, digits, '_', '.' and '-'; "
            "pass --name",
        ),
        (
            "evaluate_only",
            "user_config.csv line 2 only evaluates, but no row runs its model on its "
            "questions; add that row, or score its answers file with python -m "
            "runners.evaluate predictions=...",
        ),
        # A header alone used to write nothing and print a command that ran nothing, exit 0.
        ("no_rows", "user_config.csv has no rows: add one evaluation per line below its header"),
        (
            "empty_file",
            f"user_config.csv is empty; its first line must be the header "
            f"{';'.join(USER_CONFIG_COLUMNS)}",
        ),
        (
            "no_models",
            "user_config.csv line 2: no vlm_base.csv row for framework 'Hugging Face' "
            "and model 'Qwen2-VL-2B-Instruct'",
        ),
        # Saved from Excel as plain "CSV" (a legacy code page), not "CSV UTF-8": a traceback.
        (
            "latin1",
            "user_config.csv line 2 is not UTF-8 (byte 0xe9); re-save the file as UTF-8 "
            "(Excel: 'CSV UTF-8')",
        ),
        (
            "latin1_vlm_base",
            "vlm_base.csv line 4 is not UTF-8 (byte 0xe9); re-save the file as "
            "UTF-8 (Excel: 'CSV UTF-8')",
        ),
        # An unquoted ';' in a prompt: the row has a value beyond the header. A traceback.
        (
            "extra_value",
            "user_config.csv line 2: 12 values for 11 columns; quote a value that holds ';'",
        ),
        # A shared user_config.csv must not send a file from elsewhere on this machine to the
        # model (as its system prompt or its prompts) or make a dataset of another folder.
        (
            "dataset_outside",
            "user_config.csv line 2: dataset '../../../..' leads out of "
            "{data}/Datasets/VQA; name a path inside it",
        ),
        (
            "system_prompt_outside",
            "user_config.csv line 2: system_prompt '../../notes.txt' leads "
            "out of {data}/SystemPrompts; name a path inside it",
        ),
        (
            "collection_outside",
            "user_config.csv line 2: prompt_collection '{notes}' leads out of "
            "{data}/PromptCollections/VQA; name a path inside it",
        ),
        ("max_new_tokens", "--max-new-tokens must be >= 1, got 0"),
    ],
)
def test_what_cannot_be_imported_is_refused_in_one_line_and_nothing_is_written(
    model_cache, benchmark, change, message
) -> None:
    row = user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv")
    columns, extra, rows, encoding = list(USER_CONFIG_COLUMNS), [], [row], "utf-8-sig"
    notes = benchmark / "notes.txt"  # a file outside the data folder
    notes.write_text("not for the model\n", encoding="utf-8")
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
    elif change == "no_rows":
        rows = []
    elif change == "no_models":
        write_semicolon_csv(benchmark / "vlm_base.csv", VLM_BASE_COLUMNS, [])
    elif change == "latin1":
        row[4], encoding = "Réponds brièvement.", "latin-1"
    elif change == "latin1_vlm_base":
        models = [
            *VLM_BASE_ROWS,
            ["Hugging Face", "Qwen2-VL", "Qwen2-VL-7B", "", "", "café", "models", "Model"],
        ]
        write_semicolon_csv(benchmark / "vlm_base.csv", VLM_BASE_COLUMNS, models, "latin-1")
    elif change == "extra_value":
        row[4:5] = ["Answer briefly", " in English."]
    elif change == "dataset_outside":
        row[0] = "../../../.."
    elif change == "system_prompt_outside":
        row[4] = "../../notes.txt"
    elif change == "collection_outside":
        row[5] = str(notes)
    elif change == "max_new_tokens":
        extra = ["--max-new-tokens", "0"]
    elif change == "empty_file":
        columns, rows = [], []  # not even a header: a file of 0 bytes
    result = import_cli(
        benchmark, rows, *extra, cache=model_cache, columns=columns, encoding=encoding
    )
    expected = message.format(data=benchmark / "data_dirs", notes=notes)
    assert (result.returncode, result.stdout.splitlines()) == (2, [f"error: {expected}"])
    assert not (benchmark / "conf").exists()


# --- every cell reaches the run as its text ---------------------------------------------------

SECRET = "sk-secret-123"
# What OmegaConf and Hydra would interpret in a config value: each must stay this text.
INTERPRETED = [
    "${oc.env:OPENAI_API_KEY}",
    "key: ${oc.env:OPENAI_API_KEY}, end",
    "${oc.env:OPENAI_API_KEY,fallback}",
    "${oc.decode:'${oc.env:OPENAI_API_KEY}'}",
    "${oc.create:{key: ${oc.env:OPENAI_API_KEY}}}",
    "${oc.select:paths.cache_dir,none}",
    "${paths.cache_dir}",
    "${.name}",
    "${a.${b}}",
    "${hydra:runtime.cwd}",
    "${hydra:job.name}",
    "${now:%Y-%m-%d}",
    "${default_cache_dir:}",
    "\\${oc.env:OPENAI_API_KEY}",  # a backslash before "${"
    "\\\\${oc.env:OPENAI_API_KEY}",  # two of them
    "ends with a backslash \\",
    "\\",
    "???",  # OmegaConf's missing value
    "$ {x} $x {y} }",
    "# @package _global_",
    "line one\n# @package foo\nmodel:\n  class_path: evil:Evil",  # quoted CSV cells hold lines
    "para\u2028graph\x85next\rline",  # line breaks to YAML, not to Python's csv
]


@pytest.mark.slow
def test_no_cell_is_interpreted_each_reaches_the_composed_job_as_its_text(
    model_cache, benchmark, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    data = benchmark / "data_dirs"
    # A dataset folder, a prompt collection and a model named like interpolations too.
    odd_name = "${oc.env:OPENAI_API_KEY} ${now:%Y}"
    shutil.copytree(data / "Datasets" / "VQA" / "demo_mini", data / "Datasets" / "VQA" / odd_name)
    write_collection(data / "PromptCollections" / "VQA" / f"{odd_name}.csv", "Кратко")
    model = [odd_name, "Dummy", odd_name, "", "", "model_interface", "backends.dummy", "DummyModel"]
    write_semicolon_csv(benchmark / "vlm_base.csv", VLM_BASE_COLUMNS, [model])
    # Each form as the system prompt and the filters; the other cells name the odd folder.
    rows = [
        [
            odd_name,
            "VQA",
            odd_name,
            odd_name,
            text,
            f"{odd_name}.csv",
            "['CER']",
            "False",
            AGGREGATORS,
            repr([text, "passport"]),
            text,
        ]
        for text in INTERPRETED
    ]
    result = import_cli(benchmark, rows, "--name", "odd", cache=model_cache)
    assert result.returncode == 0, result.stdout
    assert SECRET not in result.stdout

    searchpath = f"hydra.searchpath=[file://{benchmark / 'conf'}]"
    for index, text in enumerate(INTERPRETED):
        job = benchmark / "conf" / "vlmhyperbench" / "odd" / f"job_{index}.yaml"
        # The row is quoted in one comment line under the package line, whatever its cells hold.
        header, source, first_key = job.read_text(encoding="utf-8").splitlines()[:3]
        assert (header, first_key) == ("# @package _global_", "defaults:")
        assert source.startswith("# imported from user_config.csv line ")

        cfg = make_config(model_cache, f"+vlmhyperbench/odd=job_{index}", searchpath)
        settings = to_settings(cfg, RunConfig)  # resolved as runners.run resolves it
        assert settings.model["class_path"] == "model_interface.backends.dummy:DummyModel"
        assert settings.model["init_params"]["system_prompt"] == text
        assert settings.model["init_params"]["model_name"] == odd_name
        assert settings.dataset.name == odd_name
        assert settings.dataset.root == str(data / "Datasets" / "VQA" / odd_name)
        assert settings.dataset.prompt_collection == str(
            data / "PromptCollections" / "VQA" / f"{odd_name}.csv"
        )
        assert (settings.dataset.doc_class, settings.dataset.question_type) == (
            [text, "passport"],
            [text],
        )
        assert SECRET not in repr(settings)


@pytest.mark.slow
def test_a_secret_named_in_a_cell_reaches_no_file_of_the_printed_commands(
    model_cache, tmp_path, demo
) -> None:
    """The import and its printed commands run for real, the secret in the environment; the
    folder has a comma, a space and Cyrillic, which the printed searchpath must quote."""
    benchmark = tmp_path / "bench, с пробелом"
    data = benchmark / "data_dirs"
    shutil.copytree(demo, data / "Datasets" / "VQA" / "demo_mini")
    write_collection(data / "PromptCollections" / "VQA" / "demo_mini" / "brief.csv", "Кратко")
    key = "${oc.env:OPENAI_API_KEY}"
    model = ["Dummy", "Dummy", key, "", "", "model_interface", "backends.dummy", "DummyModel"]
    write_semicolon_csv(benchmark / "vlm_base.csv", VLM_BASE_COLUMNS, [model])
    row = [
        "demo_mini",
        "VQA",
        "Dummy",
        key,
        key,
        "demo_mini/brief.csv",
        "['CER']",
        "False",
        AGGREGATORS,
        "",
        "",
    ]
    evaluate_row = [*row[:6], "['CER', 'WER']", "True", *row[8:]]
    secret = {"OPENAI_API_KEY": SECRET}
    imported = import_cli(benchmark, [row, evaluate_row], cache=model_cache, out=None, env=secret)
    assert imported.returncode == 0, imported.stdout

    searchpath = f"'hydra.searchpath=[\"file://{benchmark}/conf-vlmhyperbench\"]'"
    run, evaluate = printed_commands(imported.stdout)
    assert run == f"python -m runners.run --multirun experiment=user_config {searchpath}"
    assert evaluate == (
        f"python -m runners.evaluate --multirun experiment=user_config_evaluate {searchpath}"
    )
    output = run_printed(
        run,
        "runner.limit=2",
        "model.init_params.max_new_tokens=8",
        cwd=benchmark,
        cache=model_cache,
        env=secret,
    )
    output += run_printed(evaluate, cwd=benchmark, cache=model_cache, env=secret)

    job = benchmark / "outputs" / "multirun" / "user_config" / "0_custom_vlmhyperbench"
    predictions = read_predictions(job)
    assert set(predictions["model"]) == {key}
    # The dummy model answers "<size> rgb(...) | <system prompt> <prompt>", cut at 8 words.
    assert [answer.split()[3] for answer in predictions["prediction"]] == [key, key]
    assert all(len(answer.split()) <= 8 for answer in predictions["prediction"])
    rescored = benchmark / "outputs" / "evaluate" / "multirun" / "user_config_evaluate" / "0"
    assert "wer" in read_metrics(rescored)
    assert SECRET not in output
    written = [path for path in benchmark.rglob("*") if path.is_file()]
    assert len(written) > 20 and not [
        path for path in written if SECRET.encode() in path.read_bytes()
    ]


# --- where the import goes, and how long its answers are -------------------------------------


@pytest.mark.slow
def test_an_out_folder_that_cannot_be_written_is_one_line(model_cache, benchmark) -> None:
    (benchmark / "a_file").write_text("")
    row = user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv")
    result = import_cli(benchmark, [row], cache=model_cache, out="a_file/conf")
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"error: cannot write {benchmark / 'a_file' / 'conf' / 'vlmhyperbench' / 'user_config'}: "
        "Not a directory; choose another folder with --out DIR"
    )


@pytest.mark.slow
def test_by_default_the_import_goes_to_conf_vlmhyperbench_of_the_current_directory(
    model_cache, benchmark
) -> None:
    row = user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv")
    result = import_cli(
        benchmark, [row], "--name", "default_out_probe", cache=model_cache, out=None
    )
    assert result.returncode == 0, result.stdout
    out = benchmark / "conf-vlmhyperbench"
    assert (out / "experiment" / "default_out_probe.yaml").is_file()
    assert (out / "vlmhyperbench" / "default_out_probe" / "job_0.yaml").is_file()
    # The project's conf/ (its git tree, its --help) is left alone.
    assert not (PROJECT_CONF / "experiment" / "default_out_probe.yaml").exists()
    assert not (PROJECT_CONF / "vlmhyperbench" / "default_out_probe").exists()
    assert printed_commands(result.stdout) == [
        f"python -m runners.run --multirun experiment=default_out_probe "
        f"'hydra.searchpath=[file://{out}]'"
    ]
    # The job the experiment sweeps over composes from that folder.
    cfg = make_config(
        model_cache, "+vlmhyperbench/default_out_probe=job_0", f"hydra.searchpath=[file://{out}]"
    )
    assert cfg.model.class_path == "tests.support.upstream_wrappers:Qwen2VLStyleModel"


@pytest.mark.parametrize(
    "folder",
    [
        "/srv/plain-dir_1.0/conf",
        "/srv/a b/conf",
        "/srv/a,b/conf",
        "/srv/Данные/conf",
        "/srv/it's/conf",
        '/srv/say "hi"/conf',
        "/srv/back\\slash\\",
        "/srv/a(b)=c [d]/conf",
        "/srv/trailing space /conf ",
    ],
)
def test_the_printed_searchpath_names_any_folder_exactly(folder: str) -> None:
    override = searchpath_override(Path(folder))
    if folder == "/srv/plain-dir_1.0/conf":
        assert override == "hydra.searchpath=[file:///srv/plain-dir_1.0/conf]"
    parsed = OverridesParser.create().parse_override(override)
    assert (parsed.key_or_group, parsed.value()) == ("hydra.searchpath", [f"file://{folder}"])
    assert shlex.split(shlex.quote(override)) == [override]


@pytest.mark.slow
def test_jobs_on_this_projects_backends_answer_briefly_and_take_a_plain_override(
    model_cache, benchmark, clean_registry
) -> None:
    """--hf rows and rows whose wrapper is a built-in backend get max_new_tokens; a wrapper of
    their own, which takes no such argument, is left to its own length."""
    write_semicolon_csv(
        benchmark / "vlm_base.csv",
        VLM_BASE_COLUMNS,
        [
            *VLM_BASE_ROWS,
            ["Dummy", "Dummy", "dummy", "", "", "model_interface", "backends.dummy", "DummyModel"],
            [
                "Their",
                "Qwen2-VL",
                "Qwen2-VL-style",
                "",
                "",
                "tests.support",
                "upstream_wrappers",
                "Qwen2VLStyleModel",
            ],
        ],
    )
    rows = [
        user_config_row("Qwen2-VL-2B-Instruct", "demo_mini/brief.csv"),  # conf/model's
        user_config_row("Qwen2.5-VL-3B-Instruct", "demo_mini/brief.csv"),  # conf/model's
        user_config_row("dummy", "demo_mini/brief.csv"),
        user_config_row("Qwen2-VL-style", "demo_mini/brief.csv"),
    ]
    rows[2][2], rows[3][2] = "Dummy", "Their"
    result = import_cli(benchmark, rows, "--hf", "--name", "brief", cache=model_cache)
    assert result.returncode == 0, result.stdout
    assert (
        "note: jobs on tests.support.upstream_wrappers:Qwen2VLStyleModel answer at their wrapper's "
        "own length; --max-new-tokens reaches only this project's backends"
    ) in result.stdout.splitlines()
    searchpath = f"hydra.searchpath=[file://{benchmark / 'conf'}]"

    def job(index: int, *overrides: str) -> dict:
        cfg = make_config(model_cache, f"+vlmhyperbench/brief=job_{index}", searchpath, *overrides)
        return to_settings(cfg, RunConfig).model

    for index in (0, 1, 2):
        assert job(index)["init_params"]["max_new_tokens"] == DEFAULT_MAX_NEW_TOKENS == 64
        # A plain override, as for any other model config; "+" and "++" are not needed.
        assert (
            job(index, "model.init_params.max_new_tokens=8")["init_params"]["max_new_tokens"] == 8
        )
    assert [job(index).get("name") for index in (0, 1, 2)] == ["hf", "hf", "custom"]
    theirs = job(3)
    assert "max_new_tokens" not in theirs["init_params"]
    assert type(ModelFactory.from_config(model_config(theirs))).__name__ == "Qwen2VLStyleModel"

    longer = import_cli(
        benchmark, rows, "--hf", "--name", "longer", "--max-new-tokens", "512", cache=model_cache
    )
    assert longer.returncode == 0, longer.stdout
    cfg = make_config(model_cache, "+vlmhyperbench/longer=job_2", searchpath)
    assert cfg.model.init_params.max_new_tokens == 512


@pytest.mark.slow
def test_the_example_runs_from_the_printed_commands_at_the_default_answer_length(
    model_cache, tmp_path
) -> None:
    (tmp_path / "examples").symlink_to(PROJECT_ROOT / "examples")
    example = Path("examples") / "vlmhyperbench"
    imported = run_cli(
        str(example / "user_config.csv"),
        str(example / "vlm_base.csv"),
        "--data-dir",
        str(example / "data_dirs"),
        "--name",
        "vlmhyperbench_demo",
        cwd=tmp_path,
        cache_dir=model_cache,
        module="runners.import_vlmhyperbench",
    )
    assert imported.returncode == 0, imported.stdout
    searchpath = shlex.quote(searchpath_override(tmp_path / "conf-vlmhyperbench"))
    run, evaluate = printed_commands(imported.stdout)
    assert run == f"python -m runners.run --multirun experiment=vlmhyperbench_demo {searchpath}"
    run_printed(run, "runner.limit=2", cwd=tmp_path, cache=model_cache)
    run_printed(evaluate, cwd=tmp_path, cache=model_cache)

    sweep = tmp_path / "outputs" / "multirun" / "vlmhyperbench_demo"
    for index in range(4):
        job = sweep / f"{index}_custom_vlmhyperbench"
        assert len(read_predictions(job)) == 2
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert config.model.init_params.max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    rescored = tmp_path / "outputs" / "evaluate" / "multirun" / "vlmhyperbench_demo_evaluate"
    assert "bleu" in read_metrics(rescored / "0")
