"""Bring a VLMHyperBench benchmark over: its ``user_config.csv`` and ``vlm_base.csv`` become a Hydra
experiment that runs every row.

    python -m runners.import_vlmhyperbench USER_CONFIG VLM_BASE --data-dir DIR [--name NAME]
        [--out CONF_DIR] [--hf] [--hub-org ORG]

``--data-dir`` is their data folder: ``Datasets/<task>/<dataset>/``,
``PromptCollections/<task>/<file>.csv``, ``SystemPrompts/<file>.txt``. For every row of
``user_config.csv`` one job config is written to ``<out>/vlmhyperbench/<name>/job_<n>.yaml``,
and ``<out>/experiment/<name>.yaml`` sweeps over them, so that
``python -m runners.run --multirun experiment=<name>`` runs the whole benchmark (with
``hydra.searchpath=[file://<out>]`` where ``<out>`` is not this project's ``conf/``).

What maps to what:

* the model: the ``vlm_base.csv`` row of the same framework and model name, as
  ``model=custom model.class_path=<python_package>.<module>:<class_name>`` (their wrapper,
  installed); with ``--hf``, Hugging Face rows run on the built-in ``hf`` backend instead, from
  ``<org>/<model_name>`` on the hub (the org from the model family, or ``--hub-org``), with the
  project's model config for it where there is one, else a new ``<out>/model/`` config;
* the dataset: ``Datasets/<task>/<dataset>`` in the VLMHyperBench layout, with the row's
  ``filter_doc_class`` and ``filter_question_type``;
* ``prompt_collection`` (under ``PromptCollections/<task>/``) and ``system_prompt`` (a file under
  ``SystemPrompts/`` if it names one, else the text itself);
* ``metrics``: ``CER``, ``WER``, ``BLEU`` → ``cer``, ``wer``, ``bleu`` (every run also writes
  ``cer_corpus``/``wer_corpus`` per group, as their evaluator computes them); every
  ``metrics_aggregators`` value is written by every run (``by_id``: predictions.csv,
  ``by_doc_question``: metrics_by_group.csv, ``by_doc_type``: metrics_by_doc_class.csv,
  ``general``: metrics.csv);
* ``only_evaluate_metrics=True`` rows re-score the answers of the row that runs the same model on
  the same questions: their jobs form a second experiment, ``<name>_evaluate``, for
  ``python -m runners.evaluate --multirun experiment=<name>_evaluate`` after the first.

A column, task, metric, aggregator or model that has no counterpart, or a file that is not
there, stops the import with one line naming it; nothing is written then.
"""

from __future__ import annotations

import argparse
import ast
import csv
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROJECT_CONF = Path(__file__).resolve().parents[1] / "conf"
USER_CONFIG_COLUMNS = [
    "dataset", "task", "framework", "model_name", "system_prompt", "prompt_collection",
    "metrics", "only_evaluate_metrics", "metrics_aggregators", "filter_doc_class",
    "filter_question_type",
]  # fmt: skip
VLM_BASE_COLUMNS = [
    "framework", "model_family", "model_name", "docker_image", "git_python_package",
    "python_package", "module", "class_name",
]  # fmt: skip
TASKS = {"VQA": "vqa"}
METRICS = {"CER": "cer", "WER": "wer", "BLEU": "bleu"}
AGGREGATORS = {"by_id", "by_doc_question", "by_doc_type", "general"}
HUB_ORGS = {"Qwen2-VL": "Qwen", "Qwen2.5-VL": "Qwen", "SmolVLM": "HuggingFaceTB",
            "Gemma3": "google", "Gemma-3": "google"}  # fmt: skip


class RefusedImport(ValueError):
    """A row or column without a counterpart here; the message names it."""


@dataclass(frozen=True)
class Imported:
    """What the import makes: job configs (dicts of overrides, package ``_global_``) for the run
    and the evaluate experiments, and the model configs they need beyond the project's own."""

    run_jobs: list[dict[str, Any]]
    evaluate_jobs: list[dict[str, Any]]
    model_configs: dict[str, dict[str, Any]]


def import_benchmark(
    user_config: Path,
    vlm_base: Path,
    data_dir: Path,
    *,
    name: str,
    hf: bool = False,
    hub_org: str | None = None,
) -> Imported:
    """Every row of ``user_config`` as a job config; raises :class:`RefusedImport`."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise RefusedImport(f"the experiment name {name!r} may hold only letters, digits, '_', "
                            "'.' and '-'; pass --name")  # fmt: skip
    models = {(row["framework"], row["model_name"]): row
              for _, row in _read(vlm_base, VLM_BASE_COLUMNS)}  # fmt: skip
    run_jobs: list[dict[str, Any]] = []
    evaluate_rows = []
    model_configs: dict[str, dict[str, Any]] = {}
    for line, row in _read(user_config, USER_CONFIG_COLUMNS):
        where = f"{user_config.name} line {line}"
        job = _job(row, where, models, data_dir, model_configs, hf=hf, hub_org=hub_org)
        if _flag(row["only_evaluate_metrics"], where):
            evaluate_rows.append((where, job))
        else:
            run_jobs.append(job)
    evaluate_jobs = [_evaluate_job(job, run_jobs, where, name) for where, job in evaluate_rows]
    return Imported(run_jobs, evaluate_jobs, model_configs)


def write_experiments(imported: Imported, name: str, out: Path) -> list[Path]:
    """The job configs and the experiment(s) that sweep over them, under ``out``."""
    written = [_write_yaml(out / "model" / f"{choice}.yaml", config, package=None)
               for choice, config in imported.model_configs.items()]  # fmt: skip
    for kind, jobs in (("run", imported.run_jobs), ("evaluate", imported.evaluate_jobs)):
        if not jobs:
            continue
        experiment = name if kind == "run" else f"{name}_evaluate"
        group = f"vlmhyperbench/{experiment}"
        shutil.rmtree(out / group, ignore_errors=True)  # no job left over from an earlier import
        for index, job in enumerate(jobs):
            written.append(_write_yaml(out / group / f"job_{index}.yaml", job))
        sweep = {
            "run_name": experiment,
            "hydra": {"sweeper": {"params": {
                f"+{group}": ",".join(f"job_{index}" for index in range(len(jobs))),
            }}},
        }  # fmt: skip
        written.append(_write_yaml(out / "experiment" / f"{experiment}.yaml", sweep))
    return written


def _job(
    row: dict[str, str],
    where: str,
    models: dict[tuple[str, str], dict[str, str]],
    data_dir: Path,
    model_configs: dict[str, dict[str, Any]],
    *,
    hf: bool,
    hub_org: str | None,
) -> dict[str, Any]:
    task = TASKS.get(row["task"])
    if task is None:
        raise RefusedImport(f"{where}: task {row['task']!r} has no counterpart here; "
                           f"importable: {sorted(TASKS)}")  # fmt: skip
    model = models.get((row["framework"], row["model_name"]))
    if model is None:
        raise RefusedImport(f"{where}: no vlm_base.csv row for framework {row['framework']!r} "
                           f"and model {row['model_name']!r}")  # fmt: skip
    root = data_dir / "Datasets" / row["task"] / row["dataset"]
    _must_exist(root / "annotation.csv", where, "dataset")
    metrics = [_mapped(METRICS, name, "metric", where) for name in _list(row["metrics"], where)]
    unknown = sorted(set(_list(row["metrics_aggregators"], where)) - AGGREGATORS)
    if unknown:
        raise RefusedImport(f"{where}: metrics aggregator(s) {unknown} have no counterpart here; "
                           f"every run writes {sorted(AGGREGATORS)}")  # fmt: skip

    dataset: dict[str, Any] = {"name": row["dataset"], "root": str(root)}
    if row["prompt_collection"]:
        collection = data_dir / "PromptCollections" / row["task"] / row["prompt_collection"]
        dataset["prompt_collection"] = str(_must_exist(collection, where, "prompt_collection"))
    for column, key in (("filter_doc_class", "doc_class"),
                        ("filter_question_type", "question_type")):  # fmt: skip
        if row[column]:
            dataset[key] = _list(row[column], where)
    prompt: dict[str, Any] = {"system_prompt": row["system_prompt"]}
    if row["system_prompt"].endswith(".txt"):
        file = _must_exist(
            data_dir / "SystemPrompts" / row["system_prompt"], where, "system_prompt"
        )
        prompt = {"system_prompt": "", "system_prompt_file": str(file)}
    if hf and row["framework"] == "Hugging Face":
        org = hub_org or HUB_ORGS.get(model["model_family"])
        if org is None:
            raise RefusedImport(f"{where}: no hub organisation known for model family "
                                f"{model['model_family']!r}; pass --hub-org")  # fmt: skip
        chosen = _hf_model_choice(f"{org}/{row['model_name']}", model_configs, where)
        model_config: dict[str, Any] = {"init_params": prompt}
    else:
        chosen = "custom"
        class_path = f"{model['python_package']}.{model['module']}:{model['class_name']}"
        init_params = {"model_name": row["model_name"], **prompt}
        model_config = {"class_path": class_path, "init_params": init_params}
    return {
        "defaults": [
            {"override /model": chosen},
            {"override /dataset": "vlmhyperbench"},
            {"override /task": task},
        ],
        "model": model_config,
        "dataset": dataset,
        "runner": {"metrics": metrics} if metrics else {},  # none named: the project's default
        "__source__": f"{where}: {';'.join(row.values())}",
    }


def _must_exist(path: Path, where: str, column: str) -> Path:
    if not path.is_file():
        raise RefusedImport(f"{where}: {path} does not exist; check --data-dir and the {column} "
                            "column")  # fmt: skip
    return path


def _hf_model_choice(hub_id: str, model_configs: dict[str, dict[str, Any]], where: str) -> str:
    """The project's model config for ``hub_id`` (its dtype, device and image bounds tuned), or
    a new one with the settings of their wrappers: bfloat16, device auto, 512 new tokens."""
    for path in sorted((PROJECT_CONF / "model").glob("*.yaml")):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        if config.get("name") == "hf" and config["init_params"]["model_name"] == hub_id:
            return path.stem
    choice = "vlmhyperbench_" + re.sub(r"[^a-z0-9]+", "_", hub_id.lower()).strip("_")
    model_configs[choice] = {
        "__source__": f"{where} (no config in conf/model/ runs {hub_id})",
        "name": "hf",
        "init_params": {"model_name": hub_id, "system_prompt": "",
                        "cache_dir": "${paths.cache_dir}", "max_new_tokens": 512,
                        "dtype": "bfloat16", "device": "auto"},
    }  # fmt: skip
    return choice


def _evaluate_job(job: dict[str, Any], run_jobs: list[dict[str, Any]], where: str, name: str):
    """An eval-only row: the predictions of the run job with the same model and questions."""
    same = [index for index, other in enumerate(run_jobs)
            if other["model"] == job["model"] and other["dataset"] == job["dataset"]]  # fmt: skip
    if not same:
        raise RefusedImport(
            f"{where} only evaluates, but no row runs its model on its questions; add that row, "
            "or score its answers file with python -m runners.evaluate predictions=..."
        )
    index = same[0]
    model_choice = run_jobs[index]["defaults"][0]["override /model"]
    # Where runners.run puts that job: outputs/multirun/<run_name>/<num>_<model>_<dataset>.
    predictions = f"outputs/multirun/{name}/{index}_{model_choice}_vlmhyperbench/predictions.csv"
    return {
        "defaults": [{"override /dataset": "vlmhyperbench"}, job["defaults"][2]],
        "predictions": predictions,
        "dataset": job["dataset"],
        "runner": job["runner"],
        "__source__": job["__source__"],
    }


def _write_yaml(path: Path, job: dict[str, Any], package: str | None = "_global_") -> Path:
    job = dict(job)
    source = job.pop("__source__", None)
    header = f"# @package {package}\n" if package else ""
    if source:
        header += f"# imported from {source}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(job, allow_unicode=True, sort_keys=False),
                    encoding="utf-8")  # fmt: skip
    return path


def _read(path: Path, columns: list[str]) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise RefusedImport(f"{path} does not exist")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=";")
        header = reader.fieldnames or []
        unknown = [column for column in header if column not in columns]
        missing = [column for column in columns if column not in header]
        if unknown or missing:
            raise RefusedImport(f"{path.name}: unknown column(s) {unknown}, missing {missing}; "
                               f"expected {columns}")  # fmt: skip
        return [(reader.line_num, {key: (value or "").strip() for key, value in row.items()})
                for row in reader]  # fmt: skip


def _list(text: str, where: str) -> list[str]:
    """A list field: a Python literal (``['CER']``), or one bare value; empty is no values."""
    if not text:
        return []
    if not text.startswith("["):
        return [text]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise RefusedImport(f"{where}: {text!r} is not a list like ['CER']") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RefusedImport(f"{where}: {text!r} is not a list of strings")
    return value


def _flag(text: str, where: str) -> bool:
    if text in ("", "False", "false", "0"):
        return False
    if text in ("True", "true", "1"):
        return True
    raise RefusedImport(f"{where}: only_evaluate_metrics is {text!r}; expected True or False")


def _mapped(table: dict[str, str], name: str, kind: str, where: str) -> str:
    found = table.get(name.upper())
    if found is None:
        raise RefusedImport(f"{where}: {kind} {name!r} has no counterpart here; importable: "
                           f"{sorted(table)}")  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runners.import_vlmhyperbench",
        description="Turn VLMHyperBench's user_config.csv and vlm_base.csv into an experiment.",
    )
    parser.add_argument("user_config", type=Path)
    parser.add_argument("vlm_base", type=Path)
    folders = "their data folder: Datasets/, PromptCollections/, SystemPrompts/"
    parser.add_argument("--data-dir", type=Path, required=True, help=folders)
    parser.add_argument("--name", default=None, help="the experiment's name (default: the file's)")
    out_help = "the config folder to write to (default: this project's conf/)"
    parser.add_argument("--out", type=Path, default=PROJECT_CONF, help=out_help)
    parser.add_argument("--hf", action="store_true",
                        help="run Hugging Face rows on the built-in hf backend")  # fmt: skip
    parser.add_argument("--hub-org", default=None, help="the hub organisation of --hf models")
    args = parser.parse_args(argv)
    name = args.name or args.user_config.stem
    try:
        imported = import_benchmark(args.user_config, args.vlm_base, args.data_dir.resolve(),
                                    name=name, hf=args.hf, hub_org=args.hub_org)  # fmt: skip
    except RefusedImport as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in write_experiments(imported, name, args.out):
        print(f"wrote {path}")
    searchpath = (
        ""
        if args.out.resolve() == PROJECT_CONF
        else (f" 'hydra.searchpath=[file://{args.out.resolve()}]'")
    )
    print(f"run it: python -m runners.run --multirun experiment={name}{searchpath}")
    if imported.evaluate_jobs:
        print(f"then: python -m runners.evaluate --multirun experiment={name}_evaluate{searchpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
