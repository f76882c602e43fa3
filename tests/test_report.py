"""Reports of real run directories made by the dummy model: one run, a pair, a sweep, a browser."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pandas as pd
import pytest

from model_interface.backends.dummy import DummyModel
from runners.report import compare, main, mcnemar_exact_p, read_run, worst_samples, write_report
from runners.run import run_experiment
from tests.browser import chromium, open_page
from tests.helpers import make_config, run_cli, write_dataset

QUESTIONS = 10


def dummy_answer(image: Path, question: str, system_prompt: str) -> str:
    return DummyModel(model_name="dummy", system_prompt=system_prompt).predict_on_image(
        str(image), question
    )


@pytest.fixture
def known_flips(tmp_path: Path) -> Path:
    """A dataset the dummy model gets right on questions 0-2 with the system prompt "alpha",
    on 3-6 with "beta", and never on 7-9: "beta" against "alpha" flips 3 + 4 samples."""
    questions = [{"question": f"what is {i}?"} for i in range(QUESTIONS)]
    root = write_dataset(tmp_path / "data", questions, images=True)
    answers = []
    for index in range(QUESTIONS):
        image, question = root / f"images/{index}.png", f"what is {index}?"
        prompt = "alpha" if index < 3 else "beta" if index < 7 else "gamma"
        answers.append(dummy_answer(image, question, prompt) if index < 7 else "no")
    write_dataset(root, [{"question": f"what is {i}?", "answer": answer}
                         for i, answer in enumerate(answers)])  # fmt: skip
    return root


def run_dummy(cache: Path, out: Path, dataset: Path, *overrides: str) -> Path:
    cfg = make_config(cache, "model=dummy", "dataset=vlmhyperbench", f"dataset.root={dataset}",
                      *overrides)  # fmt: skip
    run_experiment(cfg, out)
    return out


def test_a_run_writes_its_report_with_its_numbers(model_cache, known_flips, tmp_path) -> None:
    run_dir = run_dummy(model_cache, tmp_path / "alpha", known_flips,
                        "model.init_params.system_prompt=alpha")  # fmt: skip
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    markdown = (run_dir / "report.md").read_text(encoding="utf-8")
    metrics = pd.read_csv(run_dir / "metrics.csv").iloc[0]
    assert metrics["exact_match"] == pytest.approx(0.3)
    assert "| exact_match | 0.3 |" in markdown and "| anls |" in markdown
    assert "metrics_by_group.csv" in markdown and "Call times" in markdown
    # Worst first: the 7 wrong samples, then the right ones, each with its image embedded.
    worst = worst_samples(read_run(run_dir), 7)
    assert sorted(int(row["sample_index"]) for row in worst) == list(range(3, 10))
    shown = re.findall(r"<b>sample (\d+)</b>", html)
    assert shown[:3] == ["7", "8", "9"]  # "no": ANLS 0; 3-6 are near misses (ANLS > 0)
    assert sorted(shown[3:7]) == ["3", "4", "5", "6"] and shown[7:] == ["0", "1", "2"]
    assert html.count('src="data:image/jpeg;base64,') == 10
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert "<del>" in html and "<ins>" in html  # the differences are marked


def test_two_runs_flip_exactly_the_samples_they_differ_on(model_cache, known_flips, tmp_path):
    alpha = run_dummy(model_cache, tmp_path / "alpha", known_flips,
                      "model.init_params.system_prompt=alpha")  # fmt: skip
    beta = run_dummy(model_cache, tmp_path / "beta", known_flips,
                     "model.init_params.system_prompt=beta")  # fmt: skip
    pair = compare(read_run(alpha), read_run(beta))
    assert pair.correctness == "exact_match" and pair.n_paired == QUESTIONS
    assert [row["sample_index"] for row, _ in pair.right_only_a] == ["0", "1", "2"]
    assert [row["sample_index"] for row, _ in pair.right_only_b] == ["3", "4", "5", "6"]
    assert pair.mcnemar_p == pytest.approx(mcnemar_exact_p(3, 4)) == 1.0
    exact = next(m for m in pair.metrics if m.name == "exact_match")
    assert (exact.mean_a, exact.mean_b) == (pytest.approx(0.3), pytest.approx(0.4))
    assert exact.low <= exact.difference <= exact.high

    assert main([str(alpha), str(beta), "--out", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "- **right in A only**: 3" in markdown and "- **right in B only**: 4" in markdown
    assert "### Right in A, wrong in B (3)" in markdown
    assert "### Right in B, wrong in A (4)" in markdown


def test_mcnemar_is_the_exact_binomial_tail() -> None:
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert 0 < mcnemar_exact_p(4000, 5000) < 1e-20  # big counts stay exact, no overflow


def test_two_runs_of_different_datasets_are_refused(model_cache, known_flips, tmp_path, capsys):
    other = write_dataset(tmp_path / "other", [{"question": "q?"}], images=True)
    first = run_dummy(model_cache, tmp_path / "first", known_flips)
    second = run_dummy(model_cache, tmp_path / "second", other)
    assert main([str(first), str(second), "--out", str(tmp_path / "report")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: first and second ran on different datasets")
    assert not (tmp_path / "report").exists()


def test_a_directory_without_a_finished_run_is_refused(tmp_path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "is not a finished run (no metrics.csv or predictions.csv)" in line


def test_a_sweep_reports_its_jobs_side_by_side(model_cache, tmp_path) -> None:
    result = run_cli("--multirun", "model=dummy", "runner.limit=3,5", "run_name=s",
                     cwd=tmp_path, cache_dir=model_cache)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    sweep = tmp_path / "outputs" / "multirun" / "s"
    markdown = (sweep / "report.md").read_text(encoding="utf-8")
    table = markdown.split("## Side by side", 1)[1]
    assert re.search(r"\| 0_dummy_sample_docs \| dummy \|.*\| ok \| 3 \|", table)
    assert re.search(r"\| 1_dummy_sample_docs \| dummy \|.*\| ok \| 5 \|", table)
    # Same dataset, two jobs: the pair section is there too (samples both answered: 3).
    assert "- **samples in both**: 3" in markdown
    # The command line reads a sweep's directory as its jobs.
    assert main([str(sweep), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.html").stat().st_size > 10_000


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(chromium() is None, reason="needs chromium (CI installs it)")
def test_the_report_loads_in_a_real_browser(model_cache, known_flips, tmp_path) -> None:
    alpha = run_dummy(model_cache, tmp_path / "alpha", known_flips,
                      "model.init_params.system_prompt=alpha")  # fmt: skip
    beta = run_dummy(model_cache, tmp_path / "beta", known_flips,
                     "model.init_params.system_prompt=beta")  # fmt: skip
    page = open_page(alpha / "report.html")
    assert page.errors == []
    assert "exact_match\t0.3" in page.text and "samples\t10" in page.text
    assert png_size(page.screenshot) == (1280, 1600)
    (tmp_path / "report.png").write_bytes(page.screenshot)

    html_path, _ = write_report([read_run(alpha), read_run(beta)], tmp_path / "pair")
    page = open_page(html_path)
    assert page.errors == []
    assert "right in A only\t3" in page.text and "right in B only\t4" in page.text


@pytest.mark.skipif(chromium() is None, reason="needs chromium (CI installs it)")
def test_the_browser_check_sees_a_broken_page(tmp_path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text('<p>x</p><img src="missing.png"><script>notDefined()</script>')
    errors = open_page(broken).errors
    assert any("notDefined is not defined" in error for error in errors)
    assert any("missing.png" in error for error in errors)
