"""Scoring without a model: a run's predictions.csv or a VLMHyperBench answers file, against a
dataset, with other metrics or another task."""

from __future__ import annotations

import pandas as pd
import pytest

from runners.evaluate import evaluate
from runners.run import RunnerError, run_experiment
from tests.helpers import error_lines, make_config, run_cli, write_dataset

QUALITY = ["exact_match", "anls", "cer", "wer", "cer_corpus", "wer_corpus"]


@pytest.fixture
def finished_run(model_cache, tmp_path):
    run_experiment(make_config(model_cache, "model=dummy", "runner.metrics=[exact_match]"),
                   tmp_path / "run")  # fmt: skip
    return tmp_path / "run"


def test_rescoring_a_run_with_other_metrics_equals_a_run_with_them(
    model_cache, tmp_path, finished_run
) -> None:
    cfg = make_config(model_cache, f"+predictions={finished_run / 'predictions.csv'}",
                      config_name="evaluate")  # fmt: skip
    row = evaluate(cfg, tmp_path / "scored")
    direct = run_experiment(make_config(model_cache, "model=dummy"), tmp_path / "direct")
    assert {name: row[name] for name in QUALITY} == {name: direct[name] for name in QUALITY}
    assert row["n_samples"] == 48 and row["model"] == "dummy"
    assert row["model_s"] == pytest.approx(pd.read_csv(finished_run / "metrics.csv")["model_s"][0])
    scored = pd.read_csv(tmp_path / "scored" / "predictions.csv")
    assert {"anls", "cer"} <= set(scored.columns)
    groups = pd.read_csv(tmp_path / "scored" / "metrics_by_group.csv")
    pd.testing.assert_frame_equal(groups, pd.read_csv(tmp_path / "direct" / "metrics_by_group.csv"))


def test_an_answers_file_made_elsewhere(model_cache, tmp_path, finished_run) -> None:
    cfg = make_config(model_cache, f"+predictions={finished_run / 'answers.csv'}",
                      "runner.metrics=[cer,bleu]", config_name="evaluate")  # fmt: skip
    row = evaluate(cfg, tmp_path / "scored")
    direct = run_experiment(make_config(model_cache, "model=dummy", "runner.metrics=[cer,bleu]"),
                            tmp_path / "direct")  # fmt: skip
    assert row["cer"] == direct["cer"] and row["bleu"] == direct["bleu"]
    assert row["model"] == "" and pd.isna(row["model_s"])  # an answers file has no timing
    assert row["n_input_errors"] == 0 and pd.isna(row["samples_per_s"])
    answers = pd.read_csv(tmp_path / "scored" / "answers.csv", sep=";", encoding="utf-8-sig")
    assert answers["id"].tolist() == list(range(48))


def write_answers(path, rows) -> None:
    path.write_text("\ufeffid;model_answer\n" + "".join(f"{i};{a}\n" for i, a in rows),
                    encoding="utf-8")  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(0, "42"), (7, "x")], "line 3: id 7 is no row of the annotation file (it has 3"),
        ([(0, "42"), ("first", "x")], "line 3: id 'first' is not a row number"),
        ([(0, "42"), (0, "43")], "answers sample '0' twice; keep one"),
    ],
)
def test_answers_that_fit_no_sample_are_refused(model_cache, tmp_path, rows, message) -> None:
    root = write_dataset(tmp_path / "data", [{}, {}, {}], images=True)
    answers = tmp_path / "answers.csv"
    write_answers(answers, rows)
    result = run_cli(f"predictions={answers}", "dataset=vlmhyperbench", f"dataset.root={root}",
                     module="runners.evaluate", cwd=tmp_path, cache_dir=model_cache,
                     timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stdout
    (line,) = error_lines(result.stdout)
    assert message in line


def test_a_file_of_another_kind_is_refused(model_cache, tmp_path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    cfg = make_config(model_cache, f"+predictions={other}", config_name="evaluate")
    with pytest.raises(RunnerError, match=r"is neither a predictions\.csv .* nor an answers file"):
        evaluate(cfg, tmp_path / "scored")


def test_the_command_line_writes_under_outputs_evaluate(model_cache, tmp_path, finished_run):
    result = run_cli(f"predictions={finished_run / 'answers.csv'}", module="runners.evaluate",
                     cwd=tmp_path, cache_dir=model_cache, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    (out,) = (tmp_path / "outputs" / "evaluate").iterdir()
    assert {"predictions.csv", "metrics.csv", "answers.csv"} <= {p.name for p in out.iterdir()}
