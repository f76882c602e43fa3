"""Model weights in the user's ``cache_dir``: find them, download them, list them.

Every backend loads from a local directory. :func:`resolve_model` turns a model name into one:

1. a local directory is used as it is;
2. a tiny offline model name (``tiny-qwen2-vl``, ...) is built into ``cache_dir`` on first use;
3. a hub repo id already in ``cache_dir`` is found there with no network call at all;
4. otherwise it is downloaded into ``cache_dir`` (unless offline), or a clear error says how
   to fetch it.

Command line, for preparing an offline cache on a machine with internet (``--cache-dir``
defaults to the runner's cache, :func:`default_cache_dir`)::

    python -m model_interface.cache download Qwen/Qwen2-VL-2B-Instruct
    python -m model_interface.cache list
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from model_interface import tiny

# Formats no PyTorch backend loads; skipping them keeps downloads to what is used.
IGNORED_WEIGHT_PATTERNS = [
    "*.gguf",
    "*.onnx",
    "*.msgpack",
    "*.h5",
    "*.tflite",
    "*.ot",
    "original/*",
]


class ModelNotCachedError(FileNotFoundError):
    """The model is not in ``cache_dir`` and can't be downloaded now."""


def default_cache_dir() -> str:
    """Where the runner keeps weights: ``$MODEL_INTERFACE_CACHE``, else
    ``~/.cache/model_interface``."""
    return os.environ.get("MODEL_INTERFACE_CACHE") or str(
        Path.home() / ".cache" / "model_interface"
    )


@dataclass(frozen=True)
class ResolvedModel:
    path: str
    """A local directory holding the model's files, ready for ``from_pretrained``."""
    cache_hit: bool
    """True when nothing had to be downloaded or built."""
    random_weights: bool = False
    """True for a tiny offline model: its answers are gibberish, its scores mean nothing."""


def resolve_model(
    model_name: str, cache_dir: str | os.PathLike, *, revision: str | None = None
) -> ResolvedModel:
    """Find ``model_name`` locally (directory, tiny model, or ``cache_dir``), else download it."""
    if Path(model_name).expanduser().is_dir():
        return ResolvedModel(str(Path(model_name).expanduser()), cache_hit=True)
    if tiny.is_tiny_model(model_name):
        built_before = tiny.tiny_model_dir(model_name, cache_dir).is_dir()
        path = str(tiny.ensure_tiny_model(model_name, cache_dir))
        return ResolvedModel(path, built_before, random_weights=True)
    _refuse_a_misspelt_tiny_name(model_name)

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = snapshot_download(
            model_name, cache_dir=cache_dir, revision=revision, local_files_only=True
        )
        return ResolvedModel(path, cache_hit=True)
    except HFValidationError:
        raise ModelNotCachedError(
            f"model {model_name!r} is neither a local directory, a tiny model "
            f"({', '.join(tiny.TINY_MODEL_NAMES)}), nor a valid hub repo id like "
            "'Qwen/Qwen2-VL-2B-Instruct'"
        ) from None
    except LocalEntryNotFoundError:
        pass

    how_to_fetch = (
        f"On a machine with internet run `python -m model_interface.cache download {model_name} "
        f"--cache-dir {cache_dir}` and copy that directory here, or set cache_dir to where the "
        "model already is."
    )
    if constants.HF_HUB_OFFLINE:
        raise ModelNotCachedError(
            f"model {model_name!r} is not in cache_dir {str(cache_dir)!r} and HF_HUB_OFFLINE is "
            f"set, so it can't be downloaded. {how_to_fetch}"
        )
    try:
        path = download(model_name, cache_dir, revision=revision)
    except Exception as error:
        raise ModelNotCachedError(
            f"model {model_name!r} is not in cache_dir {str(cache_dir)!r} and downloading it "
            f"failed ({type(error).__name__}: {error}). {how_to_fetch}"
        ) from error
    return ResolvedModel(path, cache_hit=False)


def _refuse_a_misspelt_tiny_name(model_name: str) -> None:
    """A name like ``tiny-qwen2vl`` is a typo, not a hub repo to look up."""
    if "/" in model_name:
        return
    close = difflib.get_close_matches(model_name, tiny.TINY_MODEL_NAMES, n=1, cutoff=0.8)
    if close or model_name.startswith("tiny-"):
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        raise ModelNotCachedError(
            f"model {model_name!r} is not a tiny model; {suggestion}tiny models: "
            f"{', '.join(tiny.TINY_MODEL_NAMES)}"
        )


def download(model_name: str, cache_dir: str | os.PathLike, *, revision: str | None = None) -> str:
    """Download a hub repo's files into ``cache_dir``; returns the local snapshot directory."""
    from huggingface_hub import snapshot_download

    return snapshot_download(
        model_name, cache_dir=cache_dir, revision=revision, ignore_patterns=IGNORED_WEIGHT_PATTERNS
    )


@dataclass(frozen=True)
class CachedModel:
    name: str
    size_bytes: int
    path: str


def list_cached(cache_dir: str | os.PathLike) -> list[CachedModel]:
    """Hub models and tiny models present in ``cache_dir``, sorted by name."""
    found = [
        CachedModel(path.name, _directory_size(path), str(path))
        for path in tiny.list_tiny_models(cache_dir)
    ]
    if Path(cache_dir).is_dir():
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir(cache_dir).repos:
            found.append(CachedModel(repo.repo_id, repo.size_on_disk, str(repo.repo_path)))
    return sorted(found, key=lambda model: model.name)


def _directory_size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def _format_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_interface.cache", description="Manage model weights in a cache_dir."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="download a hub model (or build a tiny one)")
    fetch.add_argument("model", help="hub repo id, e.g. Qwen/Qwen2-VL-2B-Instruct, or tiny-*")
    cache_help = "default: $MODEL_INTERFACE_CACHE, else ~/.cache/model_interface (%(default)s)"
    fetch.add_argument("--cache-dir", default=default_cache_dir(), help=cache_help)
    fetch.add_argument("--revision", default=None)
    show = commands.add_parser("list", help="list the models in a cache_dir and their sizes")
    show.add_argument("--cache-dir", default=default_cache_dir(), help=cache_help)
    args = parser.parse_args(argv)

    if args.command == "download":
        try:
            resolved = resolve_model(args.model, args.cache_dir, revision=args.revision)
        except ModelNotCachedError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        state = "already cached" if resolved.cache_hit else "fetched"
        print(f"{args.model}: {state} at {resolved.path}")
        return 0

    models = list_cached(args.cache_dir)
    if not models:
        print(f"no models in {args.cache_dir}")
        return 0
    width = max(len(model.name) for model in models)
    for model in models:
        print(f"{model.name:<{width}}  {_format_size(model.size_bytes):>9}  {model.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
