"""Helpers the runner tests share: composing configs, running the command line, writing
datasets, reading outputs."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir
from PIL import Image

from runners.config.paths import CONFIG_DIR, PROJECT_ROOT
from runners.config.schema import register
from runners.datasets import VLMHYPERBENCH_COLUMNS

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout the tests run in
ANNOTATION_COLUMNS = list(VLMHYPERBENCH_COLUMNS)


def make_config(cache_dir: Path, *overrides: str, config_name: str = "config") -> Any:
    register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base = [f"paths.cache_dir={cache_dir}"]
        if config_name != "serve":
            base.append("runner.progress=false")
        return compose(config_name, overrides=[*base, *overrides])


def run_cli(
    *args: str,
    cwd: Path,
    cache_dir: Path,
    timeout: float = 300,
    module: str = "runners.run",
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """``python -m runners.run ARGS`` in ``cwd``, stdout and stderr read together."""
    env = {
        **os.environ,
        "MODEL_INTERFACE_CACHE": str(cache_dir),
        "PYTHONPATH": str(PROJECT_ROOT),
        "HF_HUB_OFFLINE": "1",
    }
    env.update(kwargs.pop("env", {}))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # Hydra logs to stdout, tqdm to stderr: read them together
        text=True,
        timeout=timeout,
        **kwargs,
    )


def run_until_killed(
    *args: str, cwd: Path, cache_dir: Path, answers: Path, lines: int, timeout: float = 120
) -> None:
    """``python -m runners.run ARGS`` in ``cwd``, killed with SIGKILL (no chance to clean up) as
    soon as the file ``answers`` holds more than ``lines`` lines."""
    env = {**os.environ, "MODEL_INTERFACE_CACHE": str(cache_dir), "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "runners.run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_lines(answers, lines, process, timeout)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()


def wait_for_lines(path: Path, lines: int, process: subprocess.Popen, timeout_s: float) -> None:
    """Return once the file ``path`` holds more than ``lines`` lines; fail if ``process`` (the
    one writing it) ends first, with its output where it was captured, or ``timeout_s`` pass."""
    deadline = time.monotonic() + timeout_s
    while not path.exists() or path.read_text().count("\n") <= lines:
        if process.poll() is not None:
            output = process.communicate()[0] if process.stdout else ""
            raise AssertionError(f"the run ended before it could be stopped:\n{output[-3000:]}")
        assert time.monotonic() < deadline, f"{path} got no more than {lines} lines in time"
        time.sleep(0.01)


def torch_refused(tmp_path: Path) -> dict[str, str]:
    """An environment for :func:`run_cli` in which ``import torch`` fails: a command that must
    stop before loading a model shows it did by ending as it should there."""
    shadow = tmp_path / "torch_refused"
    (shadow / "torch").mkdir(parents=True, exist_ok=True)
    (shadow / "torch" / "__init__.py").write_text(
        "raise ImportError('torch was imported, but this command should have stopped before')\n"
    )
    return {"PYTHONPATH": f"{shadow}{os.pathsep}{PROJECT_ROOT}"}


def error_lines(output: str) -> list[str]:
    """The lines of a command's output that report an error."""
    return [line for line in output.splitlines() if "[ERROR]" in line or line.startswith("error:")]


def write_dataset(root: Path, rows: list[dict[str, Any]], *, images: bool = False) -> Path:
    """A VLMHyperBench-layout dataset: annotation.csv (with BOM) and, with ``images``, a small
    white picture for every image path that does not exist yet."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "annotation.csv").open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ANNOTATION_COLUMNS, delimiter=";")
        writer.writeheader()
        for index, row in enumerate(rows):
            writer.writerow(
                {
                    "data_index": index,
                    "split": "test",
                    "image_path": f"images/{index}.png",
                    "question": f"question {index}?",
                    "answer": "42",
                    "doc_class": "form",
                    "question_type": "number",
                    **row,
                }
            )
    for index, row in enumerate(rows):
        image = root / row.get("image_path", f"images/{index}.png")
        if images and not image.exists():
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), "white").save(image)
    return root


def write_jsonl(root: Path, rows: list[dict[str, Any]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "data.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            Image.new("RGB", (8, 8), "white").save(root / row["image"])
    return root


def read_predictions(output_dir: Path) -> pd.DataFrame:
    return pd.read_csv(
        output_dir / "predictions.csv",
        dtype={"sample_id": str, "error": str},
        keep_default_na=False,
    )


def read_metrics(output_dir: Path) -> dict[str, Any]:
    return pd.read_csv(output_dir / "metrics.csv").iloc[0].to_dict()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """An OpenAI-compatible server run as a command (``runners.serve``, ``vllm serve``) on a
    free port of 127.0.0.1, its output in ``log``; it can be killed and started again on the
    same port."""

    def __init__(
        self,
        command: list[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.log, self.env, self.cwd = log, {**os.environ, **(env or {})}, cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120) -> ServerProcess:
        """Start it and wait until ``/health`` answers 200 (or fail with the end of its log)."""
        import httpx

        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while True:
            tail = f"\n{self.log.read_text(errors='replace')[-3000:]}"
            assert self.process.poll() is None, f"the server exited:{tail}"
            assert time.monotonic() < deadline, f"no /health in {timeout_s} s:{tail}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients, as when a server dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def runners_serve(*overrides: str, workdir: Path, cache_dir: Path) -> ServerProcess:
    """``python -m runners.serve OVERRIDES`` on a free port, run in ``workdir`` (not started)."""
    return ServerProcess(
        [sys.executable, "-m", "runners.serve", *overrides, "serve.port={port}"],
        log=workdir / "serve.log",
        cwd=workdir,
        env={
            "MODEL_INTERFACE_CACHE": str(cache_dir),
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(PROJECT_ROOT),
        },
    )


def run_and_kill_the_server(
    arguments: list[str],
    *,
    server: ServerProcess,
    run_dir: Path,
    after_rows: int,
    cwd: Path,
    env: dict[str, str],
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m runners.run ARGUMENTS``, a run against ``server``, which is killed once the
    run's predictions.csv holds ``after_rows`` rows; returns the run's exit and output."""
    command = [sys.executable, "-m", "runners.run", *arguments]
    runner = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_lines(run_dir / "predictions.csv", after_rows, runner, timeout_s)
        server.kill()
        output, _ = runner.communicate(timeout=timeout_s)
    finally:
        runner.kill()
    return subprocess.CompletedProcess(command, runner.returncode, output)


@contextlib.contextmanager
def serve_in_thread(model: Any, name: str, **options: Any) -> Iterator[str]:
    """create_app in a real uvicorn server on a free port; yields the base URL."""
    import uvicorn

    from runners.serve import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(model, name, **options), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


DEMO_QUESTIONS = {
    "passport": [
        "Фамилия",
        "Имя",
        "Отчество",
        "Дата рождения",
        "Место рождения",
        "Серия и номер",
        "Код подразделения",
    ],
    "invoice": ["Номер счёта", "Дата", "Поставщик", "Итого"],
}


def write_demo_dataset(root: Path) -> Path:
    """A dataset shaped like VLMHyperBench's demo_mini: two JPEG passports with 7 questions each
    and two PNG invoices with 4, scans of 1,500-2,500 px, a BOM, Cyrillic questions and
    answers, ``data_index`` naming the document (repeated by its questions), and an
    ``answer_bbox`` column of list text."""
    from PIL import ImageDraw, ImageFont

    (root / "images").mkdir(parents=True, exist_ok=True)
    documents = [
        ("passport", "jpg", (1800, 1250)),
        ("passport", "jpg", (1750, 1240)),
        ("invoice", "png", (1700, 2400)),
        ("invoice", "png", (1654, 2339)),
    ]
    font = ImageFont.load_default(size=26)
    words = ["Invoice", "Total", "Supplier", "Date", "Amount", "VAT", "No.", "Qty", "Bank"]
    rows = []
    for index, (doc_class, suffix, size) in enumerate(documents):
        image = Image.new("RGB", size, (250, 248, 240))
        draw = ImageDraw.Draw(image)
        for line in range((size[1] - 160) // 34):  # lines of text: a scan compresses like one
            text = " ".join(
                f"{words[(index + line * 7 + word) % len(words)]}{line * word}"
                for word in range(3 + (line * 5) % 8)
            )
            draw.text((90, 80 + line * 34), text, fill=(30, 30, 35), font=font)
        name = f"images/{doc_class}_{index}.{suffix}"
        image.save(root / name, quality=85) if suffix == "jpg" else image.save(root / name)
        for number, question_type in enumerate(DEMO_QUESTIONS[doc_class]):
            rows.append(
                {
                    "data_index": index,
                    "split": "test",
                    "image_path": name,
                    "question": f"Какое значение поля «{question_type}»?",
                    "answer": f"ЗНАЧЕНИЕ {index}-{number}",
                    "doc_class": doc_class,
                    "question_type": question_type,
                    "answer_bbox": (
                        f"[[{100 + number}, {120 + number * 40}, 600, {160 + number * 40}]]"
                    ),
                }
            )
    with (root / "annotation.csv").open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=[*ANNOTATION_COLUMNS, "answer_bbox"], delimiter=";"
        )
        writer.writeheader()
        writer.writerows(rows)
    return root
