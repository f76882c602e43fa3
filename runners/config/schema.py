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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from model_interface.cache import default_cache_dir
from model_interface.chat_requests import RequestLimits
from model_interface.images import DEFAULT_MAX_PIXELS
from runners.config.paths import PROJECT_ROOT
from runners.datasets.text import NotUtf8, read_utf8
from runners.errors import RunnerError, one_line
from runners.rundir.naming import shard_folder, sweep_subdir


@dataclass
class HubDatasetConfig:
    """``dataset.format=hf``: one split of a dataset the ``datasets`` library loads."""

    path: str = MISSING  # a hub repository id (lmms-lab/DocVQA), or a local folder of parquet
    name: str | None = None  # the dataset's config (subset), if it has several
    split: str = MISSING
    revision: str | None = None  # a hub branch, tag or commit; null: the default branch
    # Local files for a builder such as path=parquet (absolute, or relative to where you run).
    data_files: list[str] | None = None
    # role -> column: image, question (required), answers, id, split, doc_class,
    # question_type, document (runners/datasets/hub.py)
    columns: dict[str, str | None] = field(default_factory=dict)


@dataclass
class DatasetConfig:
    name: str | None = None  # null: the root folder's (or hub dataset's) name
    # vlmhyperbench, csv, jsonl, kie_json or hf (runners/datasets/)
    format: str = "vlmhyperbench"
    root: str | None = None  # the dataset's folder (format hf has none)
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
    hf: HubDatasetConfig | None = None


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
    # Stop once the answers (earlier attempts' included) cost this much at model.pricing, or
    # used this many prompt + completion tokens; null: no limit (runners/execution/budget.py).
    max_cost: float | None = None
    max_tokens_total: int | None = None
    # Split the run over workers (runners/execution/shards.py): this one answers the
    # shard_index-th of num_shards equal consecutive slices of the selected samples; the last to
    # end merges them.
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
            (self.max_cost is None or self.max_cost > 0, "runner.max_cost must be > 0 or null"),
            (
                self.max_tokens_total is None or self.max_tokens_total > 0,
                "runner.max_tokens_total must be > 0 or null",
            ),
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
    # {model, template, batch_size}: a model as judge, for runner.metrics=[...,judge]
    # (runners/execution/judge.py); set by judge=...
    judge: Any = None


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
    judge: Any = None  # as runners.run's: verdicts cached then are not asked again


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
    """Put the schemas in Hydra's ConfigStore and the resolvers the YAML files use in OmegaConf.
    Every command does it as it starts (``hydra_main``); code that composes the configs itself
    (Hydra's Compose API) calls it first. Calling it again changes nothing."""
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
