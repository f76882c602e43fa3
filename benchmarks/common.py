"""Shared pieces of the benchmark scripts: datasets, repeats, and the figure lines they print.

Every script ends with lines ``figure=value`` so that runs can be compared by a script.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 120
SAMPLE_DOCS = REPO_ROOT / "data" / "sample_docs"

if str(REPO_ROOT) not in sys.path:  # `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from runners.datasets import VLMHYPERBENCH_COLUMNS  # noqa: E402 (after sys.path)


def scratch_dir(prefix: str) -> Path:
    """A temporary folder for one benchmark run, removed when the script exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def sample_rows() -> list[dict[str, str]]:
    with (SAMPLE_DOCS / "annotation.csv").open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def cycled_sample_docs(root: Path, n_samples: int) -> Path:
    """``n_samples`` questions cycling over the sample dataset, in the VLMHyperBench layout."""
    rows = sample_rows()
    shutil.copytree(SAMPLE_DOCS / "images", root / "images", dirs_exist_ok=True)
    write_annotation(
        root,
        [{**rows[index % len(rows)], "data_index": str(index)} for index in range(n_samples)],
    )
    return root


def generated_dataset(root: Path, n_samples: int, *, image_px: int = 32) -> Path:
    """``n_samples`` questions, each on its own small generated PNG."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n_samples):
        name = f"images/{index:05d}.png"
        colour = (index % 251, (index * 7) % 253, (index * 13) % 255)
        Image.new("RGB", (image_px, image_px), colour).save(root / name)
        rows.append(
            {
                "data_index": str(index),
                "split": "test",
                "image_path": name,
                "question": f"What is the colour of square {index}?",
                "answer": str(colour),
                "doc_class": "square",
                "question_type": "colour",
            }
        )
    write_annotation(root, rows)
    return root


def write_annotation(root: Path, rows: Sequence[dict[str, str]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "annotation.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=VLMHYPERBENCH_COLUMNS, delimiter=";", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served(model: str, workdir: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``runners.serve`` with ``model`` in a subprocess; yields its base URL and process, and
    stops it after."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "runners.serve",
        f"model={model}",
        f"serve.port={port}",
        f"hydra.run.dir={workdir / 'hydra'}",  # keep the repo's outputs/ clean
    ]
    with serving(command, port, workdir / "serve.log") as running:
        yield running


@contextlib.contextmanager
def serving(
    command: Sequence[str], port: int, log_path: Path, timeout_s: float = STARTUP_TIMEOUT_S
) -> Iterator[tuple[str, subprocess.Popen]]:
    """An OpenAI-compatible server started by ``command`` on ``port`` of 127.0.0.1; yields its
    base URL and process once /health answers, and stops it after."""
    import httpx

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            list(command), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{command[2]} did not come up:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_command(command: Sequence[str], *, env: dict[str, str] | None = None) -> float:
    """Wall seconds of a whole process, from start to exit; fails loudly if it fails."""
    return measured_process(command, env=env)[0]


def measured_process(
    command: Sequence[str], *, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a whole process, the kernel's figure for it; fails
    loudly if it fails."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty process can't block
        start = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        if status != 0:
            stderr.seek(0)
            said = stderr.read().decode(errors="replace")
            raise SystemExit(f"{' '.join(command)} failed:\n{said[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024  # kB on Linux


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[_cell(value) for value in row] for row in [header, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    for row in cells:
        print("  ".join(value.rjust(width) for value, width in zip(row, widths, strict=True)))


def print_figures(**figures: float) -> None:
    """The machine-readable tail: one ``name=value`` line per figure."""
    for name, value in figures.items():
        print(f"{name}={_cell(value)}")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def compose_config(*overrides: str):
    """The runner's config, composed exactly as ``python -m runners.run <overrides>`` would."""
    from hydra import compose, initialize_config_dir

    from runners.config.paths import CONFIG_DIR
    from runners.config.schema import register

    register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=["runner.progress=false", *overrides])


def load_bare(model_dir: Path):
    """Processor and model loaded the plain transformers way, as a script without us would."""
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    return processor, model


def bare_loop(processor, model, samples, batch_size: int, max_new_tokens: int = 16) -> list[str]:
    """The limit a runner can reach: chat template, processor and ``generate`` over images
    already decoded in memory, in dataset order, nothing else."""
    import torch

    answers = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for _, q in batch
        ]
        inputs = processor(
            text=texts, images=[[image] for image, _ in batch], padding=True, return_tensors="pt"
        )
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += processor.batch_decode(new_tokens, skip_special_tokens=True)
    return answers


def decoded_samples(dataset_root: Path) -> list[tuple[Image.Image, str]]:
    """(image, question) pairs of a VLMHyperBench-layout dataset, images decoded up front."""
    from model_interface.images import load_image

    with (dataset_root / "annotation.csv").open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    pictures = {row["image_path"]: load_image(dataset_root / row["image_path"]) for row in rows}
    return [(pictures[row["image_path"]], row["question"]) for row in rows]
