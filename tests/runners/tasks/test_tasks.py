"""The task layer: tasks found by name like models, a user's own task, the checks a task makes
before any model loads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runners.run import RunnerError, run_experiment
from runners.tasks import TASKS, make_task
from tests.support.helpers import (
    REPO_ROOT,
    error_lines,
    make_config,
    read_metrics,
    read_predictions,
    run_cli,
    write_jsonl,
)

PROMPT_LENGTH_TASK = '''
from runners.tasks.base import ScoreGuide, Tally, Task, TaskError
from model_interface.model_interface import PredictionRequest


class PromptLength(Task):
    """Asks for the prompt's length and scores the answer's length against it."""

    name = "prompt_length"

    def __init__(self, *, metric_names, unit="characters"):
        super().__init__(metric_names=metric_names)
        self.unit = unit

    def request(self, sample, images):
        return PredictionRequest(images, f"How many {self.unit} in: {sample.prompt}")

    @property
    def columns(self):
        return ["length_gap", "close"]

    def score(self, prediction, reference):
        gap = abs(len(prediction) - len(reference or ""))
        return {"length_gap": gap, "close": float(gap <= 45)}

    def score_guide(self):
        return ScoreGuide(
            higher_is_better={"length_gap": False, "close": True, "mean_length_gap": False},
            rank_by="length_gap",
            correctness="close",
            group_files=("gaps_by_class.csv",),
        )

    def tally(self, run_dir):
        return _Gaps()


class _Gaps(Tally):
    def __init__(self):
        self.gaps = []

    def add(self, row, reference):
        self.gaps.append(float(row["length_gap"]))

    def summary(self):
        return {"mean_length_gap": sum(self.gaps) / len(self.gaps)}

    def files(self):
        return {"gaps_by_class.csv": [{"gaps": len(self.gaps)}]}


class Picky(PromptLength):
    """Refuses every sample: with a TaskError as asked, or through a bug of its own."""

    def __init__(self, *, metric_names, refusal="task_error"):
        super().__init__(metric_names=metric_names)
        self.refusal = refusal

    def check(self, sample):
        if self.refusal == "task_error":
            raise TaskError(f"sample {sample.id!r} is not one picky takes")
        int("picky has a bug")
'''


@pytest.fixture
def user_task_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    package = tmp_path / "site" / "acme_tasks"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(PROMPT_LENGTH_TASK)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    saved = TASKS.state()
    yield tmp_path / "site"
    TASKS.restore(saved)
    for name in [module for module in sys.modules if module.startswith("acme_tasks")]:
        del sys.modules[name]


def test_a_misspelt_task_suggests_the_closest_name() -> None:
    with pytest.raises(ValueError, match=r"Task 'vq' is not registered\. Did you mean 'vqa'\?"):
        make_task({"name": "vq"}, ["anls"])


def test_options_a_task_does_not_take_are_named() -> None:
    with pytest.raises(ValueError, match=r"task 'vqa' can't take these options \['labels'\]"):
        make_task({"name": "vqa", "labels": ["a"]}, ["anls"])


def test_a_users_task_registered_by_path_runs_with_its_own_columns(
    user_task_package, model_cache, tmp_path
) -> None:
    TASKS.register("prompt_length", "acme_tasks.tasks:PromptLength")
    cfg = make_config(
        model_cache,
        "model=custom",
        "model.class_path=tests.support.wrappers:PromptEcho",
        "model.init_params.model_name=echo",
        "task.name=prompt_length",
        "+task.unit=words",
        "runner.limit=4",
    )
    row = run_experiment(cfg, tmp_path / "run")
    predictions = read_predictions(tmp_path / "run")
    assert predictions["prompt"].str.startswith("How many words in: ").all()
    assert "length_gap" in predictions.columns and row["task"] == "prompt_length"
    assert read_metrics(tmp_path / "run")["mean_length_gap"] == pytest.approx(
        predictions["length_gap"].astype(float).mean()
    )


@pytest.mark.slow
def test_a_users_task_found_through_its_entry_point(user_task_package, model_cache, tmp_path):
    dist_info = user_task_package / "acme_tasks-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tasks\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[model_interface.tasks]\nprompt_length = acme_tasks.tasks:PromptLength\n"
    )
    path = f"{user_task_package}:{REPO_ROOT}"
    result = run_cli(
        "model=custom",
        "model.class_path=tests.support.wrappers:PromptEcho",
        "model.init_params.model_name=echo",
        "task.name=prompt_length",
        "runner.limit=2",
        "run_name=by_entry_point",
        cwd=tmp_path,
        cache_dir=model_cache,
        env={"PYTHONPATH": path},
    )
    assert result.returncode == 0, result.stdout[-3000:]
    predictions = read_predictions(tmp_path / "outputs" / "by_entry_point")
    assert predictions["prompt"].str.startswith("How many characters in: ").all()


def test_a_report_reads_a_users_task_by_its_own_score_guide(
    user_task_package, model_cache, tmp_path
) -> None:
    """A task the report has never heard of: its worst samples ranked by its score (lower is
    better here), its flips counted on its correctness column, its own group file shown."""
    from runners.reports.compare import compare
    from runners.reports.read import read_run
    from runners.reports.write import worst_samples, write_report

    TASKS.register("prompt_length", "acme_tasks.tasks:PromptLength")
    runs = []
    for unit in ("characters", "words"):
        cfg = make_config(
            model_cache,
            "model=custom",
            "model.class_path=tests.support.wrappers:PromptEcho",
            "model.init_params.model_name=echo",
            "task.name=prompt_length",
            f"+task.unit={unit}",
        )
        run_experiment(cfg, tmp_path / unit)
        runs.append(read_run(tmp_path / unit))
    a, b = runs
    gaps = [int(row["length_gap"]) for row in a.rows]
    worst = worst_samples(a, 5)
    assert [int(row["length_gap"]) for row in worst] == sorted(gaps, reverse=True)[:5]

    pair = compare(a, b)
    close_a = {row["sample_id"] for row in a.rows if row["close"] == "1.0"}
    close_b = {row["sample_id"] for row in b.rows if row["close"] == "1.0"}
    assert pair.correctness == "close" and close_b - close_a  # the flips are worth counting
    assert {row["sample_id"] for row, _ in pair.right_only_a} == close_a - close_b
    assert {row["sample_id"] for _, row in pair.right_only_b} == close_b - close_a
    better = next(m for m in pair.metrics if m.name == "length_gap")
    assert better.mean_b < better.mean_a  # shorter prompts: smaller gaps, and lower is better

    _, markdown = write_report(runs, tmp_path / "report")
    text = markdown.read_text(encoding="utf-8")
    assert "then by length_gap (highest)" in text and "### gaps_by_class.csv" in text
    assert f"### Right in B, wrong in A ({len(close_b - close_a)})" in text


def test_a_task_error_is_one_line_and_a_bug_in_a_task_keeps_its_traceback(
    user_task_package, model_cache, tmp_path
) -> None:
    TASKS.register("picky", "acme_tasks.tasks:Picky")
    overrides = ["model=dummy", "task.name=picky"]
    with pytest.raises(RunnerError) as refused:
        run_experiment(make_config(model_cache, *overrides), tmp_path / "refused")
    assert str(refused.value) == "sample '0' is not one picky takes"
    with pytest.raises(ValueError, match="picky has a bug") as bug:
        run_experiment(make_config(model_cache, *overrides, "+task.refusal=bug"), tmp_path / "bug")
    assert not isinstance(bug.value, RunnerError)  # not turned into a config mistake


@pytest.mark.slow
def test_an_object_answer_under_task_vqa_is_refused_before_the_model_loads(
    model_cache, tmp_path
) -> None:
    root = write_jsonl(
        tmp_path / "data",
        [
            {"id": "a", "image": "a.png", "prompt": "q", "answer": "text"},
            {"id": "b", "image": "b.png", "prompt": "q", "answer": {"Фамилия": "ОСИПОВ"}},
        ],
    )
    result = run_cli(
        "dataset=jsonl", f"dataset.root={root}", cwd=tmp_path, cache_dir=model_cache, timeout=60
    )
    assert result.returncode == 2
    (line,) = error_lines(result.stdout)
    assert line.endswith(
        "sample 'b' has an object for its answer; task=vqa compares text "
        "answers (use task=kie for fields)"
    )
    with pytest.raises(RunnerError, match="has an object for its answer"):
        run_experiment(
            make_config(model_cache, "dataset=jsonl", f"dataset.root={root}"), tmp_path / "run"
        )


def test_the_task_is_part_of_the_fingerprint(user_task_package, model_cache, tmp_path) -> None:
    TASKS.register("prompt_length", "acme_tasks.tasks:PromptLength")
    base = [
        "model=custom",
        "model.class_path=tests.support.wrappers:PromptEcho",
        "model.init_params.model_name=echo",
        "runner.limit=2",
    ]
    run_experiment(make_config(model_cache, *base), tmp_path / "run")
    with pytest.raises(
        RunnerError,
        match=r"task.class: 'runners.tasks.vqa:VQATask' -> "
        r"'acme_tasks.tasks:PromptLength'",
    ):
        run_experiment(make_config(model_cache, *base, "task.name=prompt_length"), tmp_path / "run")


@pytest.mark.slow
def test_the_builtin_tasks_are_listed() -> None:
    assert "vqa" in TASKS.names()
    script = "import sys, runners.tasks; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.stdout.strip() == "False"
