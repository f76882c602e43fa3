"""Scoring without a model: a run's predictions.csv or a VLMHyperBench answers file, against a
dataset, with other metrics or another task."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pandas as pd
import pytest

from runners.evaluate import evaluate
from runners.run import RunnerError, run_experiment
from tests.support.helpers import (
    error_lines,
    make_config,
    read_metrics,
    read_predictions,
    run_cli,
    write_dataset,
    write_jsonl,
)

QUALITY = ["exact_match", "anls", "cer", "wer", "cer_corpus", "wer_corpus"]


@pytest.fixture
def finished_run(model_cache, tmp_path):
    run_experiment(
        make_config(model_cache, "model=dummy", "runner.metrics=[exact_match]"), tmp_path / "run"
    )
    return tmp_path / "run"


def test_rescoring_a_run_with_other_metrics_equals_a_run_with_them(
    model_cache, tmp_path, finished_run
) -> None:
    cfg = make_config(
        model_cache, f"+predictions={finished_run / 'predictions.csv'}", config_name="evaluate"
    )
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
    cfg = make_config(
        model_cache,
        f"+predictions={finished_run / 'answers.csv'}",
        "runner.metrics=[cer,bleu]",
        config_name="evaluate",
    )
    row = evaluate(cfg, tmp_path / "scored")
    direct = run_experiment(
        make_config(model_cache, "model=dummy", "runner.metrics=[cer,bleu]"), tmp_path / "direct"
    )
    assert row["cer"] == direct["cer"] and row["bleu"] == direct["bleu"]
    assert row["model"] == "" and pd.isna(row["model_s"])  # an answers file has no timing
    assert row["n_input_errors"] == 0 and pd.isna(row["samples_per_s"])
    answers = pd.read_csv(tmp_path / "scored" / "answers.csv", sep=";", encoding="utf-8-sig")
    assert answers["id"].tolist() == list(range(48))


def write_answers(path, rows) -> None:
    path.write_text(
        "\ufeffid;model_answer\n" + "".join(f"{i};{a}\n" for i, a in rows), encoding="utf-8"
    )


@pytest.mark.slow
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
    result = run_cli(
        f"predictions={answers}",
        "dataset=vlmhyperbench",
        f"dataset.root={root}",
        module="runners.evaluate",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout
    (line,) = error_lines(result.stdout)
    assert message in line


def test_a_file_of_another_kind_is_refused(model_cache, tmp_path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    cfg = make_config(model_cache, f"+predictions={other}", config_name="evaluate")
    with pytest.raises(RunnerError, match=r"is neither a predictions\.csv .* nor an answers file"):
        evaluate(cfg, tmp_path / "scored")


@pytest.mark.slow
def test_the_command_line_writes_under_outputs_evaluate(model_cache, tmp_path, finished_run):
    result = run_cli(
        f"predictions={finished_run / 'answers.csv'}",
        module="runners.evaluate",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    (out,) = (tmp_path / "outputs" / "evaluate").iterdir()
    assert {"predictions.csv", "metrics.csv", "answers.csv"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_a_bad_job_of_an_evaluate_sweep_ends_alone(model_cache, tmp_path, finished_run) -> None:
    """One job's file is missing: it says so in one line, the next job still scores, and the
    sweep exits with the bad job's status."""
    good = finished_run / "answers.csv"
    result = run_cli(
        "--multirun",
        f"predictions={tmp_path / 'missing.csv'},{good}",
        "hydra.sweep.dir=sweep",
        module="runners.evaluate",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout[-3000:]
    (line,) = error_lines(result.stdout)
    assert "missing.csv" in line
    assert not (tmp_path / "sweep" / "0" / "metrics.csv").exists()
    assert (tmp_path / "sweep" / "1" / "metrics.csv").is_file()


# The end of every refusal of answers made for other samples: what to do instead.
OTHERWISE = (
    "or, if the answers do belong to these samples, score the answers.csv written beside the "
    "predictions.csv instead (id;model_answer: matched by row, nothing else checked)"
)


def questions(folder, **changes) -> Path:
    """A JSONL dataset named ``questions`` of three samples (``a``, ``b`` with two acceptable
    answers, ``c``); ``changes`` replace a sample's keys, e.g. ``b={"answer": "11"}``."""
    rows = [
        {"id": "a", "image": "a.png", "prompt": "Total?", "answer": "42"},
        {"id": "b", "image": "b.png", "prompt": "Date?", "answer": ["10", "ten"]},
        {"id": "c", "image": "c.png", "prompt": "Number?", "answer": "7"},
    ]
    return write_jsonl(
        folder / "questions", [{**row, **changes.get(row["id"], {})} for row in rows]
    )


def run_on(model_cache, root, output_dir, *overrides: str) -> Path:
    cfg = make_config(
        model_cache, "model=dummy", "dataset=jsonl", f"dataset.root={root}", *overrides
    )
    run_experiment(cfg, output_dir)
    return output_dir


def evaluate_on(model_cache, answers, root, output_dir, *overrides: str) -> dict:
    cfg = make_config(
        model_cache,
        f"+predictions={answers}",
        "dataset=jsonl",
        f"dataset.root={root}",
        *overrides,
        config_name="evaluate",
    )
    return evaluate(cfg, output_dir)


def rewrite(path: Path, change) -> None:
    """predictions.csv with ``change(row)`` applied to each row."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(change(row) for row in rows)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"prompt": "Seller?"},
            "predictions.csv line 3: sample 'b' has prompt 'Date?' in the file, but task=vqa asks "
            "'Seller?'; the answers were made for other prompts: choose the dataset and task the "
            "run used (dataset=..., dataset.prompt_template=..., dataset.prompt_collection=..., "
            f"task=... and its options), {OTHERWISE}",
        ),
        (
            {"answer": "11"},
            """predictions.csv line 3: sample 'b' has reference '["10", "ten"]' in the file, but """
            "dataset 'questions' has '11'; the answers were made for other samples: choose the "
            f"dataset they were made for (dataset=..., dataset.root=...), {OTHERWISE}",
        ),
    ],
)
def test_a_predictions_file_made_for_other_samples_with_the_same_ids_is_refused(
    model_cache, tmp_path, change, message
) -> None:
    run = run_on(model_cache, questions(tmp_path / "made_for"), tmp_path / "run")
    other = questions(tmp_path / "other", b=change)
    with pytest.raises(RunnerError) as refused:
        evaluate_on(model_cache, run / "predictions.csv", other, tmp_path / "refused")
    assert str(refused.value) == message
    # What the message offers instead: the run's answers.csv, matched by row alone.
    row = evaluate_on(model_cache, run / "answers.csv", other, tmp_path / "scored")
    assert row["n_samples"] == 3


def test_empty_or_respaced_columns_contradict_nothing(model_cache, tmp_path) -> None:
    root = questions(tmp_path)
    run = run_on(model_cache, root, tmp_path / "run")
    blanks = {
        "a": {"prompt": "", "reference": ""},  # an older run; an unlabelled copy
        "b": {"reference": '["10","ten"]'},
    }  # the same list in other JSON spacing
    rewrite(run / "predictions.csv", lambda row: {**row, **blanks.get(row["sample_id"], {})})
    row = evaluate_on(model_cache, run / "predictions.csv", root, tmp_path / "scored")
    direct = read_metrics(run)
    assert {name: row[name] for name in QUALITY} == {name: direct[name] for name in QUALITY}


def test_a_dataset_name_of_its_own_refuses_only_where_nothing_else_shows_the_samples(
    model_cache, tmp_path, caplog
) -> None:
    root = questions(tmp_path)
    run = run_on(model_cache, root, tmp_path / "run", "dataset.name=renamed")
    predictions = run / "predictions.csv"
    # Its prompts and references are this dataset's: the name alone is no contradiction.
    with caplog.at_level(logging.WARNING, logger="runners.evaluate"):
        row = evaluate_on(model_cache, predictions, root, tmp_path / "scored")
    assert row["dataset"] == "questions"
    assert (
        "predictions.csv names dataset 'renamed', not 'questions'; its prompts and "
        "references are this dataset's, so it is scored as 'questions'"
    ) in caplog.messages
    # Without them, the name is all the file says about its samples.
    rewrite(predictions, lambda row: {**row, "prompt": "", "reference": ""})
    with pytest.raises(RunnerError) as refused:
        evaluate_on(model_cache, predictions, root, tmp_path / "refused")
    assert str(refused.value) == (
        "predictions.csv line 2: sample 'a' has dataset 'renamed' in the file, but the dataset "
        "is 'questions', and the file's prompt and reference columns are empty, so nothing "
        "shows its answers belong to it: choose the dataset they were made for "
        f"(dataset.name=renamed if it is this one, renamed), {OTHERWISE}"
    )
    row = evaluate_on(model_cache, predictions, root, tmp_path / "named", "dataset.name=renamed")
    assert row["dataset"] == "renamed" and row["n_samples"] == 3


def test_a_classification_run_is_checked_against_its_labels_and_classes(model_cache, tmp_path):
    def pages(folder, classes):
        return write_jsonl(
            folder,
            [
                {"id": str(index), "image": f"{index}.png", "prompt": "Which page?", "answer": name}
                for index, name in enumerate(classes)
            ],
        )

    made_for = pages(tmp_path / "made_for", ["invoice", "receipt", "invoice"])
    run = run_on(model_cache, made_for, tmp_path / "run", "task=classification")
    predictions = run / "predictions.csv"
    row = evaluate_on(
        model_cache, predictions, made_for, tmp_path / "scored", "task=classification"
    )
    assert row["accuracy"] == read_metrics(run)["accuracy"]
    # Each prompt spans two lines of the file: the second row starts on line 4.
    other = pages(tmp_path / "other", ["invoice", "invoice", "receipt"])
    with pytest.raises(RunnerError) as refused:
        evaluate_on(
            model_cache, predictions, other, tmp_path / "other_classes", "task=classification"
        )
    assert str(refused.value) == (
        "predictions.csv line 4: sample '1' has reference 'receipt' in the file, but dataset "
        "'other' has 'invoice'; the answers were made for other samples: choose the dataset "
        f"they were made for (dataset=..., dataset.root=...), {OTHERWISE}"
    )
    # Other labels make another prompt; the excerpts start near where the prompts differ.
    with pytest.raises(RunnerError) as refused:
        evaluate_on(
            model_cache,
            predictions,
            made_for,
            tmp_path / "other_labels",
            "task=classification",
            "task.labels=[invoice,passport,receipt]",
        )
    assert str(refused.value) == (
        "predictions.csv line 2: sample '0' has prompt ...'ly one of: invoice, receipt.' in the "
        "file, but task=classification asks ...'ly one of: invoice, passport, receipt.'; the "
        "answers were made for other prompts: choose the dataset and task the run used "
        "(dataset=..., dataset.prompt_template=..., dataset.prompt_collection=..., task=... and "
        f"its options), {OTHERWISE}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["predictions.csv", "answers.csv"])
def test_a_file_that_is_not_utf8_is_refused_in_one_line(model_cache, tmp_path, name) -> None:
    root = write_dataset(tmp_path / "data", [{}, {}, {}], images=True)
    header = "sample_id,prediction\n" if name == "predictions.csv" else "id;model_answer\n"
    separator = header[9] if name == "predictions.csv" else ";"
    data = f"{header}0{separator}42\n1{separator}café\n".encode("latin-1")
    (tmp_path / name).write_bytes(data)
    result = run_cli(
        f"predictions={tmp_path / name}",
        "dataset=vlmhyperbench",
        f"dataset.root={root}",
        module="runners.evaluate",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout
    (line,) = error_lines(result.stdout)
    assert line.endswith(
        f"{name} line 3 is not UTF-8 (byte 0xe9); re-save it "
        "as UTF-8 (with or without BOM) and run the same command again"
    )
    assert "Traceback" not in result.stdout


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "predictions.csv",
            'sample_id,prediction\n0,42\n1,"never closed\n2,7\n',
            "predictions.csv line 3 is not valid CSV (unexpected end of data): a quote that is "
            "never closed, or text after a closing quote; fix the quoting, or remove the line if "
            "the file was cut short",
        ),
        (
            "answers.csv",
            'id;model_answer\n0;"42" and more\n1;x\n',
            "answers.csv line 2 is not valid CSV (';' expected after '\"'): a quote that is never "
            "closed, or text after a closing quote; fix the quoting, or remove the line if the "
            "file was cut short",
        ),
        (
            "answers.csv",
            "id;model_answer\n0;42\n1;ten; or 10\n",
            "answers.csv line 3: the header has 2 fields, this line 3; quote a value that holds "
            "';', and complete or remove a line cut short",
        ),
        (
            "predictions.csv",
            "sample_id,prediction\n0,42\n1\n",
            "predictions.csv line 3: the header has 2 fields, this line 1; quote a value that "
            "holds ',', and complete or remove a line cut short",
        ),
    ],
)
def test_a_malformed_file_is_refused_not_read_in_part(
    model_cache, tmp_path, name, text, message
) -> None:
    root = write_dataset(tmp_path / "data", [{}, {}, {}], images=True)
    (tmp_path / name).write_text(text, encoding="utf-8")
    cfg = make_config(
        model_cache,
        f"+predictions={tmp_path / name}",
        "dataset=vlmhyperbench",
        f"dataset.root={root}",
        config_name="evaluate",
    )
    with pytest.raises(RunnerError) as refused:
        evaluate(cfg, tmp_path / "scored")
    assert str(refused.value) == message


@pytest.mark.slow
@pytest.mark.parametrize("name", ["predictions.csv", "answers.csv"])
def test_an_answer_longer_than_the_csv_modules_field_limit_is_read_whole(
    model_cache, tmp_path, name
) -> None:
    root = write_dataset(tmp_path / "data", [{}, {}, {}], images=True)
    long = "x" * 200_000  # Python's csv refuses fields over 131,072 characters by default
    separator = "," if name == "predictions.csv" else ";"
    header = "sample_id,prediction" if name == "predictions.csv" else "id;model_answer"
    (tmp_path / name).write_text(
        f"{header}\n0{separator}42\n1{separator}{long}\n", encoding="utf-8"
    )
    result = run_cli(
        f"predictions={tmp_path / name}",
        "dataset=vlmhyperbench",
        f"dataset.root={root}",
        "run_name=long",
        module="runners.evaluate",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    scored = read_predictions(tmp_path / "outputs" / "evaluate" / "long")
    assert scored["prediction"].tolist() == ["42", long]
