"""The config schema: every mistake in a config or a dataset ends in one line and exit status
2, within seconds and before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.config.schema import RunConfig, RunnerConfig, to_settings
from runners.errors import RunnerError
from tests.support.helpers import error_lines, make_config, run_cli, torch_refused, write_dataset

# The model a refused run must never get to: loading it would import torch and take seconds.
HEAVY_MODEL = "model=tiny_qwen2_vl"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "line"),
    [
        (
            "runner.batch_size=abc",
            "error: Error merging override runner.batch_size=abc: Value "
            "'abc' of type 'str' could not be converted to Integer",
        ),
        (
            "runner.max_error_rate=abc",
            "error: Error merging override runner.max_error_rate=abc: "
            "Value 'abc' of type 'str' could not be converted to Float",
        ),
        ("runner.limit=-1", "runner.limit must be >= 0 or null, got -1"),
        ("runner.batch_size=0", "runner.batch_size must be >= 1, got 0"),
        ("runner.max_error_rate=1.5", "runner.max_error_rate must be between 0 and 1, got 1.5"),
        ("dataset.limit=-2", "dataset.limit must be >= 0 or null, got -2"),
        (
            "runner.batch_sise=4",
            "error: Could not override 'runner.batch_sise': Key 'batch_sise' not in 'RunnerConfig'",
        ),
        ("runner.metrics=[anl]", "Metric 'anl' is not registered. Did you mean 'anls'?"),
        ("model.name=hff", "Model 'hff' is not registered. Did you mean 'hf'?"),
        (
            "model=no_such_model",
            "error: In 'config': Could not find 'model/no_such_model'; "
            "choose one of: custom, dummy,",
        ),
        (
            "experiment=no_such_experiment",
            "error: In 'config': Could not find "
            "'experiment/no_such_experiment'; choose one of: sample_docs_sweep",
        ),
        (
            "dataset.prompt_template=Answer briefly. {prompt}",
            "error: cannot parse the override 'dataset.prompt_template=Answer briefly. {prompt}'",
        ),
    ],
)
def test_an_invalid_value_exits_2_fast_with_one_line_and_no_model(
    model_cache: Path, tmp_path: Path, override: str, line: str
) -> None:
    result = run_cli(
        HEAVY_MODEL,
        override,
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=60,
        env=torch_refused(tmp_path),
    )
    assert result.returncode == 2, result.stdout
    (error,) = error_lines(result.stdout)
    assert line in error
    assert "Traceback" not in result.stdout
    assert "tiny-qwen2-vl (Hugging Face)" not in result.stdout  # the model never loaded


@pytest.mark.slow
def test_a_mistake_inside_an_experiment_file_is_named_in_its_one_line(model_cache, tmp_path):
    experiments = tmp_path / "conf" / "experiment"
    experiments.mkdir(parents=True)
    (experiments / "typo.yaml").write_text("# @package _global_\nrunner:\n  batch_sise: 4\n")
    result = run_cli(
        "experiment=typo",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=60,
    )
    assert result.returncode == 2
    (error,) = error_lines(result.stdout)
    assert error == (
        "error: In 'experiment/typo': ConfigKeyError raised while composing config: "
        "Key 'batch_sise' not in 'RunnerConfig'"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rows", "line"),
    [
        ([{}, {}, {"question": ""}], "annotation.csv line 4 has no ['question']; required columns"),
        ([{}, {}, {}, {"image_path": ""}], "annotation.csv line 5 has no ['image_path']"),
    ],
)
def test_a_bad_row_anywhere_in_the_dataset_exits_2_before_the_model_loads(
    model_cache: Path, tmp_path: Path, rows: list[dict], line: str
) -> None:
    root = write_dataset(tmp_path / "data", rows, images=True)
    result = run_cli(
        HEAVY_MODEL,
        "dataset=vlmhyperbench",
        f"dataset.root={root}",
        "runner.limit=1",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=60,
        env=torch_refused(tmp_path),
    )
    assert result.returncode == 2, result.stdout
    (error,) = error_lines(result.stdout)
    assert line in error
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.csv"))


@pytest.mark.slow
def test_a_row_with_surplus_fields_deep_in_the_file_is_found_before_the_model_loads(
    model_cache: Path, tmp_path: Path
) -> None:
    root = write_dataset(tmp_path / "data", [{}] * 30, images=True)
    with (root / "annotation.csv").open("a", encoding="utf-8") as handle:
        handle.write("30;test;images/0.png;q;a;form;number;surplus;fields\n")
    result = run_cli(
        HEAVY_MODEL,
        "dataset=vlmhyperbench",
        f"dataset.root={root}",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=60,
    )
    assert result.returncode == 2
    (error,) = error_lines(result.stdout)
    assert "annotation.csv line 32 has more fields than the header" in error


def test_an_experiment_sets_its_own_run_name_and_seed(model_cache: Path) -> None:
    cfg = make_config(model_cache, "experiment=sample_docs_sweep")
    assert cfg.run_name == "sample_docs_sweep"
    assert cfg.seed == 42 and cfg.dataset.seed == 42
    # ... while the command line still wins over the experiment
    assert make_config(model_cache, "experiment=sample_docs_sweep", "seed=3").seed == 3


def test_the_composed_config_becomes_typed_settings(model_cache: Path) -> None:
    settings = to_settings(make_config(model_cache, "runner.limit=5"), RunConfig)
    assert isinstance(settings.runner, RunnerConfig)
    assert settings.runner.limit == 5 and settings.runner.batch_size == 8
    assert settings.paths.cache_dir == str(model_cache)
    assert settings.model["init_params"]["model_name"] == "tiny-qwen2-vl"


def test_a_config_without_the_schema_is_checked_against_it(model_cache: Path) -> None:
    from omegaconf import OmegaConf

    plain = OmegaConf.create(OmegaConf.to_container(make_config(model_cache)))
    plain.runner.batch_size = "many"
    with pytest.raises(RunnerError, match=r"runner\.batch_size: Value 'many' of type 'str'"):
        to_settings(plain, RunConfig)


@pytest.mark.slow
@pytest.mark.parametrize("server_override", ["serve.port=abc", "serve.max_batch_size=0"])
def test_serve_refuses_a_bad_setting_with_one_line(
    model_cache: Path, tmp_path: Path, server_override: str
) -> None:
    result = run_cli(
        server_override, module="runners.serve", cwd=tmp_path, cache_dir=model_cache, timeout=60
    )
    assert result.returncode == 2, result.stdout
    (error,) = error_lines(result.stdout)
    assert "serve." in error and "Traceback" not in result.stdout
