"""The five standard benchmarks as small local copies with their hub datasets' exact columns and
feature types, and a Hugging Face Hub on 127.0.0.1 that serves them, so the named dataset
configs load through the ``datasets`` library's real hub code with ``HF_ENDPOINT`` pointing
here (and then offline, from the cache it filled).

The server speaks the part of the Hub's HTTP API that ``datasets`` uses to resolve and download
a parquet dataset: ``/api/datasets/<repo>/revision/<rev>``, ``.../tree/<rev>/<path>`` and
``/datasets/<repo>/resolve/<rev>/<file>``.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

COMMIT = "5e1f00d5" * 5  # the commit every served repository is at


def benchmark_rows() -> dict[tuple[str, str | None, str], list[dict[str, Any]]]:
    """(repo, config, split) -> rows, with every column its hub dataset has. Questions are
    unique across all of them, and the first answer of each is one that scores 1."""
    docvqa = [
        {
            "questionId": str(57340 + i),
            "question": question,
            "question_types": types,
            "docId": 14465 + i // 2,
            "ucsf_document_id": "pybv0228",
            "ucsf_document_page_no": "81",
            "answers": answers,
            "data_split": "val",
        }
        for i, (question, types, answers) in enumerate(
            [
                ("What is the date mentioned in this letter?", ["others"], ["1/8/93"]),
                ("What is the contact person name?", ["layout"], ["P. Carter", "p. carter"]),
                ("Which part of Virginia is this letter sent from?", ["form"], ["Richmond"]),
                ("What is the total cost?", ["table/list", "layout"], ["$5,100.00"]),
            ]
        )
    ]
    infovqa = [
        {
            "questionId": str(98313 + i),
            "question": question,
            "answers": answers,
            "answer_type": answer_type,
            "image_url": f"https://example.invalid/{i}.jpg",
            "operation/reasoning": operation,
            "ocr": "[]",
            "data_split": "val",
        }
        for i, (question, answers, answer_type, operation) in enumerate(
            [
                (
                    "Which social platform has heavy female audience?",
                    ["pinterest"],
                    ["single span"],
                    [],
                ),
                (
                    "What percentage of users are male?",
                    ["37%", "37"],
                    ["single span"],
                    ["arithmetic"],
                ),
                ("How many hashtags are shown?", ["4"], ["non-extractive"], ["counting"]),
            ]
        )
    ]
    chartqa = [
        {"type": kind, "question": question, "answer": answer}
        for kind, question, answer in [
            ("human_test", "How many food item is shown in the bar graph?", "14"),
            ("human_test", "What is the difference in value between Lamb and Corn?", "0.57"),
            ("augmented_test", "What is the value of the highest bar?", "45%"),
            ("augmented_test", "Which country has the lowest value?", "Yemen"),
        ]
    ]
    ocrbench = [
        {"dataset": source, "question": question, "question_type": kind, "answer": answers}
        for source, question, kind, answers in [
            ("IIIT5K", "what is written in the image?", "Regular Text Recognition", ["CHAMPION"]),
            (
                "IAM",
                "what is the handwritten text in the image?",
                "Handwriting Recognition",
                ["Meanwhile"],
            ),
            (
                "STVQA",
                "What is the brand name on the sign?",
                "Scene Text-centric VQA",
                ["coca cola", "coca-cola"],
            ),
            (
                "SROIE",
                "what is the company name in the receipt?",
                "Key Information Extraction",
                ["BOOK TA .K (TAMAN DAYA) SDN BHD"],
            ),
            (
                "HME100k",
                "Please write out the expression of the formula in the image using LaTeX format.",
                "Handwritten Mathematical Expression Recognition",
                ["x ^ { 2 } + 1"],
            ),
        ]
    ]
    textvqa = [
        {
            "image_id": f"0054c91397f2fe0{i}",
            "question_id": 34602 + i,
            "question": question,
            "question_tokens": question.rstrip("?").split(),
            "image_width": 32,
            "image_height": 24,
            "flickr_original_url": "https://example.invalid/o.jpg",
            "flickr_300k_url": "https://example.invalid/s.jpg",
            "answers": answers,
            "image_classes": ["Camera"],
            "set_name": "val",
            "ocr_tokens": ["nous", "les", "gosses"],
        }
        for i, (question, answers) in enumerate(
            [
                ("what is the brand of this camera?", ["dakota"] * 7 + ["clos culombu"] * 3),
                ("what does the small white text spell?", ["copenhagen"] * 10),
                ("what kind of beer is this?", ["ale"] * 4 + ["stout"] * 3 + ["beer"] * 3),
            ]
        )
    ]
    return {
        ("lmms-lab-encoder/DocVQA", "DocVQA", "validation"): docvqa,
        ("lmms-lab-encoder/DocVQA", "InfographicVQA", "validation"): infovqa,
        ("lmms-lab-encoder/ChartQA", None, "test"): chartqa,
        ("echo840/OCRBench", None, "test"): ocrbench,
        ("lmms-lab-encoder/textvqa", None, "validation"): textvqa,
    }


def _features(repo: str, config: str | None) -> Any:
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    text, texts = Value("string"), List(Value("string"))
    by_dataset = {
        "DocVQA": {
            "questionId": text,
            "question": text,
            "question_types": texts,
            "image": ImageFeature(),
            "docId": Value("int64"),
            "ucsf_document_id": text,
            "ucsf_document_page_no": text,
            "answers": texts,
            "data_split": text,
        },
        "InfographicVQA": {
            "questionId": text,
            "question": text,
            "answers": texts,
            "answer_type": texts,
            "image": ImageFeature(),
            "image_url": text,
            "operation/reasoning": texts,
            "ocr": text,
            "data_split": text,
        },
        "ChartQA": {"type": text, "question": text, "answer": text, "image": ImageFeature()},
        "OCRBench": {
            "dataset": text,
            "question": text,
            "question_type": text,
            "answer": texts,
            "image": ImageFeature(),
        },
        "textvqa": {
            "image_id": text,
            "question_id": Value("int32"),
            "question": text,
            "question_tokens": texts,
            "image": ImageFeature(),
            "image_width": Value("int32"),
            "image_height": Value("int32"),
            "flickr_original_url": text,
            "flickr_300k_url": text,
            "answers": texts,
            "image_classes": texts,
            "set_name": text,
            "ocr_tokens": texts,
        },
    }
    return Features(by_dataset[config or repo.split("/")[1]])


def png(index: int, size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40 * index % 256, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_benchmark_repos(folder: Path) -> dict[str, str]:
    """Each benchmark's repository under ``folder/<owner>/<name>/`` (parquet files and the
    README's ``configs`` list, as the hub holds them). Returns question -> an answer that
    scores 1, for :class:`tests.support.wrappers.KnownAnswers`."""
    from datasets import Dataset

    answers: dict[str, str] = {}
    configs: dict[str, list[str]] = {}
    for (repo, config, split), rows in benchmark_rows().items():
        for index, row in enumerate(rows):
            row["image"] = {"bytes": png(index), "path": None}
            reference = row.get("answers", row.get("answer"))
            answers[row["question"]] = reference if isinstance(reference, str) else reference[0]
        table = Dataset.from_list(rows, features=_features(repo, config))
        prefix = f"{config}/" if config else "data/"
        target = folder / repo / f"{prefix}{split}-00000-of-00001.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(str(target))
        configs.setdefault(repo, []).append(
            f"- config_name: {config or 'default'}\n  data_files:\n  - split: {split}\n"
            f"    path: {prefix}{split}-*\n"
        )
    for repo, entries in configs.items():
        card = "---\nconfigs:\n" + "".join(entries) + "---\n"
        (folder / repo / "README.md").write_text(card, encoding="utf-8")
    return answers


class _Hub(BaseHTTPRequestHandler):
    repos: Path

    def log_message(self, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        parts = path.strip("/").split("/")
        if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
            file = self.repos / parts[1] / parts[2] / "/".join(parts[5:])
            if not file.is_file():
                return self._send(404, b"", head, {"X-Error-Code": "EntryNotFound"})
            body = file.read_bytes()
            etag = hashlib.sha256(body).hexdigest()
            return self._send(200, body, head, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'})
        if parts[:2] == ["api", "datasets"] and len(parts) >= 6:
            repo = self.repos / parts[2] / parts[3]
            if not repo.is_dir():
                return self._send(404, b"", head, {"X-Error-Code": "RepoNotFound"})
            if parts[4] == "revision":
                files = [
                    {"rfilename": str(item.relative_to(repo))}
                    for item in sorted(repo.rglob("*"))
                    if item.is_file()
                ]
                info = {"id": f"{parts[2]}/{parts[3]}", "sha": COMMIT, "siblings": files}
                return self._json(info, head)
            if parts[4] == "tree":
                folder = repo.joinpath(*parts[6:])
                entries = (
                    [
                        {"type": "directory", "path": str(item.relative_to(repo)), "oid": "0" * 40}
                        if item.is_dir()
                        else {
                            "type": "file",
                            "path": str(item.relative_to(repo)),
                            "size": item.stat().st_size,
                            "oid": "1" * 40,
                        }
                        for item in sorted(folder.iterdir())
                    ]
                    if folder.is_dir()
                    else []
                )
                return self._json(entries, head)
        self._send(404, b"", head)

    def _json(self, value: Any, head: bool) -> None:
        self._send(200, json.dumps(value).encode(), head, {"Content-Type": "application/json"})

    def _send(self, status: int, body: bytes, head: bool, headers: dict[str, str] | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


@contextmanager
def serve_hub(repos: Path) -> Iterator[str]:
    """A hub serving the repositories under ``repos`` on 127.0.0.1; yields its URL."""
    handler = type("Hub", (_Hub,), {"repos": repos})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
