"""Bring a VLMHyperBench benchmark over: its ``user_config.csv`` and ``vlm_base.csv`` become a Hydra
experiment that runs every row.

    python -m runners.import_vlmhyperbench USER_CONFIG VLM_BASE --data-dir DIR [--name NAME]
        [--out CONF_DIR] [--hf] [--hub-org ORG] [--max-new-tokens N]

``--data-dir`` is their data folder: ``Datasets/<task>/<dataset>/``,
``PromptCollections/<task>/<file>.csv``, ``SystemPrompts/<file>.txt``. For every row of
``user_config.csv`` one job config is written to ``<out>/vlmhyperbench/<name>/job_<n>.yaml``,
and ``<out>/experiment/<name>.yaml`` sweeps over them, so that
``python -m runners.run --multirun experiment=<name> 'hydra.searchpath=[file://<out>]'`` runs
the whole benchmark. ``<out>`` is ``./conf-vlmhyperbench`` unless ``--out`` says otherwise: an
import is the user's own, so it stays out of this project's ``conf/`` (and out of its ``--help``).
The importer prints the exact commands to run.

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

Answer length: a job on one of this project's backends (``--hf`` rows, and rows whose wrapper
class is a built-in backend) gets ``model.init_params.max_new_tokens`` from ``--max-new-tokens``
(default 64, see :data:`DEFAULT_MAX_NEW_TOKENS`), which a run can override plainly
(``model.init_params.max_new_tokens=16``). A wrapper of their own is passed its init parameters
as keyword arguments, and theirs take no ``max_new_tokens`` (an unknown one is a TypeError), so
it answers at the length it sets itself.

Every cell reaches the run as its literal text: the importer escapes what OmegaConf would
otherwise interpret (``${...}``, ``???``), so a ``system_prompt`` of ``${oc.env:API_KEY}`` is
sent as those characters, never as the key. Files named in cells stay inside their folders.

A column, task, metric, aggregator or model that has no counterpart, a file that is not there,
or a CSV that can't be read (not UTF-8, no rows, a row with more values than columns) stops the
import with one line naming it; nothing is written then.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from model_interface.model_factory import BUILTIN_MODELS
from runners.datasets.text import NotUtf8, read_utf8

PROJECT_CONF = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_OUT = Path("conf-vlmhyperbench")  # relative: next to where the import is run
# VLMHyperBench answers are field values (a name, a date, a number: 4 to 23 characters in
# examples/vlmhyperbench), a handful of tokens. 64 leaves room for a long field (an address of
# about 100 characters is a few dozen tokens, in Cyrillic too) and caps a model that rambles at an
# eighth of their wrappers' 512, each token of which costs a forward pass.
# --max-new-tokens 512 generates as long as their runs did.
DEFAULT_MAX_NEW_TOKENS = 64
# Wrapper classes known to take max_new_tokens: this project's backends (ModelInterface's
# generation settings). Any other class may reject it.
BUILTIN_CLASSES = frozenset(BUILTIN_MODELS.values())
USER_CONFIG_COLUMNS = [
    "dataset",
    "task",
    "framework",
    "model_name",
    "system_prompt",
    "prompt_collection",
    "metrics",
    "only_evaluate_metrics",
    "metrics_aggregators",
    "filter_doc_class",
    "filter_question_type",
]
VLM_BASE_COLUMNS = [
    "framework",
    "model_family",
    "model_name",
    "docker_image",
    "git_python_package",
    "python_package",
    "module",
    "class_name",
]
TASKS = {"VQA": "vqa"}
METRICS = {"CER": "cer", "WER": "wer", "BLEU": "bleu"}
AGGREGATORS = {"by_id", "by_doc_question", "by_doc_type", "general"}
HUB_ORGS = {
    "Qwen2-VL": "Qwen",
    "Qwen2.5-VL": "Qwen",
    "Qwen3-VL": "Qwen",
    "SmolVLM": "HuggingFaceTB",
    "Gemma3": "google",
    "Gemma-3": "google",
}


class RefusedImport(ValueError):
    """A row or column without a counterpart here; the message names it."""


class Interpolation(str):
    """A value the importer writes for OmegaConf to resolve (``${paths.cache_dir}``). Every other
    string is written to reach the run as its literal text (:func:`_literal`)."""


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
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> Imported:
    """Every row of ``user_config`` as a job config; raises :class:`RefusedImport`."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise RefusedImport(
            f"the experiment name {name!r} may hold only letters, digits, '_', "
            "'.' and '-'; pass --name"
        )
    if max_new_tokens < 1:
        raise RefusedImport(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    models = {
        (row["framework"], row["model_name"]): row for _, row in _read(vlm_base, VLM_BASE_COLUMNS)
    }
    rows = _read(user_config, USER_CONFIG_COLUMNS)
    if not rows:
        # Else nothing is written and the printed command runs nothing, successfully.
        raise RefusedImport(
            f"{user_config.name} has no rows: add one evaluation per line below its header"
        )
    run_jobs: list[dict[str, Any]] = []
    evaluate_rows = []
    model_configs: dict[str, dict[str, Any]] = {}
    for line, row in rows:
        where = f"{user_config.name} line {line}"
        job = _job(
            row,
            where,
            models,
            vlm_base.name,
            data_dir,
            model_configs,
            hf=hf,
            hub_org=hub_org,
            max_new_tokens=max_new_tokens,
        )
        if _flag(row["only_evaluate_metrics"], where):
            evaluate_rows.append((where, job))
        else:
            run_jobs.append(job)
    evaluate_jobs = [_evaluate_job(job, run_jobs, where, name) for where, job in evaluate_rows]
    return Imported(run_jobs, evaluate_jobs, model_configs)


def write_experiments(imported: Imported, name: str, out: Path) -> list[Path]:
    """The job configs and the experiment(s) that sweep over them, under ``out``."""
    written = [
        _write_yaml(out / "model" / f"{choice}.yaml", config, package=None)
        for choice, config in imported.model_configs.items()
    ]
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
            "hydra": {
                "sweeper": {
                    "params": {
                        f"+{group}": ",".join(f"job_{index}" for index in range(len(jobs))),
                    }
                }
            },
        }
        written.append(_write_yaml(out / "experiment" / f"{experiment}.yaml", sweep))
    return written


def searchpath_override(folder: Path) -> str:
    """The override that lets a run find the configs in ``folder`` (an absolute path).

    Hydra's override grammar takes a bare path of ASCII letters, digits and ``/_.:-`` only: a
    comma would split the list, and a space at the end, a bracket or a non-ASCII letter (a
    Cyrillic folder name) breaks it. Any other path is written as a quoted Hydra string, in
    which ``\\"`` is a quote, so a backslash before a quote or at the end is doubled.
    """
    entry = f"file://{folder}"
    if not re.fullmatch(r"[A-Za-z0-9/_.:-]+", entry):
        escaped = re.sub(r'(\\*)(?="|$)', lambda match: match[1] * 2, entry).replace('"', r"\"")
        entry = f'"{escaped}"'
    return f"hydra.searchpath=[{entry}]"


def _job(
    row: dict[str, str],
    where: str,
    models: dict[tuple[str, str], dict[str, str]],
    vlm_base_name: str,
    data_dir: Path,
    model_configs: dict[str, dict[str, Any]],
    *,
    hf: bool,
    hub_org: str | None,
    max_new_tokens: int,
) -> dict[str, Any]:
    task = TASKS.get(row["task"])
    if task is None:
        raise RefusedImport(
            f"{where}: task {row['task']!r} has no counterpart here; importable: {sorted(TASKS)}"
        )
    model = models.get((row["framework"], row["model_name"]))
    if model is None:
        raise RefusedImport(
            f"{where}: no {vlm_base_name} row for framework {row['framework']!r} "
            f"and model {row['model_name']!r}"
        )
    root = _inside(data_dir / "Datasets" / row["task"], row["dataset"], "dataset", where)
    _must_exist(root / "annotation.csv", where, "dataset")
    metrics = [_mapped(METRICS, name, "metric", where) for name in _list(row["metrics"], where)]
    unknown = sorted(set(_list(row["metrics_aggregators"], where)) - AGGREGATORS)
    if unknown:
        raise RefusedImport(
            f"{where}: metrics aggregator(s) {unknown} have no counterpart here; "
            f"every run writes {sorted(AGGREGATORS)}"
        )

    dataset: dict[str, Any] = {"name": row["dataset"], "root": str(root)}
    if row["prompt_collection"]:
        collections = data_dir / "PromptCollections" / row["task"]
        collection = _inside(collections, row["prompt_collection"], "prompt_collection", where)
        dataset["prompt_collection"] = str(_must_exist(collection, where, "prompt_collection"))
    for column, key in (
        ("filter_doc_class", "doc_class"),
        ("filter_question_type", "question_type"),
    ):
        if row[column]:
            dataset[key] = _list(row[column], where)
    prompt: dict[str, Any] = {"system_prompt": row["system_prompt"]}
    if row["system_prompt"].endswith(".txt"):
        file = _inside(data_dir / "SystemPrompts", row["system_prompt"], "system_prompt", where)
        _must_exist(file, where, "system_prompt")
        prompt = {"system_prompt": "", "system_prompt_file": str(file)}
    if hf and row["framework"] == "Hugging Face":
        org = hub_org or HUB_ORGS.get(model["model_family"])
        if org is None:
            raise RefusedImport(
                f"{where}: no hub organisation known for model family "
                f"{model['model_family']!r}; pass --hub-org"
            )
        chosen = _hf_model_choice(
            f"{org}/{row['model_name']}", model_configs, where, max_new_tokens
        )
        model_config: dict[str, Any] = {"init_params": {**prompt, "max_new_tokens": max_new_tokens}}
    else:
        chosen = "custom"
        class_path = f"{model['python_package']}.{model['module']}:{model['class_name']}"
        init_params = {"model_name": row["model_name"], **prompt}
        if class_path in BUILTIN_CLASSES:
            init_params["max_new_tokens"] = max_new_tokens
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


def _inside(folder: Path, cell: str, column: str, where: str) -> Path:
    """``folder / cell``, where the cell names something inside ``folder``: an absolute path or a
    ``..`` would let a shared user_config.csv send any file on this machine to the model."""
    relative = PurePosixPath(cell)
    if relative.is_absolute() or ".." in relative.parts:
        raise RefusedImport(
            f"{where}: {column} {cell!r} leads out of {folder}; name a path inside it"
        )
    return folder / cell


def _must_exist(path: Path, where: str, column: str) -> Path:
    if not path.is_file():
        raise RefusedImport(
            f"{where}: {path} does not exist; check --data-dir and the {column} column"
        )
    return path


def _hf_model_choice(
    hub_id: str, model_configs: dict[str, dict[str, Any]], where: str, max_new_tokens: int
) -> str:
    """The project's model config for ``hub_id`` (its dtype, device and image bounds tuned), or
    a new one with the settings of their wrappers (bfloat16, device auto) and ``max_new_tokens``."""
    for path in sorted((PROJECT_CONF / "model").glob("*.yaml")):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        if config.get("name") == "hf" and config["init_params"]["model_name"] == hub_id:
            return path.stem
    choice = "vlmhyperbench_" + re.sub(r"[^a-z0-9]+", "_", hub_id.lower()).strip("_")
    model_configs[choice] = {
        "__source__": f"{where} (no config in conf/model/ runs {hub_id})",
        "name": "hf",
        "init_params": {
            "model_name": hub_id,
            "system_prompt": "",
            "cache_dir": Interpolation("${paths.cache_dir}"),
            "max_new_tokens": max_new_tokens,
            "dtype": "bfloat16",
            "device": "auto",
        },
    }
    return choice


def _evaluate_job(job: dict[str, Any], run_jobs: list[dict[str, Any]], where: str, name: str):
    """An eval-only row: the predictions of the run job with the same model and questions."""
    same = [
        index
        for index, other in enumerate(run_jobs)
        if other["model"] == job["model"] and other["dataset"] == job["dataset"]
    ]
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
        header += f"# imported from {_one_line(source)}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        header + yaml.safe_dump(_literal(job), allow_unicode=True, sort_keys=False),
        encoding="utf-8",
    )
    return path


def _literal(value: Any) -> Any:
    """``value`` with every string but an :class:`Interpolation` escaped for OmegaConf, which
    would otherwise resolve it when the job runs: a cell of ``${oc.env:OPENAI_API_KEY}`` must
    reach the model as that text, never as the key."""
    if isinstance(value, Interpolation):
        return str(value)
    if isinstance(value, str):
        if value == "???":
            # OmegaConf's mark of a missing value; a resolver hands the text back as it is.
            return "${oc.decode:'???'}"
        # OmegaConf reads only a "${" as special (every interpolation, resolver and nesting
        # starts with one), "\${" as a literal "${", and "\\" right before "${" as one
        # backslash, which leaves the "${" live. So each backslash before a "${" is doubled and
        # the "${" escaped; backslashes anywhere else are literal already.
        return re.sub(r"(\\*)\$\{", lambda match: match[1] * 2 + r"\${", value)
    if isinstance(value, dict):
        return {key: _literal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_literal(item) for item in value]
    return value


def _one_line(text: str) -> str:
    """``text`` with each unprintable character as its escape (``\\n``, ``\\u2028``): a line break
    in a cell must not end the comment or the message it is quoted in (YAML breaks lines at
    ``\\r``, ``\\x85``, ``\\u2028`` and ``\\u2029`` too)."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _read(path: Path, columns: list[str]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a ``;``-separated UTF-8 file (with or without a BOM) that has exactly
    ``columns``, each with the line it ends on."""
    if not path.is_file():
        raise RefusedImport(f"{path} does not exist")
    try:
        text = read_utf8(path)
    except NotUtf8 as error:
        raise RefusedImport(f"{error}; re-save the file as UTF-8 (Excel: 'CSV UTF-8')") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=";")
    try:
        if reader.fieldnames is None:
            raise RefusedImport(
                f"{path.name} is empty; its first line must be the header {';'.join(columns)}"
            )
        header = reader.fieldnames
        unknown = [column for column in header if column not in columns]
        missing = [column for column in columns if column not in header]
        if unknown or missing:
            raise RefusedImport(
                f"{path.name}: unknown column(s) {unknown}, missing {missing}; expected {columns}"
            )
        rows = []
        for row in reader:
            if None in row:  # DictReader's key for the values beyond the header's columns
                raise RefusedImport(
                    f"{path.name} line {reader.line_num}: {len(header) + len(row[None])} values "
                    f"for {len(header)} columns; quote a value that holds ';'"
                )
            rows.append(
                (reader.line_num, {key: (value or "").strip() for key, value in row.items()})
            )
    except csv.Error as error:  # a NUL byte, a field beyond csv's size limit
        raise RefusedImport(f"{path.name} line {reader.line_num}: {error}") from None
    return rows


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
        raise RefusedImport(
            f"{where}: {kind} {name!r} has no counterpart here; importable: {sorted(table)}"
        )
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
    out_help = (
        f"the config folder to write to (default: ./{DEFAULT_OUT}); runs find it through "
        "hydra.searchpath, as the printed commands show"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=out_help)
    parser.add_argument(
        "--hf", action="store_true", help="run Hugging Face rows on the built-in hf backend"
    )
    parser.add_argument("--hub-org", default=None, help="the hub organisation of --hf models")
    tokens_help = (
        f"the answer length of jobs on this project's backends (default: "
        f"{DEFAULT_MAX_NEW_TOKENS}; their wrappers use 512)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help=tokens_help
    )
    args = parser.parse_args(argv)
    name = args.name or args.user_config.stem
    try:
        imported = import_benchmark(
            args.user_config,
            args.vlm_base,
            args.data_dir.resolve(),
            name=name,
            hf=args.hf,
            hub_org=args.hub_org,
            max_new_tokens=args.max_new_tokens,
        )
    except RefusedImport as error:
        print(f"error: {_one_line(str(error))}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    try:
        written = write_experiments(imported, name, out)
    except OSError as error:
        print(
            f"error: cannot write {error.filename or out}: {error.strerror or error}; choose "
            "another folder with --out DIR",
            file=sys.stderr,
        )
        return 1
    for path in written:
        print(f"wrote {path}")
    own_length = sorted(
        {
            job["model"]["class_path"]
            for job in imported.run_jobs
            if "max_new_tokens" not in job["model"]["init_params"]
        }
    )
    if own_length:
        print(
            f"note: jobs on {', '.join(own_length)} answer at their wrapper's own length; "
            "--max-new-tokens reaches only this project's backends"
        )
    # The project's own conf/ is found without a searchpath; any other folder needs one.
    searchpath = "" if out == PROJECT_CONF else " " + shlex.quote(searchpath_override(out))
    print(f"run it: python -m runners.run --multirun experiment={name}{searchpath}")
    if imported.evaluate_jobs:
        print(f"then: python -m runners.evaluate --multirun experiment={name}_evaluate{searchpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
