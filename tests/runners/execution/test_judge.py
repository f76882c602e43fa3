"""A model as judge (runners/execution/judge.py): verdicts asked once per answer and cached,
a judge's garbage counted as judge_error, its cost apart; with a known-verdict judge in
process and one served by runners.serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.execution.judge import Template, _parsed
from tests.support.helpers import (
    error_lines,
    read_metrics,
    read_predictions,
    run_cli,
    run_until_killed,
    serve_in_thread,
    write_dataset,
)
from tests.support.wrappers import KnownVerdicts

# The judged model echoes its prompt: questions whose answer is the question itself are right.
ECHO = ["model=custom", "model.class_path=tests.support.wrappers:PromptEcho"]


def dataset(root: Path, count: int = 8) -> Path:
    rows = [
        {"question": f"q{index}?", "answer": f"q{index}?" if index % 2 == 0 else "no"}
        for index in range(count)
    ]
    return write_dataset(root, rows, images=True)


def test_the_template_is_filled_and_versioned() -> None:
    template = Template.load("judge_v1")
    prompt = template.prompt("What is {x}?", '["10", "ten"]', "10")
    assert 'Question: What is {x}?\nReference answer: ["10", "ten"]\nCandidate answer: 10' in prompt
    assert template.fingerprint()["version"] == 1 and len(template.fingerprint()["sha256"]) == 64


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        ('{"score": 1, "reason": "same"}', {"judge": 1.0, "judge_reason": "same"}),
        ('{"score": 0.5, "reason": ""}', {"judge": 0.5, "judge_reason": ""}),
        ("fine", {"judge_error": "the verdict is not JSON: 'fine'"}),
        ('{"score": 7}', {"judge_error": "the verdict has no score from 0 to 1: '{\"score\": 7}'"}),
        (
            '{"score": true}',
            {"judge_error": "the verdict has no score from 0 to 1: '{\"score\": true}'"},
        ),
        ("[1]", {"judge_error": "the verdict has no score from 0 to 1: '[1]'"}),
    ],
)
def test_a_verdict_is_a_score_or_a_judge_error(text, columns) -> None:
    assert _parsed(text) == columns


def judged_run(tmp_path: Path, cache: Path, base_url: str, *extra: str):
    return run_cli(
        *ECHO,
        "dataset=vlmhyperbench",
        f"dataset.root={tmp_path / 'data'}",
        "runner.metrics=[exact_match,judge]",
        "judge=openai_compatible",
        f"judge.model.init_params.base_url={base_url}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *extra,
        cwd=tmp_path,
        cache_dir=cache,
        env={"MODEL_INTERFACE_CACHE": str(cache)},
    )


@pytest.mark.slow
def test_a_served_judge_is_asked_once_per_answer_across_resumes(tmp_path) -> None:
    dataset(tmp_path / "data")
    asked = tmp_path / "asked.txt"
    cache = tmp_path / "cache"
    judge = KnownVerdicts("judge", asked_file=str(asked))
    with serve_in_thread(judge, "judge") as base_url:
        first = judged_run(tmp_path, cache, base_url, "runner.limit=4")
        assert first.returncode == 0, first.stdout[-3000:]
        assert len(asked.read_text().splitlines()) == 4
        # Resumed with more samples: only the new answers are judged.
        more = judged_run(tmp_path, cache, base_url)
        assert more.returncode == 0, more.stdout[-3000:]
        assert len(asked.read_text().splitlines()) == 8
        # Scored again from scratch (its metrics gone): every verdict comes from the cache.
        (tmp_path / "run" / "metrics.csv").unlink()
        again = judged_run(tmp_path, cache, base_url)
        assert again.returncode == 0, again.stdout[-3000:]
        assert len(asked.read_text().splitlines()) == 8
        # So does scoring the answers without their model.
        evaluated = run_cli(
            f"predictions={tmp_path / 'run' / 'predictions.csv'}",
            "dataset=vlmhyperbench",
            f"dataset.root={tmp_path / 'data'}",
            "runner.metrics=[judge]",
            "judge=openai_compatible",
            f"judge.model.init_params.base_url={base_url}",
            f"hydra.run.dir={tmp_path / 'evaluated'}",
            module="runners.evaluate",
            cwd=tmp_path,
            cache_dir=cache,
        )
        assert evaluated.returncode == 0, evaluated.stdout[-3000:]
        assert len(asked.read_text().splitlines()) == 8
        assert read_metrics(tmp_path / "evaluated")["judge"] == 0.5
    rows = read_predictions(tmp_path / "run")
    assert rows["judge"].tolist() == [1.0, 0.0] * 4
    assert rows["judge_reason"].tolist() == ["same", "different"] * 4
    assert rows["exact_match"].tolist() == rows["judge"].tolist()
    metrics = read_metrics(tmp_path / "run")
    assert metrics["judge"] == 0.5
    assert (metrics["judge_calls"], metrics["judge_cached"], metrics["judge_errors"]) == (0, 8, 0)
    fingerprint = json.loads((tmp_path / "run" / "fingerprint.json").read_text())
    assert fingerprint["judge"]["class"] == "model_interface.backends.openai_api:OpenAIModel"
    assert fingerprint["judge"]["template"]["name"] == "judge_v1"


@pytest.mark.slow
def test_a_run_killed_while_answering_and_resumed_asks_the_judge_once_per_sample(
    tmp_path,
) -> None:
    dataset(tmp_path / "data", count=16)
    asked = tmp_path / "asked.txt"
    judge = [
        "runner.metrics=[judge]",
        "judge=custom",  # a local judge, in the run's own process
        "judge.model.class_path=tests.support.wrappers:KnownVerdicts",
        f"+judge.model.init_params.asked_file={asked}",
    ]
    common = [
        "model=custom",
        "model.class_path=tests.support.wrappers:SlowDummy",
        "+model.init_params.delay_s=0.2",
        "runner.batch_size=2",
        "dataset=vlmhyperbench",
        f"dataset.root={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *judge,
    ]
    cache, answers = tmp_path / "cache", tmp_path / "run" / "predictions.csv"
    run_until_killed(*common, cwd=tmp_path, cache_dir=cache, answers=answers, lines=4)
    assert not asked.exists()  # killed before scoring: nothing judged yet
    resumed = run_cli(*common, cwd=tmp_path, cache_dir=cache)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert len(asked.read_text().splitlines()) == 16
    assert read_metrics(tmp_path / "run")["judge_calls"] == 16


@pytest.mark.slow
def test_a_judge_that_answers_garbage_gives_judge_errors_not_scores(tmp_path) -> None:
    dataset(tmp_path / "data", count=4)
    with serve_in_thread(KnownVerdicts("judge", garbage=True), "judge") as base_url:
        result = judged_run(tmp_path, tmp_path / "cache", base_url)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = read_predictions(tmp_path / "run")
    assert (rows["judge"] == "").all()
    assert rows["judge_error"].tolist() == ["the verdict is not JSON: 'I think it is fine.'"] * 4
    metrics = read_metrics(tmp_path / "run")
    assert (metrics["judge_calls"], metrics["judge_errors"]) == (4, 4)
    assert metrics["exact_match"] == 0.5  # the other metrics are untouched


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["runner.metrics=[judge]"],
            "runner.metrics has judge but no judge is set; choose one, e.g. "
            "judge=openai_compatible judge.model.init_params.base_url=URL",
        ),
        (
            ["judge=openai_compatible"],
            "a judge is set but runner.metrics does not ask for it; add judge to "
            "runner.metrics, or drop judge=...",
        ),
    ],
)
def test_a_judge_half_configured_is_one_line(tmp_path, args, message) -> None:
    result = run_cli("model=dummy", *args, cwd=tmp_path, cache_dir=tmp_path / "cache")
    assert result.returncode == 2
    [line] = error_lines(result.stdout)
    assert line.endswith(message)
