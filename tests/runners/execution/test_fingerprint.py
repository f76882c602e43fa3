"""Resuming is only allowed into a run of the same model on the same questions, and the numbers
a resumed run writes are those of one uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.execution.fingerprint import differences
from runners.run import RunnerError, run_experiment
from tests.support.helpers import (
    REPO_ROOT,
    error_lines,
    make_config,
    read_metrics,
    read_predictions,
    run_cli,
    write_dataset,
)


@pytest.mark.slow
def test_another_model_into_the_same_run_name_is_refused_before_it_loads(
    model_cache: Path, tmp_path: Path
) -> None:
    first = run_cli(
        "run_name=x", "model=dummy", "runner.limit=4", cwd=tmp_path, cache_dir=model_cache
    )
    assert first.returncode == 0, first.stdout
    second = run_cli("run_name=x", "model=tiny_llava", cwd=tmp_path, cache_dir=model_cache)
    assert second.returncode == 2
    run_dir = tmp_path / "outputs" / "x"
    (line,) = error_lines(second.stdout)
    assert line.endswith(
        f"{run_dir} holds answers from a different configuration (model.class: "
        "'model_interface.backends.dummy:DummyModel' -> 'model_interface.backends.hf:HFModel'; "
        "model.init_params.dtype: (not set) -> 'float32'; model.init_params.max_new_tokens: 64 "
        f"-> 16; and 1 more); choose another run_name (or hydra.run.dir) for this one, or "
        f"delete {run_dir} to start over"
    )
    assert "tiny-llava (Hugging Face)" not in second.stdout  # refused before loading
    assert len(read_predictions(run_dir)) == 4 and set(read_predictions(run_dir)["model"]) == {
        "dummy"
    }


@pytest.mark.slow
def test_another_dataset_into_the_same_run_name_is_refused(model_cache, tmp_path) -> None:
    base = ["run_name=x", "model=dummy", "runner.limit=4"]
    assert run_cli(*base, cwd=tmp_path, cache_dir=model_cache).returncode == 0
    other = write_dataset(tmp_path / "other", [{}, {}], images=True)
    result = run_cli(
        *base, "dataset=vlmhyperbench", f"dataset.root={other}", cwd=tmp_path, cache_dir=model_cache
    )
    assert result.returncode == 2
    (line,) = error_lines(result.stdout)
    assert "holds answers from a different configuration (dataset.annotation_sha256: '" in line
    assert f"dataset.root: '{tmp_path / 'outputs' / 'x'}" not in line
    assert f"-> '{other}'" in line  # the root differs too
    assert len(read_predictions(tmp_path / "outputs" / "x")) == 4  # nothing appended


def test_other_filters_or_an_edited_annotation_file_are_refused(model_cache, tmp_path) -> None:
    root = write_dataset(tmp_path / "data", [{}, {}, {}], images=True)
    base = ["model=dummy", "dataset=vlmhyperbench", f"dataset.root={root}"]
    run_experiment(make_config(model_cache, *base), tmp_path / "run")
    with pytest.raises(
        RunnerError, match=r"\(dataset.filters.doc_class: \(not set\) -> \['form'\]\)"
    ):
        run_experiment(make_config(model_cache, *base, "dataset.doc_class=form"), tmp_path / "run")
    annotation = root / "annotation.csv"
    annotation.write_text(annotation.read_text(encoding="utf-8-sig").replace("42", "43"))
    with pytest.raises(RunnerError, match=r"\(dataset.annotation_sha256: '[0-9a-f]{64}' -> "):
        run_experiment(make_config(model_cache, *base), tmp_path / "run")


def test_settings_that_do_not_change_answers_may_change_on_resume(model_cache, tmp_path):
    base = ["model=dummy", "runner.limit=4"]
    run_experiment(make_config(model_cache, *base), tmp_path / "run")
    row = run_experiment(
        make_config(
            model_cache,
            "model=dummy",
            "runner.limit=8",
            "runner.batch_size=2",
            f"model.init_params.cache_dir={tmp_path / 'elsewhere'}",
        ),
        tmp_path / "run",
    )
    assert (row["n_samples"], row["answered_now"]) == (8, 4)


def test_a_directory_without_answers_is_taken_over(model_cache, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "fingerprint.json").write_text(json.dumps({"model": {"class": "old:Model"}}))
    (run_dir / "predictions.csv").write_text("sample_id,prediction\r\n")  # killed before a row
    row = run_experiment(make_config(model_cache, "model=dummy", "runner.limit=2"), run_dir)
    assert row["n_samples"] == 2


def test_answers_without_a_fingerprint_are_refused(model_cache, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_experiment(make_config(model_cache, "model=dummy", "runner.limit=2"), run_dir)
    (run_dir / "fingerprint.json").unlink()
    with pytest.raises(RunnerError, match=r"holds answers but no fingerprint\.json"):
        run_experiment(make_config(model_cache, "model=dummy"), run_dir)


def test_a_metric_added_on_resume_is_computed_over_every_row(model_cache, tmp_path) -> None:
    run_dir = tmp_path / "run"
    first = make_config(
        model_cache, "model=dummy", "runner.limit=4", "runner.metrics=[exact_match]"
    )
    more = make_config(
        model_cache, "model=dummy", "runner.limit=8", "runner.metrics=[exact_match,cer]"
    )
    run_experiment(first, run_dir)
    row = run_experiment(more, run_dir)
    whole = run_experiment(more, tmp_path / "whole")
    predictions = read_predictions(run_dir)
    assert len(predictions) == 8 and (predictions["cer"] != "").all()
    assert row["cer"] == pytest.approx(predictions["cer"].astype(float).mean())
    assert row["cer"] == whole["cer"] and row["n_samples"] == whole["n_samples"] == 8


def test_a_resume_with_nothing_left_to_do_writes_the_same_figures(model_cache, tmp_path):
    run_dir = tmp_path / "run"
    first = run_experiment(make_config(model_cache, "model=dummy"), run_dir)
    # Finished: its metrics row is read back as it was returned, types included.
    assert run_experiment(make_config(model_cache, "model=dummy"), run_dir) == first
    # Not finished (its metrics.csv gone): scored again, nothing answered.
    (run_dir / "metrics.csv").unlink()
    again = run_experiment(make_config(model_cache, "model=dummy"), run_dir)
    assert again["answered_now"] == 0 and first["answered_now"] == 48
    same = [
        "n_samples",
        "n_errors",
        "model_s",
        "s_per_sample",
        "samples_per_s",
        "call_p50_s",
        "call_p95_s",
        "prompt_tokens",
        "completion_tokens",
        "tokens_per_s",
        "exact_match",
        "anls",
        "cer",
        "wer",
    ]
    assert {key: again[key] for key in same} == {key: first[key] for key in same}
    assert read_metrics(run_dir)["samples_per_s"] == pytest.approx(first["samples_per_s"])


def test_differences_name_every_changed_leaf() -> None:
    saved = {"model": {"class": "a:A", "init_params": {"x": 1, "y": [1]}}}
    current = {"model": {"class": "a:A", "init_params": {"x": 2, "z": "new"}}}
    assert differences(saved, current) == [
        "model.init_params.x: 1 -> 2",
        "model.init_params.y: [1] -> (not set)",
        "model.init_params.z: (not set) -> 'new'",
    ]
    assert differences(saved, saved) == []


def test_a_run_made_by_the_last_release_resumes(model_cache, tmp_path) -> None:
    """tests/data/run_made_by_0_2_0: ``python -m runners.run model=dummy runner.limit=4`` as
    main wrote it on 2026-12-05 (before runners/plan.py, scoring.py and score_guide.json), its
    dataset root written as {DATASET_ROOT}. Raised to 6 samples, it answers the 2 new ones only
    and keeps the 4 it had."""
    import shutil

    from runners.config.paths import PROJECT_ROOT

    made = REPO_ROOT / "tests" / "data" / "run_made_by_0_2_0"
    root = shutil.copytree(PROJECT_ROOT / "data" / "sample_docs", tmp_path / "sample_docs")
    run_dir = shutil.copytree(made, tmp_path / "run")
    fingerprint = (run_dir / "fingerprint.json").read_text(encoding="utf-8")
    (run_dir / "fingerprint.json").write_text(fingerprint.replace("{DATASET_ROOT}", str(root)))
    old = read_predictions(run_dir)

    cfg = make_config(model_cache, "model=dummy", "runner.limit=6", f"dataset.root={root}")
    row = run_experiment(cfg, run_dir)
    assert (row["status"], row["answered_now"], row["n_samples"]) == ("ok", 2, 6)
    new = read_predictions(run_dir)
    assert new["prediction"].tolist()[:4] == old["prediction"].tolist()
    assert json.loads((run_dir / "score_guide.json").read_text())["rank_by"] == "anls"
