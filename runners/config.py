"""The typed schema of every config: one dataclass per group, registered in Hydra's ConfigStore.

The YAML files in ``conf/`` choose values; these classes say which keys exist, what type each
value has and what it defaults to. Hydra checks types while composing, so
``runner.batch_size=abc`` or a misspelt key fails before anything runs; :func:`to_settings`
then builds the dataclasses, whose ``__post_init__`` checks ranges (batch size >= 1, ...).
Either way the run ends with one line saying what to fix, before a model is loaded.

Field comments are the reference for each setting; ``python -m runners.run --cfg job`` shows
the values a run will use.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, OverrideParseException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from model_interface.cache import default_cache_dir
from model_interface.images import DEFAULT_MAX_PIXELS
from model_interface.server import RequestLimits

# A checkout keeps conf/ and data/ beside runners/; a wheel carries them inside it (pyproject's
# package-dir), so an installed runner finds its configs and the sample documents there.
_PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = _PACKAGE_DIR if (_PACKAGE_DIR / "conf").is_dir() else _PACKAGE_DIR.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


class RunnerError(Exception):
    """A mistake in the run's configuration or inputs; the message says how to fix it.

    ``exit_code`` is what the command line exits with: 2 for a mistake in what was asked, 1 for
    a failure of the machine (a full disk).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a run answered; the message says what is kept and how to resume."""


INTERRUPTED = "interrupted: what was answered is kept, run the same command to resume"
INTERRUPTED_EXIT_CODE = 130  # a shell's code for a command ended by SIGINT


class JobOutcome:
    """The exit status of a command's jobs (``run``, ``evaluate``, ``serve``). A job that meets
    a :class:`RunnerError` logs its one line and records its exit code here: raising
    ``SystemExit`` inside a Hydra job would skip Hydra's callbacks and end a sweep's other
    jobs. The command exits with the last code recorded."""

    def __init__(self) -> None:
        self.exit_status = 0

    def run(self, job: Callable[[], Any]) -> Any:
        """``job()``'s result, or None when it ended in a :class:`RunnerError`."""
        try:
            return job()
        except RunnerError as error:
            logging.getLogger("runners").error("%s", error)
            self.exit_status = error.exit_code
            return None


@dataclass
class DatasetConfig:
    name: str | None = None  # null: the root folder's name
    format: str = "vlmhyperbench"  # vlmhyperbench, csv or jsonl (runners/datasets.py)
    root: str = MISSING
    # The annotation file inside root; null means the format's default.
    file: str | None = None
    # Python str.format template: {prompt} is the dataset's question, any column works too.
    prompt_template: str = "{prompt}"
    # Filters: null keeps everything, a value or a list keeps only matching rows.
    split: Any = None
    doc_class: Any = None
    question_type: Any = None
    limit: int | None = None
    shuffle: bool = False
    seed: int = "${seed}"  # type: ignore[assignment]
    # A VLMHyperBench prompt collection (';'-separated CSV, prompt;doc_class_question_type):
    # each question is replaced by the prompt keyed "<doc_class> <question_type>". A relative
    # path is looked up in the current directory, then in the dataset root.
    prompt_collection: str | None = None  # (dataset.limit is checked with the dataset)


@dataclass
class RunnerConfig:
    batch_size: int = 8
    # Samples answered in this run (null: all); dataset.limit caps the dataset itself.
    limit: int | None = None
    # Continue the run in the output directory (answered samples are kept, failed ones retried).
    resume: bool = True
    # The run exits with status 1 when more than this share of its samples failed.
    max_error_rate: float = 0.1
    metrics: list[str] = field(default_factory=lambda: ["exact_match", "anls", "cer", "wer"])
    # Sort samples by size within a window of this many batches, so a batch pads less; the
    # predictions file is put back in dataset order at the end. 1 turns sorting off.
    sort_window_batches: int = 8
    # Threads decoding images ahead of the model (more help with large images on many cores).
    prefetch_workers: int = 2
    # Decoded images kept for reuse: document datasets ask several questions per page. 0: off.
    image_cache_mb: float = 256
    # Guard against decompression bombs: an image with more pixels fails its sample.
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS
    progress: bool = True
    # report.html and report.md in the run directory when the run ends (runners/report.py).
    report: bool = True
    # Split the run over workers (runners/shards.py): this one answers the shard_index-th of
    # num_shards equal consecutive slices of the selected samples; the last to end merges them.
    num_shards: int = 1
    shard_index: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.num_shards >= 1, "runner.num_shards must be >= 1"),
            (
                0 <= self.shard_index < self.num_shards,
                f"runner.shard_index must be from 0 to runner.num_shards - 1 "
                f"({self.num_shards - 1})",
            ),
            (self.batch_size >= 1, "runner.batch_size must be >= 1"),
            (self.limit is None or self.limit >= 0, "runner.limit must be >= 0 or null"),
            (0 <= self.max_error_rate <= 1, "runner.max_error_rate must be between 0 and 1"),
            (self.sort_window_batches >= 1, "runner.sort_window_batches must be >= 1"),
            (self.prefetch_workers >= 1, "runner.prefetch_workers must be >= 1"),
            (self.image_cache_mb >= 0, "runner.image_cache_mb must be >= 0"),
            (
                self.max_image_pixels is None or self.max_image_pixels >= 1,
                "runner.max_image_pixels must be >= 1 or null",
            ),
            (len(self.metrics) > 0, "runner.metrics must name at least one metric"),
        ]
        _raise_first_failure(checks, self)


@dataclass
class PathsConfig:
    root_dir: str = "${project_root:}"
    data_dir: str = "${oc.env:MODEL_INTERFACE_DATA,${paths.root_dir}/data}"
    # Model weights: hub downloads and the tiny offline models are stored and reused here.
    cache_dir: str = "${default_cache_dir:}"


@dataclass
class TrackingConfig:
    """``tracking=mlflow``: where runs are logged (runners/tracking.py)."""

    uri: str = "sqlite:///outputs/mlflow.db"
    experiment: str = "model-interface"


@dataclass
class RunConfig:
    """``python -m runners.run``: conf/config.yaml."""

    # {name, class_path, init_params}: init parameters are the model class's own, so this group
    # is checked by ModelFactory (unknown keys, names that are not registered), not here.
    model: Any = MISSING
    dataset: DatasetConfig = MISSING
    # {name, ...}: the other keys are the task's own options (runners/tasks), checked by it.
    task: Any = MISSING
    runner: RunnerConfig = MISSING
    paths: PathsConfig = MISSING
    # Names the output directory outputs/<run_name>; running again with it resumes the run.
    run_name: str = MISSING
    seed: int = 0
    tracking: TrackingConfig | None = None  # set by tracking=mlflow


@dataclass
class EvaluateConfig:
    """``python -m runners.evaluate``: conf/evaluate.yaml."""

    # The answers to score: a run's predictions.csv, or a VLMHyperBench answers file
    # (id;model_answer, id the 0-based row of the annotation file).
    predictions: str = MISSING
    dataset: DatasetConfig = MISSING
    task: Any = MISSING
    runner: RunnerConfig = MISSING  # runner.metrics: the text metrics to score with
    paths: PathsConfig = MISSING
    seed: int = 0
    run_name: str = MISSING  # names the output directory


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # null: model.init_params.model_name
    # Requests that arrive together are answered by one predict_batch call of at most this many.
    max_batch_size: int = 8
    # How long the first request of a batch waits for company.
    batch_wait_ms: float = 5
    # How long a batch may wait to fill up while fewer requests are in it than clients recently
    # kept in flight together (their next requests come as soon as their answers arrive).
    batch_fill_ms: float = 50
    # The NAME of the environment variable holding the key clients must send as
    # "Authorization: Bearer <key>" (every endpoint but /health); null: no key.
    api_key_env: str | None = None
    # Serve the API's own documentation at /docs and /openapi.json.
    docs: bool = False
    # Connections served at once; a request on one more is answered 503 straight away, so slow
    # clients can't take the server from everyone.
    max_connections: int = 64
    limits: RequestLimits = field(default_factory=RequestLimits)

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, "serve.port must be between 0 and 65535"),
            (self.max_batch_size >= 1, "serve.max_batch_size must be >= 1"),
            (self.max_connections >= 1, "serve.max_connections must be >= 1"),
            (self.batch_wait_ms >= 0, "serve.batch_wait_ms must be >= 0"),
            (self.batch_fill_ms >= 0, "serve.batch_fill_ms must be >= 0"),
        ]
        _raise_first_failure(checks, self)


@dataclass
class ServeAppConfig:
    """``python -m runners.serve``: conf/serve.yaml."""

    model: Any = MISSING  # as in RunConfig
    paths: PathsConfig = MISSING
    serve: ServeConfig = field(default_factory=ServeConfig)


CUSTOM_MODEL = "custom"  # conf/model/custom.yaml: any installed wrapper, by class or by name


def model_config(model: Any, data_root: str | None = None) -> dict[str, Any]:
    """The model config, checked, with ``init_params.system_prompt_file`` (VLMHyperBench keeps
    system prompts in ``.txt`` files) replaced by ``system_prompt``, the file's text. A relative
    file is looked up in the current directory, then in ``data_root`` (the dataset's root)."""
    config = dict(model)
    if config.get("name") == CUSTOM_MODEL and not config.get("class_path"):
        raise RunnerError(
            "model=custom needs the wrapper to run: model.class_path=pkg.module:Class (an "
            "installed class), or model.name=<a registered name, e.g. a package's entry point>"
        )
    params = dict(config.get("init_params") or {})
    path = params.pop("system_prompt_file", None)
    if path is None:
        return config
    if params.get("system_prompt"):
        raise RunnerError(
            "model.init_params has both system_prompt and system_prompt_file; keep one"
        )
    file = Path(path).expanduser()
    if not file.is_absolute() and not file.exists() and data_root is not None:
        file = Path(data_root) / file
    from runners.datasets import NotUtf8, read_utf8

    try:
        params["system_prompt"] = read_utf8(file).strip()
    except OSError as error:
        raise RunnerError(
            f"cannot read model.init_params.system_prompt_file {str(file)!r}: "
            f"{error.strerror or error}"
        ) from None
    except NotUtf8 as error:
        raise RunnerError(
            f"model.init_params.system_prompt_file {str(file)!r}: {error}; re-save it as UTF-8"
        ) from None
    return {**config, "init_params": params}


def _raise_first_failure(checks: list[tuple[bool, str]], config: object) -> None:
    for passed, rule in checks:
        if not passed:
            key = rule.split()[0].rsplit(".", 1)[1]
            raise ValueError(f"{rule}, got {getattr(config, key)!r}")


def register() -> None:
    """Put the schemas in Hydra's ConfigStore and the resolvers the YAML files use in OmegaConf."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="serve_schema", node=ServeAppConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(group="runner", name="default", node=RunnerConfig)
    store.store(group="paths", name="default", node=PathsConfig)
    for name, resolver in (
        ("project_root", lambda: str(PROJECT_ROOT)),
        ("default_cache_dir", default_cache_dir),
        ("sweep_subdir", sweep_subdir),
        ("shard_folder", shard_folder),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def shard_folder(index: int, count: int) -> str:
    """Where shard ``index`` of ``count`` keeps its own files inside the run directory
    (``shards/<i>-of-<n>/``); "" for a run that is not split."""
    return f"shards/{index}-of-{count}/" if int(count) > 1 else ""


# Overrides that never make another run of a sweep: the shards of one run differ in the first.
SAME_RUN_OVERRIDES = frozenset(
    {
        "runner.shard_index",
        "run_name",
        "runner.resume",
        "runner.progress",
        "runner.report",
        "tracking",
        "tracking.uri",
        "tracking.experiment",
    }
)


def sweep_subdir(number: int, model: str, dataset: str, num_shards: int, overrides: Any) -> str:
    """A sweep job's folder: ``<n>_<model>_<dataset>``. The shards of one run answer into one
    run directory, so theirs is named by what they share: ``<model>_<dataset>_<N>shards``, then
    every other override of the job (a sweep over batch sizes makes one run per size)."""
    if int(num_shards) <= 1:
        return f"{number}_{model}_{dataset}"
    named = {"model", "dataset", "runner.num_shards", *SAME_RUN_OVERRIDES}
    others = [str(item) for item in overrides if str(item).split("=")[0].lstrip("+~") not in named]
    name = re.sub(r"[^\w.=,+-]", "_", "_".join([f"{model}_{dataset}_{num_shards}shards", *others]))
    if len(name) > 120:  # a folder name must stay short; the digest keeps it unique
        name = f"{name[:100]}_{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


def to_settings(cfg: DictConfig, schema: type) -> Any:
    """The composed config as ``schema``'s dataclasses (interpolations resolved, ranges checked).

    The config is merged into the schema first, so a config saved without it (a run's
    ``.hydra/config.yaml``, rerun with ``--config-path``) is checked the same way. Raises
    :class:`RunnerError` with one line naming the key for a value left at ``???``, a value of
    the wrong type, an interpolation that can't be resolved, or a value out of range.
    """
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    except MissingMandatoryValue as error:
        raise RunnerError(
            f"{error.full_key} has no value; set it on the command line, e.g. {error.full_key}=..."
        ) from None
    except OmegaConfBaseException as error:
        raise RunnerError(one_line(error)) from None
    except ValueError as error:
        raise RunnerError(str(error)) from None


def one_line(error: BaseException) -> str:
    """An OmegaConf/Hydra error as one line: its first line, then its cause's first line."""
    message = _first_line(error)
    if isinstance(error, OverrideParseException):
        return (
            f"cannot parse the override {error.override!r} ({message}); quote a value that holds "
            """spaces or braces, e.g. 'dataset.prompt_template="Answer briefly. {prompt}"'"""
        )
    full_key = getattr(error, "full_key", None)
    if full_key and full_key not in message:
        message = f"{full_key}: {message}"
    if options := getattr(error, "options", None):  # a config group option that doesn't exist
        message = f"{message}; choose one of: {', '.join(options)}"
    cause = error.__cause__
    if isinstance(cause, (HydraException, OmegaConfBaseException)) and str(cause).strip():
        message = f"{message.rstrip('.')}: {_first_line(cause)}"
    return message


def _first_line(error: BaseException) -> str:
    """The message's first line, or its first two where the first only announces the second."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def hydra_main(config_name: str, job: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """A command's ``@hydra.main`` over ``job``, composing ``conf/<config_name>.yaml``. Made
    when the command starts, so that what its jobs share is held by the command (a closure),
    not by a module."""
    import hydra

    return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(job)


def run_hydra_command(main: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` function as a command, ending in one line on stderr instead of a
    traceback or Hydra's multi-line report: exit status 2 for a mistake in the command line or
    the config (or a SLURM cluster that refuses the jobs), 1 for an output directory that
    can't be written, 130 for Ctrl-C."""
    # Hydra re-raises rather than printing when HYDRA_FULL_ERROR is set; errors raised by the
    # task itself still show their traceback, as a bug should.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # A log file on a full disk must not add a traceback per log line to the one-line error.
    logging.raiseExceptions = False
    try:
        return main()
    except KeyboardInterrupt as interrupt:
        print(str(interrupt) or INTERRUPTED, file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    except (HydraException, OmegaConfBaseException) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:  # after Hydra's: its MissingConfigException is an OSError
        # Hydra makes the output directory and writes .hydra/ before the job starts.
        if not _raised_outside_the_job(error):
            raise
        print(f"error: {cannot_write_outputs(error)}", file=sys.stderr)
        raise SystemExit(1) from None
    except ValueError as error:
        if _raised_in(error, "logging.") and isinstance(error.__cause__, OSError):
            # Hydra's log file (run.log) in an output directory this process can't write.
            print(f"error: {cannot_write_outputs(error.__cause__)}", file=sys.stderr)
            raise SystemExit(1) from None
        if not _raised_in(error, "hydra."):
            raise
        print(f"error: {error}", file=sys.stderr)  # a command-line mistake, e.g. -m with --cfg
        raise SystemExit(2) from None
    except RuntimeError as error:
        # submitit refuses a machine without SLURM, or a cluster that does not answer, in a
        # traceback of 25 to 60 lines.
        if not _raised_in(error, "submitit."):
            raise
        print(f"error: {_slurm_refusal(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def cannot_write_outputs(error: OSError) -> str:
    where = error.filename or "the output directory"
    return (
        f"cannot write {where}: {error.strerror or error}; run from a directory you can write, "
        "or choose the output directory with hydra.run.dir=... (hydra.sweep.dir=... for "
        "--multirun)"
    )


def _slurm_refusal(error: RuntimeError) -> str:
    if shutil.which("sbatch") is None:
        return SLURM_MISSING
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = lines[-1] if lines else type(error).__name__
    return (
        f"SLURM did not take the jobs ({said}); check that the cluster answers (sinfo), or "
        "pick a launcher for this machine: hydra/launcher=joblib (processes) or "
        "hydra/launcher=submitit_local"
    )


def _raised_outside_the_job(error: BaseException) -> bool:
    """Whether the error came from Hydra's own work around a job (making its output directory,
    saving its config), not from the job: no frame of the traceback runs the job's code."""
    traceback = error.__traceback__
    modules = []
    while traceback is not None:
        modules.append(traceback.tb_frame.f_globals.get("__name__", ""))
        traceback = traceback.tb_next
    inside_hydra = list(
        itertools.dropwhile(lambda module: not module.startswith("hydra."), modules)
    )
    return bool(inside_hydra) and not any(module.startswith("runners.") for module in inside_hydra)


SLURM_MISSING = (
    "the launcher submits the jobs to SLURM, which is not installed here (no sbatch on PATH); "
    "run the command on the cluster's login node, or pick a launcher for this machine: "
    "hydra/launcher=joblib (processes) or hydra/launcher=submitit_local"
)


def _raised_in(error: BaseException, module_prefix: str) -> bool:
    """Whether the innermost frame of the error's traceback is in a module of that prefix."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    module = traceback.tb_frame.f_globals.get("__name__", "") if traceback else ""
    return module.startswith(module_prefix)


register()
