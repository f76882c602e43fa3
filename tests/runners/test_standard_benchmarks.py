"""The five named benchmark configs, end to end, offline: the ``datasets`` library downloads
each benchmark's local copy (its hub dataset's columns and feature types) from a hub on
127.0.0.1, then the hub is stopped and a copy of the cache serves every later run with
``HF_HUB_OFFLINE=1``, as a cache filled elsewhere and copied over would. A wrapper that knows
the answers scores 1 on each, through runners.run and runners.evaluate; a tiny model runs them
all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.support.helpers import error_lines, read_metrics, run_cli
from tests.support.hub import COMMIT, serve_hub, write_benchmark_repos

pytest.importorskip("datasets")
pytestmark = pytest.mark.slow

BENCHMARKS = {
    "docvqa_val": "docvqa_anls",
    "infovqa_val": "docvqa_anls",
    "chartqa_test": "relaxed_accuracy",
    "ocrbench": "ocrbench_accuracy",
    "textvqa_val": "vqa_accuracy",
}
ALL = "dataset=" + ",".join(BENCHMARKS)


def known_answers(answers: Path) -> list[str]:
    return [
        "model=custom",
        "model.class_path=tests.support.wrappers:KnownAnswers",
        f"+model.init_params.answers_file={answers}",
    ]


@pytest.fixture(scope="module")
def offline_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The benchmarks run once through the hub, which is then gone: a copy of the cache that
    run filled, and the known answers."""
    folder = tmp_path_factory.mktemp("benchmarks")
    answers = folder / "answers.json"
    answers.write_text(json.dumps(write_benchmark_repos(folder / "repos")), encoding="utf-8")
    with serve_hub(folder / "repos") as url:
        online = run_cli(
            "--multirun",
            ALL,
            *known_answers(answers),
            f"hydra.sweep.dir={folder / 'online'}",
            cwd=folder,
            cache_dir=folder / "models",
            env={"HF_ENDPOINT": url, "HF_HOME": str(folder / "hf"), "HF_HUB_OFFLINE": "0"},
        )
    assert online.returncode == 0, online.stdout[-3000:]
    shutil.copytree(folder / "hf", folder / "hf_copied")
    return {"folder": folder, "answers": answers, "hf_home": folder / "hf_copied"}


def offline_env(hf_home: Path) -> dict[str, str]:
    return {
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens: any request would fail
    }


def test_known_answers_score_1_on_every_benchmark_offline(offline_cache, tmp_path) -> None:
    env = offline_env(offline_cache["hf_home"])
    sweep = tmp_path / "sweep"
    result = run_cli(
        "--multirun",
        ALL,
        *known_answers(offline_cache["answers"]),
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        cache_dir=tmp_path / "models",
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "HTTP Request" not in result.stdout  # the hub client's per-request log is quiet
    for number, (name, metric) in enumerate(BENCHMARKS.items()):
        run = sweep / f"{number}_custom_{name}"
        metrics = read_metrics(run)
        assert (metrics["dataset"], metrics["n_errors"], metrics[metric]) == (name, 0, 1.0)
        fingerprint = json.loads((run / "fingerprint.json").read_text(encoding="utf-8"))
        assert fingerprint["dataset"]["annotation_sha256"] == COMMIT  # the hub revision

        evaluated = run_cli(
            f"dataset={name}",
            f"predictions={run / 'predictions.csv'}",
            f"hydra.run.dir={tmp_path / 'evaluate' / name}",
            module="runners.evaluate",
            cwd=tmp_path,
            cache_dir=tmp_path / "models",
            env=env,
        )
        assert evaluated.returncode == 0, evaluated.stdout[-3000:]
        assert read_metrics(tmp_path / "evaluate" / name)[metric] == 1.0

    # A sample's image is a cell of the run's table: its report shows it where the split is
    # at hand (the cache the run read), and says so where it is not.
    docvqa = sweep / "0_custom_docvqa_val"
    html = (docvqa / "report.html").read_text(encoding="utf-8")
    assert "data:image/jpeg;base64," in html and 'alt="image[0]"' in html
    elsewhere = run_cli(
        str(docvqa),
        "--out",
        str(tmp_path / "elsewhere"),
        module="runners.report",
        cwd=tmp_path,
        cache_dir=tmp_path,
        env=offline_env(tmp_path / "no_cache"),
    )
    assert elsewhere.returncode == 0, elsewhere.stdout
    html = (tmp_path / "elsewhere" / "report.html").read_text(encoding="utf-8")
    assert "data:image/jpeg" not in html
    assert "(image image[0] of the dataset's table: not loaded here)" in html
    # OCRBench's categories, one per row of metrics_by_group.csv; ChartQA's two halves.
    groups = pd.read_csv(sweep / "3_custom_ocrbench" / "metrics_by_group.csv")
    assert "Handwritten Mathematical Expression Recognition" in set(groups["question_type"])
    halves = pd.read_csv(sweep / "2_custom_chartqa_test" / "metrics_by_doc_class.csv")
    assert dict(zip(halves["doc_class"], halves["n"], strict=True)) == {
        "augmented_test": 2,
        "human_test": 2,
    }

    report = run_cli(str(sweep), module="runners.report", cwd=tmp_path, cache_dir=tmp_path)
    assert report.returncode == 0, report.stdout
    header = "| model | " + " | ".join(f"{n} ({m})" for n, m in BENCHMARKS.items()) + " |"
    assert header in report.stdout.splitlines()
    assert "| custom | 1.0000 | 1.0000 | 1.0000 | 1.0000 | 1.0000 |" in report.stdout
    results = pd.read_csv(sweep / "results.csv")
    assert list(results["model"]) == ["custom"] and results.iloc[0, 1:].tolist() == [1.0] * 5


def test_a_tiny_model_runs_every_benchmark_offline(offline_cache, model_cache, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "--multirun",
        ALL,
        "model=tiny_qwen2_vl",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        cache_dir=model_cache,
        env=offline_env(offline_cache["hf_home"]),
    )
    assert result.returncode == 0, result.stdout[-3000:]
    for number, (name, metric) in enumerate(BENCHMARKS.items()):
        metrics = read_metrics(sweep / f"{number}_tiny_qwen2_vl_{name}")
        assert metrics["n_errors"] == 0 and 0.0 <= metrics[metric] <= 1.0


def test_a_benchmark_not_in_the_cache_offline_is_one_line(tmp_path) -> None:
    result = run_cli(
        "dataset=docvqa_val",
        "model=dummy",
        cwd=tmp_path,
        cache_dir=tmp_path / "models",
        env=offline_env(tmp_path / "empty_hf_home"),
    )
    assert result.returncode == 2, result.stdout[-3000:]
    [error] = error_lines(result.stdout)
    assert "[ERROR] cannot load dataset.hf.path='lmms-lab-encoder/DocVQA' (DocVQA): " in error
    assert error.endswith(
        "offline (HF_HUB_OFFLINE=1) it must be in the datasets cache (HF_HOME or "
        "HF_DATASETS_CACHE): load it once where there is internet and copy the cache"
    )
