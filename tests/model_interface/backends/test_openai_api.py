"""OpenAIModel against real HTTP servers on 127.0.0.1: a scripted fault-injecting server written
here, runners.serve in a thread, and runners.serve as a subprocess serving a tiny model.

Nothing is mocked: every request goes through httpx and a real socket.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from PIL import Image

from model_interface.backends.dummy import DummyModel
from model_interface.backends.openai_api import OpenAIModel
from model_interface.model_interface import ModelUnavailable, Prediction, PredictionRequest
from runners.run import PROJECT_ROOT
from tests.support.helpers import free_port, run_and_kill_the_server, runners_serve, serve_in_thread

SAMPLE_IMAGES = sorted((PROJECT_ROOT / "data" / "sample_docs" / "images").glob("*.png"))
SECRET = "sk-test-SECRET-5f1e0c9a7b"


def small_image(shade: int = 0) -> Image.Image:
    return Image.new("RGB", (8, 8), (shade, 0, 0))


def requests_for(prompts: list[str]) -> list[PredictionRequest]:
    return [PredictionRequest([small_image(index)], prompt) for index, prompt in enumerate(prompts)]


# --- a scripted OpenAI-compatible server -----------------------------------------------------


@dataclass
class Fault:
    """What the server does with one request instead of answering it."""

    status: int | None = None  # answer with this status and an OpenAI-style error body
    message: str = "injected failure"
    retry_after: str | None = None
    hang_s: float = 0.0  # wait this long before answering (past the client's timeout)
    drop: bool = False  # close the connection without a response
    drip_s: float = 0.0  # send the answer one byte at a time, this long apart


@dataclass
class FakeServer:
    """Answers chat completions with ``echo: <the user's text>``; the first requests get the
    scripted faults. Records every request's headers and body, and how many overlapped."""

    faults: list[Fault] = field(default_factory=list)
    delay_s: Any = 0.0  # seconds per request, or a function of the prompt
    model_id: str = "fake-model"
    echo_authorization: bool = False  # put the request's Authorization header in every answer
    requests: list[dict[str, Any]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # prompts, in the order answered
    sent_in_full: list[str] = field(default_factory=list)  # prompts whose answer was all sent
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.clients: list[OpenAIModel] = []  # closed with the server
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_for(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real servers
        disable_nagle_algorithm = True  # headers and body go out in separate writes

        def log_message(self, *args: Any) -> None:  # keep pytest's output clean
            pass

        def do_GET(self) -> None:
            self._json(200, {"object": "list", "data": [{"id": server.model_id}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"][-1]["text"]
            with server.lock:
                server.requests.append(
                    {"headers": dict(self.headers), "body": body, "at": time.monotonic()}
                )
                fault = server.faults.pop(0) if server.faults else None
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                delay = server.delay_s(prompt) if callable(server.delay_s) else server.delay_s
                time.sleep(delay + (fault.hang_s if fault else 0))
                if fault is not None and fault.drop:
                    self.close_connection = True
                    return
                echoed = (
                    f" {self.headers.get('Authorization')}" if server.echo_authorization else ""
                )
                if fault is not None and fault.status is not None:
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    error = {"error": {"message": fault.message + echoed, "type": "test"}}
                    self._json(fault.status, error, headers)
                    return
                with server.lock:
                    server.finished.append(prompt)
                answer = _completion(f"echo: {prompt}{echoed}", server.model_id)
                self._json(200, answer, drip_s=fault.drip_s if fault else 0.0)
                with server.lock:
                    server.sent_in_full.append(prompt)
            except OSError:  # the client gave up (timeout) and closed the connection
                pass
            finally:
                with server.lock:
                    server.in_flight -= 1

        def _json(
            self,
            status: int,
            payload: Any,
            headers: dict[str, str] | None = None,
            drip_s: float = 0.0,
        ) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if not drip_s:
                self.wfile.write(data)
                return
            for byte in data:  # a byte at a time: no single read ever waits long
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(drip_s)

    return Handler


def _completion(text: str, model_id: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": len(text.split())},
    }


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def client_for(server: FakeServer, **options: Any) -> OpenAIModel:
    options = {"retry_backoff_s": 0.01, "timeout": 5, **options}
    model = OpenAIModel(base_url=server.base_url, **options)
    server.clients.append(model)
    return model


CLIENT_LOG = "model_interface.backends.openai_api"


@pytest.fixture
def client_log(caplog) -> pytest.LogCaptureFixture:
    """The client's log, retries (INFO) included."""
    caplog.set_level(logging.INFO, logger=CLIENT_LOG)
    return caplog


def retry_delays(log: pytest.LogCaptureFixture) -> list[float]:
    """The seconds the client chose to wait before each retry, as it logged them."""
    return [r.args[-1] for r in log.records if r.name == CLIENT_LOG and "; retry" in r.msg]


# --- requests and answers --------------------------------------------------------------------


def test_empty_model_name_takes_the_first_listed_model_and_the_body_is_complete(
    fake_server,
) -> None:
    model = client_for(
        fake_server,
        system_prompt="Be brief.",
        max_new_tokens=7,
        seed=3,
        generation_kwargs={"stop": ["\n"]},
    )
    assert model.model_name == "fake-model" and model.framework == "OpenAI API"
    (prediction,) = model.predict_batch([PredictionRequest([small_image(), small_image()], "Q?")])
    model.close()

    assert prediction.text == "echo: Q?" and prediction.error is None
    assert (prediction.prompt_tokens, prediction.completion_tokens) == (11, 2)
    (sent,) = fake_server.requests
    body = sent["body"]
    assert body["model"] == "fake-model"
    assert (body["max_tokens"], body["temperature"]) == (7, 0.0)
    assert body["seed"] == 3 and body["stop"] == ["\n"]
    # greedy: no sampling options; unset ones are never sent
    assert {"top_p", "top_k", "repetition_penalty"}.isdisjoint(body)
    system, user = body["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    kinds = [part["type"] for part in user["content"]]
    assert kinds == ["image_url", "image_url", "text"]
    assert user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "authorization" not in {name.lower() for name in sent["headers"]}  # no key: no header


@pytest.mark.parametrize(
    ("init", "generation", "sent"),
    [
        ({}, None, None),  # not set: the server's own limit applies
        ({"max_new_tokens": None}, None, None),
        ({}, {"max_new_tokens": 5}, 5),  # a request's own is sent
        ({"max_new_tokens": 7}, None, 7),
        ({"max_new_tokens": 7}, {"max_new_tokens": 5}, 5),
        ({"generation_kwargs": {"max_tokens": 9}}, None, 9),  # passed through as it is
    ],
)
def test_max_tokens_is_sent_only_when_asked_for(fake_server, init, generation, sent) -> None:
    model = client_for(fake_server, model_name="m", **init)
    (prediction,) = model.predict_batch([PredictionRequest([], "Q", generation=generation)])
    model.close()
    assert prediction.error is None
    (request,) = fake_server.requests
    assert request["body"].get("max_tokens") == sent
    assert "max_completion_tokens" not in request["body"]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            PredictionRequest([], "total: \ud800?"),
            "the prompt is not valid Unicode (lone surrogate \\ud800 at character 7)",
        ),
        (
            PredictionRequest([], "Q", system_prompt="\udfff"),
            "the system prompt is not valid Unicode (lone surrogate \\udfff at character 0)",
        ),
    ],
    ids=["prompt", "system prompt"],
)
def test_text_that_is_not_unicode_fails_its_request_alone_and_is_not_sent(
    fake_server, client_log, request_, message
) -> None:
    model = client_for(fake_server, model_name="m")
    failed, answered = model.predict_batch([request_, PredictionRequest([], "fine")])
    model.close()
    assert failed.error == (
        f"{message}, so it was not sent; fix the text (a surrogate must be one half of a pair)"
    )
    assert answered.error is None and answered.text == "echo: fine"
    assert [r["body"]["messages"][-1]["content"][-1]["text"] for r in fake_server.requests] == [
        "fine"
    ]
    # One line for the failure, without a traceback.
    (warning,) = [r for r in client_log.records if r.name == CLIENT_LOG and r.levelname != "INFO"]
    assert warning.getMessage() == failed.error and warning.exc_info is None


def test_a_response_format_is_sent_as_openais_json_schema(fake_server) -> None:
    schema = {"type": "object", "properties": {"total": {"type": "string"}}}
    model = client_for(fake_server, model_name="m")
    model.predict_batch([PredictionRequest([small_image()], "Q", response_format=schema)])
    model.close()
    assert fake_server.requests[0]["body"]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


def test_a_request_system_prompt_overrides_the_clients(fake_server) -> None:
    model = client_for(fake_server, model_name="m", system_prompt="Mine.")
    model.predict_batch([PredictionRequest([small_image()], "Q", system_prompt="")])
    model.close()
    messages = fake_server.requests[0]["body"]["messages"]
    assert [message["role"] for message in messages] == ["user"]  # "" means no system message


# --- retries and failures --------------------------------------------------------------------


def test_5xx_answers_are_retried_until_one_succeeds(fake_server) -> None:
    fake_server.faults = [Fault(500), Fault(502), Fault(503)]
    model = client_for(fake_server, model_name="m", max_retries=3)
    (prediction,) = model.predict_batch(requests_for(["Q"]))
    assert prediction.error is None and prediction.text == "echo: Q"
    assert len(fake_server.requests) == 4


def test_a_429_is_retried_after_the_servers_retry_after(fake_server, client_log) -> None:
    fake_server.faults = [Fault(429, "slow down", retry_after="0.4")]
    model = client_for(fake_server, model_name="m", retry_backoff_s=0.001)
    (prediction,) = model.predict_batch(requests_for(["Q"]))
    assert prediction.text == "echo: Q"
    assert retry_delays(client_log) == [0.4]  # the backoff alone would be ~1 ms
    assert len(fake_server.requests) == 2


def test_a_request_that_times_out_is_retried(fake_server) -> None:
    fake_server.faults = [Fault(hang_s=1.5)]
    model = client_for(fake_server, model_name="m", timeout=0.3)
    (prediction,) = model.predict_batch(requests_for(["Q"]))
    assert prediction.error is None and prediction.text == "echo: Q"
    assert len(fake_server.requests) == 2


def test_a_dropped_connection_is_retried(fake_server) -> None:
    fake_server.faults = [Fault(drop=True)]
    model = client_for(fake_server, model_name="m")
    (prediction,) = model.predict_batch(requests_for(["Q"]))
    assert prediction.error is None and prediction.text == "echo: Q"
    assert len(fake_server.requests) == 2


def test_a_server_that_drips_its_answer_is_cut_off_at_the_timeout(fake_server) -> None:
    fake_server.faults = [Fault(drip_s=0.05)]  # ~200 bytes: 10 s to answer in full
    model = client_for(fake_server, model_name="m", timeout=0.5, max_retries=0)
    (prediction,) = model.predict_batch(requests_for(["Q"]))
    assert fake_server.sent_in_full == []  # the client gave up before the answer was all sent
    assert prediction.error.endswith(
        "failed after 1 attempt(s); last: no answer within timeout=0.5 s"
    )


def test_a_request_and_all_its_retries_stop_at_the_deadline(fake_server) -> None:
    fake_server.faults = [Fault(503, "busy", retry_after="0.3")] * 20
    model = client_for(fake_server, model_name="m", max_retries=20, deadline_s=1)
    (prediction,) = model.predict_batch(requests_for(["Q"]))
    assert prediction.error == (
        f"POST {fake_server.base_url}/chat/completions got no answer within deadline_s=1 s"
    )
    assert 2 <= len(fake_server.requests) <= 5  # 0.3 s apart: not the 21 max_retries allows


@pytest.mark.parametrize("retry_after", ["nan", "inf", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_a_malformed_retry_after_falls_back_to_backoff(
    fake_server, client_log, retry_after
) -> None:
    fake_server.faults = [Fault(429, "slow down", retry_after=retry_after)]
    model = client_for(fake_server, model_name="m")  # retry_backoff_s=0.01
    (prediction,) = model.predict_batch(requests_for(["Q"]))
    assert prediction.error is None and prediction.text == "echo: Q"
    (delay,) = retry_delays(client_log)
    assert 0 <= delay <= 0.01  # the first backoff's jitter, not the header's value


def test_a_key_the_server_echoes_back_is_masked(fake_server, monkeypatch) -> None:
    monkeypatch.setenv("MY_KEY", SECRET)
    fake_server.echo_authorization = True
    fake_server.faults = [Fault(400, "bad request from")]
    model = client_for(fake_server, model_name="m", api_key_env="MY_KEY", concurrency=1)
    refused, answered = model.predict_batch(requests_for(["A", "B"]))
    model.close()
    assert refused.error.endswith("HTTP 400: bad request from Bearer *** (not retried)")
    assert answered.text == "echo: B Bearer ***"


def test_a_400_is_not_retried_and_says_the_servers_message(fake_server) -> None:
    fake_server.faults = [Fault(400, "image too large for this model")]
    model = client_for(fake_server, model_name="m")
    (prediction,) = model.predict_batch(requests_for(["Q"]))
    assert prediction.text == ""
    assert prediction.error == (
        f"POST {fake_server.base_url}/chat/completions failed with HTTP 400: "
        "image too large for this model (not retried)"
    )
    assert len(fake_server.requests) == 1


def test_when_retries_run_out_only_that_request_fails(fake_server) -> None:
    # One at a time: the first request meets three 500s, the second two and then succeeds.
    fake_server.faults = [Fault(500, "overloaded")] * 5
    model = client_for(fake_server, model_name="m", max_retries=2, concurrency=1)
    first, second = model.predict_batch(requests_for(["A", "B"]))
    assert first.text == "" and first.error is not None
    assert "failed after 3 attempt(s); last: HTTP 500: overloaded" in first.error
    assert second.error is None and second.text == "echo: B"
    assert len(fake_server.requests) == 6


def test_a_dead_server_stops_the_batch_instead_of_trying_every_request(client_log) -> None:
    port = free_port()  # nothing listens there
    base_url = f"http://127.0.0.1:{port}/v1"
    model = OpenAIModel(
        "m",
        base_url=base_url,
        max_retries=2,
        retry_backoff_s=0.01,
        concurrency=2,
        max_connection_failures=2,
    )
    with pytest.raises(ModelUnavailable) as caught:
        model.predict_batch(requests_for([f"Q{i}" for i in range(48)]))
    assert str(caught.value) == (
        f"the server at {base_url}/chat/completions can't be reached: 2 requests in a row could "
        "not connect (ConnectError: All connection attempts failed); start it, or fix base_url"
    )
    # Not 48 requests x 3 attempts: the two in flight when the second failure marked the server
    # down, and at most one that took the first one's slot, tried (one warning each).
    tried = [r for r in client_log.records if r.name == CLIENT_LOG and r.levelno == logging.WARNING]
    assert 2 <= len(tried) <= 3 and len(retry_delays(client_log)) <= 3 * 2
    with pytest.raises(ModelUnavailable):  # still down: the next call gives up just as fast
        model.predict_batch(requests_for(["again"]))
    model.close()

    with pytest.raises(RuntimeError, match=rf"GET {base_url}/models failed after 3 attempt"):
        OpenAIModel(base_url=base_url, max_retries=2, retry_backoff_s=0.01)  # no name to list


def test_a_closed_model_answers_with_errors_and_closes_twice_safely(fake_server) -> None:
    model = client_for(fake_server, model_name="m")
    model.close()
    model.close()
    (prediction,) = model.predict_batch(requests_for(["Q"]))
    assert "closed" in prediction.error and fake_server.requests == []


# --- concurrency and order -------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrency_bounds_the_requests_in_flight(fake_server, concurrency) -> None:
    fake_server.delay_s = 0.05  # each request holds the server long enough to overlap
    model = client_for(fake_server, model_name="m", concurrency=concurrency)
    predictions = model.predict_batch(requests_for([f"Q{i}" for i in range(8)]))
    assert all(prediction.error is None for prediction in predictions)
    if concurrency == 1:
        assert fake_server.max_in_flight == 1
    else:
        assert 1 < fake_server.max_in_flight <= concurrency


def test_requests_per_minute_spreads_the_requests_and_their_retries(fake_server) -> None:
    fake_server.faults = [Fault(status=503)]  # the first is retried: that request waits its turn
    model = client_for(
        fake_server, model_name="m", concurrency=8, requests_per_minute=600, retry_backoff_s=0
    )
    predictions = model.predict_batch(requests_for([f"Q{i}" for i in range(5)]))
    assert all(prediction.error is None for prediction in predictions)
    arrivals = sorted(request["at"] for request in fake_server.requests)
    assert len(arrivals) == 6
    # 600 a minute: one every 0.1 s at most (a lower bound; a slow machine only spreads more).
    assert min(b - a for a, b in itertools.pairwise(arrivals)) >= 0.09
    with pytest.raises(ValueError, match="requests_per_minute must be > 0 or null, got 0"):
        client_for(fake_server, requests_per_minute=0)


def test_answers_come_back_in_request_order_when_the_server_answers_out_of_order(
    fake_server,
) -> None:
    # Later prompts are answered sooner, plus a little jitter.
    fake_server.delay_s = lambda prompt: (16 - int(prompt[1:])) * 0.01
    model = client_for(fake_server, model_name="m", concurrency=8)
    prompts = [f"Q{i}" for i in range(16)]
    predictions = model.predict_batch(requests_for(prompts))
    assert fake_server.finished != prompts  # the server really answered out of order
    assert [prediction.text for prediction in predictions] == [f"echo: {p}" for p in prompts]


# --- the API key -----------------------------------------------------------------------------


def test_the_api_key_is_sent_as_a_bearer_token_and_never_shown(fake_server, monkeypatch) -> None:
    monkeypatch.setenv("MY_KEY", SECRET)
    model = client_for(fake_server, api_key_env="MY_KEY")
    model.predict_batch(requests_for(["Q"]))
    for request in fake_server.requests:
        headers = {name.lower(): value for name, value in request["headers"].items()}
        assert headers["authorization"] == f"Bearer {SECRET}"
    assert len(fake_server.requests) == 1  # the POST (GET /models isn't recorded)
    shown = [repr(model), str(model), repr(vars(model)), repr(model._client.headers)]
    assert not any(SECRET in text for text in shown)
    assert model.api_key_env == "MY_KEY"  # the name, not the value, is what the model keeps
    model.close()


def test_an_unset_api_key_variable_is_named_in_the_error(monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VARIABLE", raising=False)
    with pytest.raises(ValueError, match="environment variable NO_SUCH_KEY_VARIABLE is not set"):
        OpenAIModel("m", base_url="http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY_VARIABLE")


def run_runner(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runners.run", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_the_runner_never_writes_the_api_key_anywhere(fake_server, tmp_path) -> None:
    result = run_runner(
        "model=openai_compatible",
        f"model.init_params.base_url={fake_server.base_url}",
        "model.init_params.api_key_env=MY_KEY",
        "runner.limit=4",
        "runner.progress=false",
        "run_name=keyed",
        cwd=tmp_path,
        env={"MY_KEY": SECRET, "MODEL_INTERFACE_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(fake_server.requests) == 4
    assert all(r["headers"]["Authorization"] == f"Bearer {SECRET}" for r in fake_server.requests)

    run_dir = tmp_path / "outputs" / "keyed"
    written = [path for path in run_dir.rglob("*") if path.is_file()]
    names = {path.relative_to(run_dir).as_posix() for path in written}
    assert {"predictions.csv", "metrics.csv", "environment.json", "run.log"} <= names
    assert {".hydra/config.yaml", ".hydra/overrides.yaml"} <= names
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    assert SECRET not in result.stdout
    assert "api_key_env: MY_KEY" in (run_dir / ".hydra" / "config.yaml").read_text()


# --- against runners.serve -------------------------------------------------------------------


class BatchRecordingDummy(DummyModel):
    """The dummy model, slowed down a little and recording the size of each batch it gets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_sizes: list[int] = []

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        self.batch_sizes.append(len(requests))
        time.sleep(0.05)  # requests pile up meanwhile, as they do behind a real model
        return super().predict_batch(requests)


def test_the_client_against_runners_serve_equals_the_model_in_process() -> None:
    served = BatchRecordingDummy("dummy")
    requests = [
        PredictionRequest([small_image(index)] * (1 + index % 2), f"Q{index}", "Sys.")
        for index in range(8)
    ]
    expected = DummyModel("dummy").predict_batch(requests)
    with serve_in_thread(served, "dummy", max_batch_size=8, batch_wait_s=0.02) as base_url:
        client = OpenAIModel(base_url=base_url, concurrency=8)
        predictions = client.predict_batch(requests)
        client.close()
    assert predictions == expected
    assert max(served.batch_sizes) > 1  # concurrent requests were batched by the server


# --- a tiny Hugging Face model served by `python -m runners.serve` ---------------------------


@pytest.fixture(scope="module")
def hf_model(model_cache: Path):
    """The model in process; built before the server starts, so they don't build it together.

    ``model_cache`` is the session's cache_dir (tests/conftest.py)."""
    from model_interface.backends.hf import HFModel

    model = HFModel("tiny-qwen2-vl", cache_dir=str(model_cache), max_new_tokens=16)
    yield model
    model.close()


@pytest.fixture(scope="module")
def served_tiny_model(hf_model, model_cache: Path, tmp_path_factory) -> Iterator[str]:
    """``python -m runners.serve model=tiny_qwen2_vl`` on a free port; yields its base URL."""
    workdir = tmp_path_factory.mktemp("serve")
    server = runners_serve("model=tiny_qwen2_vl", workdir=workdir, cache_dir=model_cache)
    try:
        server.start()
        assert f"serving tiny-qwen2-vl on http://127.0.0.1:{server.port}" in server.log.read_text()
        yield server.base_url
    finally:
        server.stop()


@pytest.mark.slow
def test_served_tiny_model_answers_exactly_like_the_model_in_process(
    hf_model, served_tiny_model
) -> None:
    system = "You read documents."
    # The client's generation settings are what each request asks for; the server honours them.
    client = OpenAIModel(
        base_url=served_tiny_model, system_prompt=system, concurrency=8, max_new_tokens=16
    )
    hf_model.system_prompt = system
    assert client.model_name == "tiny-qwen2-vl"
    cases = {
        "one image": [PredictionRequest([SAMPLE_IMAGES[0]], "What is the total?")],
        "two images": [PredictionRequest(SAMPLE_IMAGES[1:3], "Compare the two documents.")],
        "a batch of 8": [
            PredictionRequest([image], f"Question {index}: what is the date?")
            for index, image in enumerate(SAMPLE_IMAGES[3:11])
        ],
    }
    try:
        for case, requests in cases.items():
            expected = hf_model.predict_batch(requests)
            got = client.predict_batch(requests)
            assert [p.error for p in got] == [None] * len(requests), case
            assert [p.text for p in got] == [p.text for p in expected], case
            assert [(p.prompt_tokens, p.completion_tokens) for p in got] == [
                (p.prompt_tokens, p.completion_tokens) for p in expected
            ], case
            assert all(p.text for p in got), case
    finally:
        client.close()


@pytest.mark.slow
def test_the_runner_benchmarks_a_served_model_end_to_end(served_tiny_model, tmp_path) -> None:
    result = run_runner(
        "model=openai_compatible",
        f"model.init_params.base_url={served_tiny_model}",
        "model.init_params.max_new_tokens=16",  # conf/model/openai_compatible.yaml: null
        "runner.limit=8",
        "runner.progress=false",
        "run_name=served",
        cwd=tmp_path,
        env={"MODEL_INTERFACE_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stdout[-3000:]
    run_dir = tmp_path / "outputs" / "served"
    predictions = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False)
    assert len(predictions) == 8
    assert set(predictions["framework"]) == {"OpenAI API"}
    assert set(predictions["model"]) == {"tiny-qwen2-vl"}
    assert (predictions["error"] == "").all() and (predictions["completion_tokens"] > 0).all()
    assert (predictions["completion_tokens"] <= 16).all()  # the server applied the request's
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics.loc[0, "framework"] == "OpenAI API" and metrics.loc[0, "n_errors"] == 0
    assert metrics.loc[0, "status"] == "ok"


@pytest.mark.slow
def test_a_server_killed_mid_run_ends_it_in_one_line_and_the_run_resumes(tmp_path) -> None:
    """A real server (runners.serve, a dummy model taking 30 ms a request) killed with SIGKILL
    while the runner asks it one request at a time."""
    slow_dummy = ["model=custom", "model.class_path=tests.support.wrappers:SlowDummy"]
    env = {"MODEL_INTERFACE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(PROJECT_ROOT)}
    server = runners_serve(
        *slow_dummy,
        "+model.init_params.delay_s=0.03",
        workdir=tmp_path,
        cache_dir=tmp_path / "cache",
    )
    arguments = [
        "model=openai_compatible",
        f"model.init_params.base_url={server.base_url}",
        "model.init_params.concurrency=1",
        "+model.init_params.retry_backoff_s=0.01",
        "runner.batch_size=2",
        "runner.progress=false",
        "hydra.run.dir=run",
    ]
    try:
        server.start()
        killed = run_and_kill_the_server(
            arguments, server=server, run_dir=tmp_path / "run", after_rows=6, cwd=tmp_path, env=env
        )
        assert killed.returncode == 1, killed.stdout[-3000:]
        rows = pd.read_csv(tmp_path / "run" / "predictions.csv", keep_default_na=False)
        answered = int((rows["error"] == "").sum())
        assert 6 <= answered < 48 and (rows["error"] != "").any()  # the batch in flight failed
        (line,) = [line for line in killed.stdout.splitlines() if "[ERROR]" in line]
        assert line.endswith(
            f"the server at {server.base_url}/chat/completions can't be reached: 3 requests in a "
            "row could not connect (ConnectError: All connection attempts failed); start it, or "
            f"fix base_url. The {answered} answers of this run so far are kept: run the same "
            "command again to resume"
        ), line

        server.start()
        resumed = run_runner(*arguments, cwd=tmp_path, env=env)
    finally:
        server.stop()
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"resuming: {answered} samples already answered, {48 - answered} to go" in (
        resumed.stdout
    )
    rows = pd.read_csv(tmp_path / "run" / "predictions.csv", keep_default_na=False)
    assert len(rows) == 48 and (rows["error"] == "").all()
    assert rows["sample_index"].tolist() == list(range(48))


@pytest.mark.slow
def test_a_text_only_request_to_the_served_model(hf_model, served_tiny_model) -> None:
    hf_model.system_prompt = ""
    (expected,) = hf_model.predict_batch([PredictionRequest([], "What is two plus two?")])
    plain = httpx.post(
        f"{served_tiny_model}/chat/completions",
        json={"messages": [{"role": "user", "content": "What is two plus two?"}]},
        timeout=60,
    )
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["message"]["content"] == expected.text
    client = OpenAIModel(base_url=served_tiny_model, max_new_tokens=16)
    try:
        (got,) = client.predict_batch([PredictionRequest([], "What is two plus two?")])
    finally:
        client.close()
    assert (got.text, got.prompt_tokens, got.completion_tokens) == (
        expected.text,
        expected.prompt_tokens,
        expected.completion_tokens,
    )


@pytest.mark.slow
def test_a_requests_max_tokens_and_streaming_against_the_served_model(
    hf_model, served_tiny_model
) -> None:
    hf_model.system_prompt = ""
    question = PredictionRequest([SAMPLE_IMAGES[0]], "What is the total?")
    short = PredictionRequest(
        [SAMPLE_IMAGES[0]], "What is the total?", generation={"max_new_tokens": 3}
    )
    client = OpenAIModel(base_url=served_tiny_model, concurrency=2, max_new_tokens=16)
    try:
        full_answer, short_answer = client.predict_batch([question, short])
    finally:
        client.close()
    assert (full_answer.completion_tokens, short_answer.completion_tokens) == (16, 3)
    assert short_answer.text == hf_model.predict_batch([short])[0].text

    body = {
        "messages": [{"role": "user", "content": "What is two plus two?"}],
        "max_tokens": 5,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{served_tiny_model}/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(event)["choices"][0]["delta"] for event in events[:-1]]
    expected = hf_model.predict_batch(
        [PredictionRequest([], "What is two plus two?", generation={"max_new_tokens": 5})]
    )[0]
    assert "".join(delta.get("content", "") for delta in deltas) == expected.text


@dataclass
class RecordingProxy:
    """A real HTTP server on 127.0.0.1 passing every request on to ``upstream`` (a root URL)
    and its answer back, recording the JSON body of each POST."""

    upstream: str
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._pass_on(b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.bodies.append(json.loads(body))
                self._pass_on(body)

            def _pass_on(self, body: bytes) -> None:
                answer = httpx.request(
                    self.command,
                    f"{proxy.upstream}{self.path}",
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=300,
                )
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
def test_the_readmes_serve_and_run_pair_as_shipped_leaves_max_tokens_to_the_server(
    served_tiny_model, tmp_path
) -> None:
    # `python -m runners.serve model=tiny_qwen2_vl`, then `python -m runners.run
    # model=openai_compatible model.init_params.base_url=...`: nothing else set.
    proxy = RecordingProxy(served_tiny_model.removesuffix("/v1"))
    try:
        result = run_runner(
            "model=openai_compatible",
            f"model.init_params.base_url={proxy.base_url}",
            "runner.limit=8",
            "runner.progress=false",
            "run_name=as_shipped",
            cwd=tmp_path,
            env={"MODEL_INTERFACE_CACHE": str(tmp_path / "cache")},
        )
    finally:
        proxy.close()
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(proxy.bodies) == 8  # one request each, none retried
    assert [{"max_tokens", "max_completion_tokens"} & set(body) for body in proxy.bodies] == [
        set()
    ] * 8
    run_dir = tmp_path / "outputs" / "as_shipped"
    predictions = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False)
    assert (predictions["error"] == "").all()
    # The server's own limit applied: conf/model/tiny_qwen2_vl.yaml's max_new_tokens of 16.
    assert predictions["completion_tokens"].between(1, 16).all()
    init_params = json.loads((run_dir / "fingerprint.json").read_text())["model"]["init_params"]
    assert init_params.get("max_new_tokens") is None  # not sent: the server's to choose
    assert init_params["base_url"] == proxy.base_url
