"""The weight cache: resolving names to local directories, and the `cache` command line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from model_interface import tiny
from model_interface.cache import ModelNotCachedError, list_cached, main, resolve_model


@pytest.mark.slow
def test_a_local_directory_is_used_as_it_is(model_cache: Path) -> None:
    path = tiny.ensure_tiny_model("tiny-llava", model_cache)
    resolved = resolve_model(str(path), "unused_cache")
    assert (resolved.path, resolved.cache_hit) == (str(path), True)


def test_an_invalid_name_says_what_a_name_may_be(tmp_path: Path) -> None:
    with pytest.raises(ModelNotCachedError, match="neither a local directory, a tiny model"):
        resolve_model("not a valid//repo id", tmp_path)


def test_download_builds_a_tiny_model_once(tmp_path: Path, capsys) -> None:
    assert main(["download", "tiny-llava", "--cache-dir", str(tmp_path)]) == 0
    assert "tiny-llava: fetched at" in capsys.readouterr().out
    assert main(["download", "tiny-llava", "--cache-dir", str(tmp_path)]) == 0
    assert "tiny-llava: already cached at" in capsys.readouterr().out


def test_download_of_an_unreachable_model_fails_with_the_reason(tmp_path: Path, capsys) -> None:
    assert main(["download", "acme/not-here", "--cache-dir", str(tmp_path)]) == 1
    assert "'acme/not-here' is not in cache_dir" in capsys.readouterr().err


def test_list_shows_tiny_and_hub_models_with_sizes(model_cache: Path, tmp_path: Path, capsys):
    assert main(["list", "--cache-dir", str(tmp_path / "empty")]) == 0
    assert "no models in" in capsys.readouterr().out

    cache_dir = tmp_path / "cache"
    tiny.ensure_tiny_model("tiny-gemma3", cache_dir)
    commit = "0" * 40
    snapshot = cache_dir / "models--acme--tiny-vl" / "snapshots" / commit
    shutil.copytree(tiny.ensure_tiny_model("tiny-llava", model_cache), snapshot)
    (cache_dir / "models--acme--tiny-vl" / "refs").mkdir()
    (cache_dir / "models--acme--tiny-vl" / "refs" / "main").write_text(commit)

    assert [model.name for model in list_cached(cache_dir)] == ["acme/tiny-vl", "tiny-gemma3"]
    assert all(model.size_bytes > 100_000 for model in list_cached(cache_dir))
    assert main(["list", "--cache-dir", str(cache_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("acme/tiny-vl") and ("KB" in lines[0] or "MB" in lines[0])
    assert lines[1].startswith("tiny-gemma3")


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("tiny-qwen2vl", "tiny-qwen2-vl"),
        ("tiny_llava", "tiny-llava"),
        ("tiny-qwen25-vl", "tiny-qwen2.5-vl"),
    ],
)
def test_a_misspelt_tiny_name_suggests_the_closest_instead_of_asking_the_hub(
    tmp_path: Path, typo: str, meant: str
) -> None:
    with pytest.raises(ModelNotCachedError, match=f"did you mean '{re.escape(meant)}'"):
        resolve_model(typo, tmp_path)
    with pytest.raises(
        ModelNotCachedError, match="is not a tiny model; tiny models: tiny-qwen2-vl"
    ):
        resolve_model("tiny-something-else", tmp_path)


def test_the_command_line_defaults_to_the_runners_cache_dir(
    model_cache: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    tiny.ensure_tiny_model("tiny-llava", model_cache)
    monkeypatch.chdir(tmp_path)  # the old default, ./model_cache, would be empty here
    monkeypatch.setenv("MODEL_INTERFACE_CACHE", str(model_cache))
    assert main(["list"]) == 0
    assert "tiny-llava" in capsys.readouterr().out
    monkeypatch.delenv("MODEL_INTERFACE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["download", "tiny-llava"]) == 0
    built = tmp_path / "home" / ".cache" / "model_interface"
    assert f"tiny-llava: fetched at {built}" in capsys.readouterr().out
    assert not (tmp_path / "model_cache").exists()
