"""VLMHyperBench's own formats: prompt collections, system prompt files, the answers file, and
metrics aggregated over a group's texts as their evaluator does."""

from __future__ import annotations

import csv
from pathlib import Path

import jiwer
import pandas as pd
import pytest
import sacrebleu

from runners.metrics import bleu
from runners.metrics.summaries import CorpusErrorRates
from runners.run import PROJECT_ROOT, RunnerError, run_experiment
from tests.support.helpers import error_lines, make_config, read_predictions, run_cli, write_dataset

ECHO = [
    "model=custom",
    "model.class_path=tests.support.wrappers:PromptEcho",
    "model.init_params.model_name=echo",
]


def write_collection(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["prompt", "doc_class_question_type", "cer"])
        writer.writerows((prompt, key, "0.1") for prompt, key in rows)
    return path


@pytest.fixture
def passports(tmp_path: Path) -> Path:
    return write_dataset(
        tmp_path / "data",
        [
            {"doc_class": "passport", "question_type": "Номер паспорта", "question": "Номер?"},
            {"doc_class": "passport", "question_type": "Полное имя", "question": "Имя?"},
            {"doc_class": "snils", "question_type": "Номер", "question": "СНИЛС?"},
        ],
        images=True,
    )


def test_a_prompt_collection_replaces_each_question_by_its_key(model_cache, tmp_path, passports):
    collection = write_collection(
        tmp_path / "tuned.csv",
        [
            ("Напиши номер паспорта.", "passport Номер паспорта"),
            ("Напиши полное имя владельца.", "passport Полное имя"),
            ("Напиши номер СНИЛС.", "snils Номер"),
        ],
    )
    cfg = make_config(
        model_cache,
        *ECHO,
        "dataset=vlmhyperbench",
        f"dataset.root={passports}",
        f"dataset.prompt_collection={collection}",
    )
    run_experiment(cfg, tmp_path / "run")
    assert read_predictions(tmp_path / "run")["prompt"].tolist() == [
        "Напиши номер паспорта.",
        "Напиши полное имя владельца.",
        "Напиши номер СНИЛС.",
    ]


@pytest.mark.slow
def test_a_sample_without_a_prompt_in_the_collection_is_refused_before_the_model_loads(
    model_cache, tmp_path, passports
) -> None:
    only = [("Напиши номер паспорта.", "passport Номер паспорта")]
    collection = write_collection(tmp_path / "partial.csv", only)
    result = run_cli(
        "dataset=vlmhyperbench",
        f"dataset.root={passports}",
        f"dataset.prompt_collection={collection}",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=60,
    )
    assert result.returncode == 2
    (line,) = error_lines(result.stdout)
    assert line.endswith(
        "prompt collection partial.csv has no prompt for 'passport Полное имя' "
        "(annotation.csv line 3); it has 'passport Номер паспорта'"
    )
    # Samples filtered out need no prompt.
    cfg = make_config(
        model_cache,
        *ECHO,
        "dataset=vlmhyperbench",
        f"dataset.root={passports}",
        f"dataset.prompt_collection={collection}",
        'dataset.question_type="Номер паспорта"',
    )
    assert run_experiment(cfg, tmp_path / "filtered")["n_samples"] == 1


def test_a_collection_with_two_prompts_for_one_key_is_refused(model_cache, tmp_path, passports):
    collection = write_collection(
        tmp_path / "twice.csv", [("A", "snils Номер"), ("B", "snils Номер")]
    )
    cfg = make_config(
        model_cache,
        *ECHO,
        "dataset=vlmhyperbench",
        f"dataset.root={passports}",
        f"dataset.prompt_collection={collection}",
    )
    with pytest.raises(RunnerError, match=r"twice\.csv line 3: a second prompt for 'snils Номер'"):
        run_experiment(cfg, tmp_path / "run")


@pytest.mark.slow
def test_the_shipped_collections_run_as_a_sweep_axis(model_cache, tmp_path) -> None:
    result = run_cli(
        "--multirun",
        *ECHO,
        "dataset.prompt_collection=prompts/brief.csv,prompts/detailed.csv",
        'dataset.prompt_template="{prompt} {question}"',
        "runner.limit=2",
        "run_name=prompts",
        cwd=tmp_path,
        cache_dir=model_cache,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    sweep = tmp_path / "outputs" / "multirun" / "prompts"
    first, second = (
        read_predictions(sweep / job) for job in ("0_custom_sample_docs", "1_custom_sample_docs")
    )
    assert first.loc[0, "prompt"] == "Answer with the amount only. What is the subtotal?"
    assert second.loc[0, "prompt"].startswith("You are reading a scanned invoice.")


def test_a_system_prompt_from_a_text_file(model_cache, tmp_path) -> None:
    system = tmp_path / "system.txt"
    system.write_text("Отвечай кратко.\n", encoding="utf-8")
    cfg = make_config(
        model_cache,
        "model=dummy",
        f"+model.init_params.system_prompt_file={system}",
        "model.init_params.system_prompt=",
        "runner.limit=1",
    )
    run_experiment(cfg, tmp_path / "run")
    assert (
        "| Отвечай кратко. What is the subtotal?"
        in read_predictions(tmp_path / "run").loc[0, "prediction"]
    )
    from_file = f"+model.init_params.system_prompt_file={system}"
    both = make_config(model_cache, "model=dummy", from_file, "model.init_params.system_prompt=x")
    with pytest.raises(RunnerError, match="both system_prompt and system_prompt_file"):
        run_experiment(both, tmp_path / "both")
    missing = make_config(
        model_cache, "model=dummy", "+model.init_params.system_prompt_file=/no/such/file.txt"
    )
    with pytest.raises(RunnerError, match=r"cannot read model\.init_params\.system_prompt_file"):
        run_experiment(missing, tmp_path / "missing")


def test_a_relative_system_prompt_file_is_also_looked_for_in_the_dataset_root(
    model_cache, tmp_path
) -> None:
    """The README's example: the sample documents ship prompts/system.txt."""
    cfg = make_config(
        model_cache,
        "model=dummy",
        "runner.limit=1",
        "+model.init_params.system_prompt_file=prompts/system.txt",
    )
    run_experiment(cfg, tmp_path / "run")
    shipped = (PROJECT_ROOT / "data/sample_docs/prompts/system.txt").read_text().strip()
    answer = read_predictions(tmp_path / "run").loc[0, "prediction"]
    assert f"| {shipped} What is the subtotal?" in answer


def test_a_system_prompt_file_that_is_not_utf8_is_one_line(model_cache, tmp_path) -> None:
    system = tmp_path / "system.txt"
    system.write_bytes("Réponds brièvement.\n".encode("latin-1"))
    cfg = make_config(model_cache, "model=dummy", f"+model.init_params.system_prompt_file={system}")
    with pytest.raises(RunnerError) as refused:
        run_experiment(cfg, tmp_path / "run")
    assert str(refused.value) == (
        f"model.init_params.system_prompt_file {str(system)!r}: system.txt line 1 is not UTF-8 "
        "(byte 0xe9); re-save it as UTF-8"
    )


def test_every_run_writes_answers_in_their_format(model_cache, tmp_path) -> None:
    root = write_dataset(
        tmp_path / "data",
        [{"question": "line one\nline two; and more"}, {"question": "Имя?"}, {"question": "q"}],
        images=True,
    )
    cfg = make_config(model_cache, *ECHO, "dataset=vlmhyperbench", f"dataset.root={root}")
    run_experiment(cfg, tmp_path / "run")
    raw = (tmp_path / "run" / "answers.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfid;model_answer\r\n")
    answers = pd.read_csv(tmp_path / "run" / "answers.csv", sep=";", encoding="utf-8-sig")
    assert answers["id"].tolist() == [0, 1, 2]
    assert answers["model_answer"].tolist() == ["line one\nline two; and more", "Имя?", "q"]


# --- metrics over a group's texts ------------------------------------------------------------

PAIRS = [
    ("ОСИПОВ ИВАН", "ОСИПОВ ИВАН"),
    ("353-721-310 54", "353-721-31054"),
    ("12.03.1985", "12.03.1958"),
    ("  Москва, ул. Ленина  ", "Москва ул Ленина д 5"),
    ("a", "completely different and much longer"),
]


def test_corpus_cer_and_wer_equal_jiwer_over_lists() -> None:
    references, predictions = [r for r, _ in PAIRS], [p for _, p in PAIRS]
    rates = CorpusErrorRates()
    for prediction, reference in zip(predictions, references, strict=True):
        rates.add(prediction, reference)
    figures = rates.rates()
    assert figures["cer_corpus"] == pytest.approx(jiwer.cer(references, predictions))
    assert figures["wer_corpus"] == pytest.approx(jiwer.wer(references, predictions))
    # ... which is not the mean of the per-pair rates: long answers weigh more
    per_pair = [jiwer.cer(r, p) for r, p in PAIRS]
    assert figures["cer_corpus"] != pytest.approx(sum(per_pair) / len(per_pair))


def test_corpus_rates_take_the_closest_of_several_answers_and_count_empty_references() -> None:
    rates = CorpusErrorRates()
    rates.add("ten", ("10", "ten"))
    rates.add("x", "")
    assert rates.rates() == {"cer_corpus": 1 / 3, "wer_corpus": 1 / 1}


def test_bleu_equals_sacrebleus_corpus_score() -> None:
    predictions = ["the cat sat on the mat", "паспорт выдан отделом УФМС"]
    references = ["the cat sat on a mat", "паспорт выдан отделом УФМС России"]
    expected = sacrebleu.corpus_bleu(predictions, [references]).score
    assert bleu.score(predictions, references) == pytest.approx(expected)
    assert 0 < expected < 100


def test_metrics_by_group_add_the_corpus_rates_and_bleu(model_cache, tmp_path) -> None:
    rows = [
        {"question": "ОСИПОВ ИВАН", "answer": "ОСИПОВ ИВАН", "doc_class": "passport"},
        {"question": "353-721-31054", "answer": "353-721-310 54", "doc_class": "snils"},
        {"question": "12.03.1958", "answer": "12.03.1985", "doc_class": "snils"},
    ]
    root = write_dataset(tmp_path / "data", rows, images=True)
    cfg = make_config(
        model_cache,
        *ECHO,
        "dataset=vlmhyperbench",
        f"dataset.root={root}",
        "runner.metrics=[cer,bleu]",
    )
    row = run_experiment(cfg, tmp_path / "run")
    groups = pd.read_csv(tmp_path / "run" / "metrics_by_group.csv").set_index("doc_class")
    snils = [("353-721-310 54", "353-721-31054"), ("12.03.1985", "12.03.1958")]
    assert groups.loc["snils", "cer_corpus"] == pytest.approx(
        jiwer.cer([r for r, _ in snils], [p for _, p in snils])
    )
    assert groups.loc["passport", "cer_corpus"] == 0
    assert groups.loc["snils", "bleu"] == pytest.approx(
        sacrebleu.corpus_bleu([p for _, p in snils], [[r for r, _ in snils]]).score
    )
    everything = [(r["answer"], r["question"]) for r in rows]
    assert row["cer_corpus"] == pytest.approx(
        jiwer.cer([r for r, _ in everything], [p for _, p in everything])
    )
    assert "bleu" not in read_predictions(tmp_path / "run").columns  # a corpus figure only
