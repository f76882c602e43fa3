"""Reports of real run directories made by the dummy model: one run, a pair, a sweep, a browser."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
import statistics
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from model_interface.backends.dummy import DummyModel
from runners.config.paths import PROJECT_ROOT
from runners.metrics.summaries import percentile
from runners.report import main
from runners.reports.compare import compare, mcnemar_exact_p, same_answer
from runners.reports.page import SCRIPT, Page
from runners.reports.read import read_run
from runners.reports.write import worst_samples, write_report
from runners.run import run_experiment
from tests.support.browser import chromium, open_page
from tests.support.helpers import make_config, read_metrics, run_cli, write_dataset, write_jsonl
from tests.support.wrappers import PromptEcho

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
    write_dataset(
        root, [{"question": f"what is {i}?", "answer": answer} for i, answer in enumerate(answers)]
    )
    return root


def run_dummy(cache: Path, out: Path, dataset: Path, *overrides: str) -> Path:
    cfg = make_config(
        cache, "model=dummy", "dataset=vlmhyperbench", f"dataset.root={dataset}", *overrides
    )
    run_experiment(cfg, out)
    return out


def test_a_run_writes_its_report_with_its_numbers(model_cache, known_flips, tmp_path) -> None:
    run_dir = run_dummy(
        model_cache, tmp_path / "alpha", known_flips, "model.init_params.system_prompt=alpha"
    )
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
    alpha = run_dummy(
        model_cache, tmp_path / "alpha", known_flips, "model.init_params.system_prompt=alpha"
    )
    beta = run_dummy(
        model_cache, tmp_path / "beta", known_flips, "model.init_params.system_prompt=beta"
    )
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


def test_two_runs_count_the_answers_they_share(model_cache, known_flips, tmp_path, capsys):
    first = run_dummy(model_cache, tmp_path / "first", known_flips)
    second = run_dummy(model_cache, tmp_path / "second", known_flips)
    # The same run twice, then three answers of the second changed as a backend might: one cut
    # inside a multi-byte character as transformers decodes it, two with other words.
    predictions = second / "predictions.csv"
    rows = list(csv.DictReader(predictions.open(encoding="utf-8", newline="")))
    answers = [row["prediction"] for row in rows]
    rows[1]["prediction"] += "\ufffd"
    rows[3]["prediction"] = answers[3][:4] + "something else"
    rows[5]["prediction"] = answers[5] + " indeed"
    with predictions.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    answers = compare(read_run(first), read_run(second)).answers
    assert (answers.compared, answers.as_written, answers.same) == (QUESTIONS, 7, 8)
    assert (answers.same_token_count, answers.token_counts_known) == (QUESTIONS, QUESTIONS)
    assert [(a["sample_index"], index) for a, _, index in answers.different] == [
        ("3", 4),
        ("5", len(rows[5]["prediction"]) - len(" indeed")),
    ]

    assert main([str(first), str(second), "--out", str(tmp_path / "report")]) == 0
    summary, _ = capsys.readouterr().out.splitlines()
    assert summary == "answers: 8 of 10 the same (1 after normalisation), 2 different"
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "- **the same as written**: 7" in markdown
    assert "- **the same after normalisation**: 8" in markdown
    assert "| sample | first different character | A from there | B from there |" in markdown
    assert "| 3 | 4 |" in markdown and "| something else |" in markdown


def test_the_same_answer_forgives_only_how_a_backend_writes() -> None:
    assert same_answer("naïve", "naïve") and same_answer("na\ufffd", "na")  # a cut character
    assert same_answer('{"a": [1, 2]}', '{"a":[1,2]}')  # grammar whitespace
    assert same_answer('[\n  "x"\n]', '["x"]')
    assert not same_answer('{"a": 1}', '{"a": 1.0}') and not same_answer('{"a": 1}', '{"a": true}')
    assert not same_answer('{"a": 1, "b": 2}', '{"b": 2, "a": 1}')  # key order is content
    assert not same_answer(" 42", "42") and not same_answer("42", "42.0")  # not JSON containers
    assert not same_answer("Paris", "paris") and not same_answer("a\ufffdb", "ab")


def test_a_run_from_before_score_guides_reads_as_it_did(model_cache, known_flips, tmp_path):
    run_dir = run_dummy(model_cache, tmp_path / "run", known_flips)
    guide = json.loads((run_dir / "score_guide.json").read_text())
    assert (guide["rank_by"], guide["correctness"]) == ("anls", "exact_match")
    assert guide["higher_is_better"]["cer"] is False
    (run_dir / "score_guide.json").unlink()  # as runs made by model-interface 0.2
    old = read_run(run_dir)
    assert (old.rank_by, old.guide.correctness, old.higher_is_better("cer")) == (
        "anls",
        "exact_match",
        False,
    )
    assert "metrics_by_doc_class.csv" in old.tables


@pytest.mark.parametrize(
    ("guide", "problem"),
    [
        ('{"higher_is_better": {}, "group_files": ["../../secret.csv"]}',
         "group_files must be file names ending in .csv, got ['../../secret.csv']"),
        ('{"higher_is_better": {}, "group_files": ["/etc/passwd"]}',
         "group_files must be file names ending in .csv, got ['/etc/passwd']"),
        ('{"higher_is_better": {}, "rank_by": 3}',
         "rank_by and correctness must be column names or null"),
        ("[1, 2]", "it has no higher_is_better object"),
        ("{not json",
         "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ],
)  # fmt: skip
def test_a_damaged_score_guide_is_refused_in_one_line(
    model_cache, known_flips, tmp_path, capsys, guide, problem
) -> None:
    run_dir = run_dummy(model_cache, tmp_path / "run", known_flips)
    (tmp_path / "secret.csv").write_text("secret\nnever shown\n")
    (run_dir / "score_guide.json").write_text(guide)
    assert main([str(run_dir), "--out", str(tmp_path / "report")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: {run_dir / 'score_guide.json'} is damaged ({problem}); delete it to read the "
        "run with the built-in tasks' defaults"
    )
    assert not (tmp_path / "report").exists()


def test_mcnemar_is_the_exact_binomial_tail() -> None:
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert 0 < mcnemar_exact_p(4000, 5000) < 1e-20  # big counts stay exact, no overflow


def test_two_runs_of_different_datasets_are_refused(model_cache, known_flips, tmp_path, capsys):
    other = write_dataset(tmp_path / "other", [{"question": "q?"}], images=True)
    first = run_dummy(model_cache, tmp_path / "first", known_flips)
    # Of one name but not one content: no pair to compare sample by sample.
    second = run_dummy(model_cache, tmp_path / "second", other, "dataset.name=data")
    assert main([str(first), str(second), "--out", str(tmp_path / "report")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: first and second ran on different datasets")
    assert not (tmp_path / "report").exists()


def test_runs_of_several_datasets_get_a_results_table(model_cache, known_flips, tmp_path, capsys):
    other = write_dataset(tmp_path / "other", [{"question": "q?", "answer": "no"}], images=True)
    first = run_dummy(model_cache, tmp_path / "first", known_flips)
    second = run_dummy(model_cache, tmp_path / "second", other)
    assert main([str(first), str(second), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == [
        "| model | data (anls) | other (anls) |",
        "| --- | --- | --- |",
        f"| dummy | {read_metrics(first)['anls']:.4f} | 0.0000 |",
    ]
    results = (tmp_path / "report" / "results.csv").read_text(encoding="utf-8").splitlines()
    assert results[0] == "model,data (anls),other (anls)"
    assert "Results: each run's headline score" in (tmp_path / "report" / "report.md").read_text(
        encoding="utf-8"
    )


def test_a_directory_without_a_finished_run_is_refused(tmp_path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "is not a finished run (no metrics.csv or predictions.csv)" in line


@pytest.mark.slow
def test_a_sweep_reports_its_jobs_side_by_side(model_cache, tmp_path) -> None:
    result = run_cli(
        "--multirun",
        "model=dummy",
        "runner.limit=3,5",
        "run_name=s",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
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


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="needs chromium (CI installs it)")
def test_the_report_loads_in_a_real_browser(model_cache, known_flips, tmp_path) -> None:
    alpha = run_dummy(
        model_cache, tmp_path / "alpha", known_flips, "model.init_params.system_prompt=alpha"
    )
    beta = run_dummy(
        model_cache, tmp_path / "beta", known_flips, "model.init_params.system_prompt=beta"
    )
    page = open_page(alpha / "report.html")
    assert page.errors == []
    assert "exact_match\t0.3" in page.text and "samples\t10" in page.text
    assert png_size(page.screenshot) == (1280, 1600)
    (tmp_path / "report.png").write_bytes(page.screenshot)

    html_path, _ = write_report([read_run(alpha), read_run(beta)], tmp_path / "pair")
    page = open_page(html_path)
    assert page.errors == []
    assert "right in A only\t3" in page.text and "right in B only\t4" in page.text


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="needs chromium (CI installs it)")
def test_the_browser_check_sees_a_broken_page(tmp_path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text('<p>x</p><img src="missing.png"><script>notDefined()</script>')
    errors = open_page(broken).errors
    assert any("notDefined is not defined" in error for error in errors)
    assert any("missing.png" in error for error in errors)


# --- A report shows images from inside the dataset root only -----------------------------------

OUTSIDE = "(image outside the dataset root)"


def shown_images(report: str) -> dict[str, str]:
    """Each sample of report.html, and what stands for its image: "img" or the note shown."""
    found = re.findall(
        r'<div class="sample"><div>(.*?)</div><div class="text">'
        r"<b>sample ([^<]*)</b>",
        report,
    )
    return {sample: "img" if shown.startswith("<img ") else shown for shown, sample in found}


def thumbnail_colours(report: str) -> list[tuple[int, int, int]]:
    """The colour of the top left pixel of every thumbnail report.html embeds."""
    colours = []
    for data in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', report):
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            colours.append(image.convert("RGB").getpixel((0, 0)))
    return colours


def is_white(colour: tuple[int, int, int]) -> bool:
    return min(colour) > 230  # white stays white in a JPEG within a few levels; red has no green


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    """A folder beside the dataset holding red pictures, which a report must never show (the
    datasets' own pictures are white): if one were read, its thumbnail would be red."""
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    for secret in (outside / "secret.png", outside / "folder" / "secret.png"):
        Image.new("RGB", (40, 30), "red").save(secret)
    return outside


def test_a_thumbnail_is_made_only_inside_the_dataset_root(model_cache, secrets, tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for name in ("inside.png", "second.png"):
        Image.new("RGB", (40, 30), "white").save(root / "images" / name)
    (root / "images" / "alias.png").symlink_to("inside.png")  # a link that stays inside
    (root / "images" / "link.png").symlink_to(secrets / "secret.png")
    (root / "folder").symlink_to(secrets / "folder", target_is_directory=True)
    (root / "images" / "hop.png").symlink_to(secrets / "secret.png")
    (root / "images" / "chain.png").symlink_to("hop.png")  # a chain: inside, then out
    entries = [
        "images/inside.png",
        str(secrets / "secret.png"),  # absolute, elsewhere
        "../outside/secret.png",
        "images/link.png",
        "folder/secret.png",  # in a linked folder
        "images/chain.png",
        json.dumps(["../outside/secret.png", "images/inside.png"]),  # outside first
        json.dumps(["images/second.png", "../outside/secret.png"]),  # outside second
        "images/alias.png",
        str(root / "images" / "inside.png"),  # absolute, inside: the runner reads it too
    ]
    write_dataset(root, [{"image_path": entry} for entry in entries])
    run_dir = run_dummy(model_cache, tmp_path / "run", root)

    errors = {row["sample_id"]: row["error"] for row in read_run(run_dir).rows}
    assert all("leaves the dataset root" in errors[str(i)] for i in range(1, 8))
    assert errors["0"] == errors["8"] == errors["9"] == ""
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    # Only a sample's first image is shown: sample 7's is inside.
    inside = {"0", "7", "8", "9"}
    assert shown_images(report) == {
        str(i): "img" if str(i) in inside else OUTSIDE for i in range(len(entries))
    }
    colours = thumbnail_colours(report)
    assert len(colours) == 4 and all(map(is_white, colours)), colours


def test_a_hand_made_predictions_file_shows_no_image_from_elsewhere(
    model_cache, known_flips, secrets, tmp_path
) -> None:
    run_dir = run_dummy(model_cache, tmp_path / "run", known_flips)
    predictions = run_dir / "predictions.csv"
    with predictions.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["image_paths"] = json.dumps([str(secrets / "secret.png")])
    rows[1]["image_paths"] = json.dumps(["../outside/secret.png"])
    with predictions.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    assert main([str(run_dir), "--out", str(tmp_path / "edited")]) == 0
    report = (tmp_path / "edited" / "report.html").read_text(encoding="utf-8")
    assert shown_images(report) == {
        "0": OUTSIDE,
        "1": OUTSIDE,
        **{str(i): "img" for i in range(2, QUESTIONS)},
    }
    assert all(map(is_white, thumbnail_colours(report)))

    # A run that recorded no dataset root (no fingerprint.json): no image can be vouched for.
    (run_dir / "fingerprint.json").unlink()
    assert main([str(run_dir), "--out", str(tmp_path / "rootless")]) == 0
    report = (tmp_path / "rootless" / "report.html").read_text(encoding="utf-8")
    assert shown_images(report) == {str(i): OUTSIDE for i in range(QUESTIONS)}
    assert "data:image/jpeg" not in report


# --- Values from data, a model or a config are shown, never rendered ---------------------------

ATTACKS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "[x](javascript:alert(1))",
]
# Each attack as report.md writes it outside a code span: HTML's characters as entities,
# Markdown's link syntax backslash-escaped.
ESCAPED = [
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&lt;img src=x onerror=alert(1)&gt;",
    "&lt;svg onload=alert(1)&gt;",
    r"\[x\](javascript:alert(1))",
]
MODEL_NAME = f"{ATTACKS[0]} {ATTACKS[1]}"
DATASET_NAME = f"{ATTACKS[2]} {ATTACKS[3]} *em*"
HOSTILE_MODEL = ("model=custom", "model.class_path=tests.runners.reports.test_report:HostileEcho")


class HostileEcho(PromptEcho):
    """Answers with its prompt, from a framework with a hostile name."""

    framework = f"{ATTACKS[2]} `f` a|b"


def hostile_dataset(root: Path) -> Path:
    """A JSONL dataset of one sample per attack, in every text it has. The even samples'
    answer is their prompt: a model that echoes the prompt gets them right."""
    rows = []
    for index, attack in enumerate(ATTACKS):
        prompt = f"{attack} `p` *p* a|b\n<b>line</b>"
        rows.append(
            {
                "id": f"{index} {attack} `id` a|b\nnext",
                "image": f"{index}.png",
                "prompt": prompt,
                "answer": prompt if index % 2 == 0 else f"{attack} `r` a|b\r\nline",
                "doc_class": f"{attack} `c` a|b\nline",
                "question_type": f"{ATTACKS[(index + 1) % 4]} | ```",
            }
        )
    return write_jsonl(root, rows)


def outside_code(markdown: str) -> str:
    """report.md without its fenced blocks and code spans, where text is shown as written."""
    unfenced = re.sub(r"(?ms)^(`{3,})$.*?^\1$", "", markdown)
    # Left to right, so an escaped backtick is not taken for the start of a code span.
    return re.sub(r"\\.|`[^`\n]*`", lambda m: m[0] if m[0][0] == "\\" else "", unfenced)


class Rendered(HTMLParser):
    """Markdown rendered by a CommonMark renderer that lets raw HTML through, as many do: its
    tags with their attributes, its text, and the cells of every table row, by table."""

    def __init__(self, markdown: str) -> None:
        from markdown_it import MarkdownIt

        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text = ""
        self.tables: list[list[int]] = []
        self.feed(MarkdownIt("commonmark").enable("table").render(markdown))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append(0)
        elif tag in ("th", "td"):
            self.tables[-1][-1] += 1

    def handle_data(self, data: str) -> None:
        self.text += data


PLAIN_MARKUP = {
    "h1",
    "h2",
    "h3",
    "p",
    "em",
    "strong",
    "ul",
    "li",
    "code",
    "pre",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "details",
    "summary",
}


def check_markdown(markdown: str) -> None:
    """report.md: no attack outside code, and rendered, plain markup that shows every attack
    as written, with tables as even as their header (a pipe in a value adds no cell)."""
    outside = outside_code(markdown)
    assert not any(attack in outside for attack in ATTACKS)
    unescaped = re.sub(r"\\.", "", outside)
    assert set(re.findall(r"</?(\w+)", unescaped)) <= {"details", "summary"}  # the page's own
    assert "[" not in unescaped and "]" not in unescaped  # no link can start or end
    try:
        rendered = Rendered(markdown)
    except ImportError:  # no renderer here: the escaped text was checked above
        return
    assert {tag for tag, _ in rendered.tags} <= PLAIN_MARKUP
    assert all(attrs == [] for _, attrs in rendered.tags)  # no href, src, onload, onerror
    assert rendered.tables and all(len(set(table)) == 1 for table in rendered.tables)
    assert all(attack in rendered.text for attack in ATTACKS)


def check_html(report: str) -> None:
    """report.html shows every attack as text: its own sorting script is its only script, no
    link or outside source, and the attributes a value fills (data-v) hold numbers only."""
    assert report.count("<script") == 1 and f"<script>{SCRIPT}</script>" in report
    assert "href" not in report
    for attack in ATTACKS[:3]:
        assert attack not in report and html.escape(attack) in report
    assert set(re.findall(r"<(\w+)", report)) <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "h3",
        "p",
        "div",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "b",
        "del",
        "ins",
        "img",
        "svg",
        "rect",
        "text",
        "details",
        "summary",
        "pre",
        "script",
    }
    assert all(src.startswith("data:image/") for src in re.findall(r'src="([^"]*)"', report))
    values = re.findall(r'data-v="([^"]*)"', report)
    number = r"-?(\d+(\.\d*)?(e[-+]\d+)?|inf|nan)"  # a float's repr
    assert values and all(re.fullmatch(number, value) for value in values), values


@pytest.mark.slow
def test_report_md_renders_nothing_from_data_models_or_config(model_cache, tmp_path) -> None:
    root = hostile_dataset(tmp_path / "data")
    # The system prompt (which the echo ignores) puts four backticks in a row in the config.
    result = run_cli(
        *HOSTILE_MODEL,
        f"model.init_params.model_name='{MODEL_NAME}'",
        "model.init_params.system_prompt='```` x'",
        "dataset=jsonl",
        f"dataset.root={root}",
        f"dataset.name='{DATASET_NAME}'",
        "run_name=hostile",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    run_dir = tmp_path / "outputs" / "hostile"
    markdown = (run_dir / "report.md").read_text(encoding="utf-8")
    lines = markdown.splitlines()
    model, dataset = f"{ESCAPED[0]} {ESCAPED[1]}", rf"{ESCAPED[2]} {ESCAPED[3]} \*em\*"
    assert lines[0] == f"# {model} on {dataset}: hostile"
    assert f"- **model**: {model}" in lines and f"- **dataset**: {dataset}" in lines
    assert rf"- **framework**: {ESCAPED[2]} \`f\` a\|b" in lines
    # A sample: its id escaped, its texts in code spans, on one line, backticks as quotes.
    sample = next(line for line in lines if line.startswith("- sample 0 "))
    assert sample.startswith(rf"- sample 0 {ESCAPED[0]} \`id\` a\|b next (anls 1): prompt `")
    assert sample.endswith(f"prediction `{ATTACKS[0]} 'p' *p* a|b <b>line</b>`")
    # A table cell: one cell, however many pipes its value has.
    assert rf"| {ESCAPED[1]} \`c\` a\|b line |" in markdown
    # The config holds four backticks in a row: its fence has five.
    config = markdown.split("<summary>config (.hydra/config.yaml)</summary>\n\n", 1)[1]
    assert config.startswith("`````\n") and "system_prompt: '```` x'" in config
    check_markdown(markdown)
    check_html((run_dir / "report.html").read_text(encoding="utf-8"))

    # Two runs of it: the samples that flipped, side by side, a section per run.
    cfg = make_config(
        model_cache,
        *HOSTILE_MODEL,
        "model.init_params.model_name=echo",
        "dataset=jsonl",
        f"dataset.root={root}",
        f"dataset.name='{DATASET_NAME}'",
        "dataset.prompt_template='B {prompt}'",
    )
    run_experiment(cfg, tmp_path / "other")
    assert main([str(run_dir), str(tmp_path / "other"), "--out", str(tmp_path / "pair")]) == 0
    markdown = (tmp_path / "pair" / "report.md").read_text(encoding="utf-8")
    flips = markdown.split("### Right in A, wrong in B (2)\n\n", 1)[1]
    assert flips.startswith(rf"- sample 0 {ESCAPED[0]} \`id\` a\|b next: reference `")
    check_markdown(markdown)
    check_html((tmp_path / "pair" / "report.html").read_text(encoding="utf-8"))


def test_a_preformatted_block_cannot_be_closed_by_its_text() -> None:
    page = Page("t")
    text = "a: 1\n```\n<script>alert(1)</script>\n`````\n[x](javascript:alert(1))"
    page.preformatted("<img src=x onerror=alert(1)>\nsecond line", text)
    markdown = page.markdown()
    assert markdown == (
        "# t\n\n<details><summary>&lt;img src=x onerror=alert(1)&gt; second line</summary>\n\n"
        f"``````\n{text}\n``````\n\n</details>\n"
    )
    try:
        rendered = Rendered(markdown)
    except ImportError:
        return
    assert [tag for tag, _ in rendered.tags] == ["h1", "details", "summary", "pre", "code"]
    assert text in rendered.text


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="needs chromium (CI installs it)")
def test_a_hostile_report_runs_nothing_in_a_real_browser(model_cache, tmp_path) -> None:
    root = hostile_dataset(tmp_path / "data")
    cfg = make_config(
        model_cache,
        *HOSTILE_MODEL,
        f"model.init_params.model_name='{MODEL_NAME}'",
        "dataset=jsonl",
        f"dataset.root={root}",
    )
    run_experiment(cfg, tmp_path / "run")
    page = open_page(tmp_path / "run" / "report.html")
    assert page.errors == []  # an <img src=x> on the page would fail to load, and say so
    assert all(attack in page.text for attack in ATTACKS)
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return
    markdown = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    rendered = tmp_path / "report_md.html"
    rendered.write_text(MarkdownIt("commonmark").enable("table").render(markdown))
    page = open_page(rendered)
    assert page.errors == [] and all(attack in page.text for attack in ATTACKS)


# --- A report that can't be written ------------------------------------------------------------


def report_command(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m runners.report ARGS``, its stdout and stderr apart."""
    return subprocess.run(
        [sys.executable, "-m", "runners.report", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_an_unwritable_out_is_one_line_and_exit_1(model_cache, known_flips, tmp_path) -> None:
    # The tests run as root, which writes through permission bits, so these places are ones
    # nobody can write: a folder inside a regular file, a file where a folder stands.
    run_dir = run_dummy(model_cache, tmp_path / "run", known_flips)
    advice = "free space or fix the permissions, or write the report elsewhere with --out DIR"
    (tmp_path / "a_file").write_text("not a folder")
    result = report_command(str(run_dir), "--out", str(tmp_path / "a_file" / "sub"))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"error: cannot write {tmp_path / 'a_file' / 'sub'}: Not a directory; {advice}"
    ]
    (tmp_path / "taken" / "report.html").mkdir(parents=True)
    result = report_command(str(run_dir), "--out", str(tmp_path / "taken"))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"error: cannot write {tmp_path / 'taken' / 'report.html'}: Is a directory; {advice}"
    ]
    assert [path.name for path in (tmp_path / "taken").iterdir()] == ["report.html"]  # no .tmp


# --- One percentile for metrics.csv and the report ---------------------------------------------


def test_percentile_interpolates_between_the_nearest_values() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.95) == pytest.approx(3.85)
    assert percentile([7.0], 0.95) == 7.0 and math.isnan(percentile([], 0.5))
    assert percentile(range(91), 0.7) == 63  # 0.7 * 90 is 62.99999999999999 in floats
    values = [0.31, 0.05, 0.12, 0.9, 0.44, 0.27, 0.61, 0.58]
    assert percentile(values, 0.5) == statistics.median(values)  # what metrics.csv had
    inclusive = statistics.quantiles(values, n=100, method="inclusive")
    assert percentile(values, 0.95) == pytest.approx(inclusive[94], rel=1e-15)
    page = Page("t")
    page.histogram([4.0, 1.0, 3.0, 2.0], "call_s")
    assert "call_s: 4 samples, median 2.5 s, p95 3.85 s, max 4 s" in page.markdown()


def test_the_report_shows_the_call_percentiles_of_metrics_csv(model_cache, tmp_path) -> None:
    # Pictures of different sizes, one per call: the dummy model takes longer on larger ones,
    # so the calls differ in time and the median of six lies between two of them.
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for index, side in enumerate((8, 200, 500, 900, 1400, 2000)):
        Image.new("RGB", (side, side), "white").save(root / "images" / f"{index}.png")
    write_dataset(root, [{"question": f"q{index}?"} for index in range(6)])
    run_dir = run_dummy(model_cache, tmp_path / "run", root, "runner.batch_size=1")
    metrics = read_metrics(run_dir)
    markdown = (run_dir / "report.md").read_text(encoding="utf-8")
    assert (
        f"6 samples, median {metrics['call_p50_s']:.4g} s, p95 {metrics['call_p95_s']:.4g} s"
    ) in markdown
