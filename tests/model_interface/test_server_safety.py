"""model_interface.server (and runners.serve) as a shared server: one request never hurts
another. Limits, keys, isolation of a failing batch, clients that leave, slow and huge bodies,
text-only requests.

What needs a real server (a body dripped over a socket, a request answered while another is
parsed) runs one: uvicorn on 127.0.0.1, with the options ``runners.serve`` gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import model_interface.chat_requests
import model_interface.server
from model_interface.backends.dummy import DummyModel
from model_interface.chat import image_to_data_url
from model_interface.chat_requests import RequestLimits, json_depth
from model_interface.model_interface import Prediction, PredictionRequest, UnsupportedRequest
from model_interface.server import create_app, uvicorn_limits
from tests.support.helpers import error_lines, free_port, run_cli, serve_in_thread


class Picky(DummyModel):
    """Records its batches; a prompt with "poison" makes the whole batch raise (as a real model
    does on one input it can't take), and a request without an image is unsupported."""

    def __init__(self, *args: Any, delay_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s
        self.batches: list[list[str]] = []

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        self.batches.append([request.prompt for request in requests])
        time.sleep(self.delay_s)
        if any("poison" in request.prompt for request in requests):
            raise RuntimeError("CUDA error: an input the model chokes on")
        if any(not request.images for request in requests):
            raise UnsupportedRequest("this model needs an image")
        return super().predict_batch(requests)


def user(text: str, *images: Image.Image) -> dict[str, Any]:
    parts = [{"type": "image_url", "image_url": {"url": image_to_data_url(i)}} for i in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def post(client: Any, *messages: dict[str, Any], **extra: Any) -> Any:
    return client.post("/v1/chat/completions", json={"messages": list(messages), **extra})


SQUARE = Image.new("RGB", (8, 8), "red")


# --- isolation -------------------------------------------------------------------------------


def test_a_poisoned_batch_answers_the_good_requests() -> None:
    model = Picky("picky", delay_s=0.05)
    app = create_app(model, "picky", max_batch_size=8, batch_wait_s=0.05)
    prompts = [f"good {index}" for index in range(7)] + ["poison"]
    with TestClient(app) as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda prompt: post(client, user(prompt, SQUARE)), prompts))
    assert [r.status_code for r in responses] == [200] * 7 + [500]
    for prompt, response in zip(prompts[:7], responses, strict=False):
        assert response.json()["choices"][0]["message"]["content"].endswith(prompt)
    poisoned = responses[7].json()["error"]
    assert poisoned == {
        "message": "RuntimeError: CUDA error: an input the model chokes on",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert max(len(batch) for batch in model.batches) > 1  # they really were batched together


def test_a_request_the_model_cannot_take_is_a_400_for_its_client_only() -> None:
    model = Picky("picky", delay_s=0.05)
    with TestClient(create_app(model, "picky", batch_wait_s=0.05)) as client:
        with ThreadPoolExecutor(2) as pool:
            text_only = pool.submit(post, client, user("no image here"))
            good = pool.submit(post, client, user("with an image", SQUARE))
        assert text_only.result().status_code == 400
        assert "UnsupportedRequest: this model needs an image" in text_only.result().text
        assert good.result().status_code == 200


def test_a_client_that_leaves_while_waiting_costs_no_model_time() -> None:
    model = Picky("picky", delay_s=1.0)
    with serve_in_thread(model, "picky", max_batch_size=1) as base_url:
        url = f"{base_url}/chat/completions"
        first = threading.Thread(
            target=httpx.post,
            args=(url,),
            kwargs={"json": {"messages": [user("first", SQUARE)]}, "timeout": 10},
        )
        first.start()
        for _ in range(1000):  # until the first request is in the model; the next one waits
            if model.batches:
                break
            time.sleep(0.01)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={"messages": [user("impatient", SQUARE)]}, timeout=0.3)
        first.join()
        # One at a time, in the order they came: once this one is answered, the worker has
        # passed the impatient request.
        after = httpx.post(url, json={"messages": [user("after", SQUARE)]}, timeout=10)
    assert after.status_code == 200
    assert model.batches == [["first"], ["after"]]


# --- limits ----------------------------------------------------------------------------------


@pytest.fixture
def limited() -> Any:
    limits = RequestLimits(
        max_body_mb=0.05,
        max_images=2,
        max_image_pixels=10_000,
        max_request_pixels=15_000,
        max_prompt_chars=100,
        max_json_depth=8,
    )
    model = Picky("picky")
    with TestClient(create_app(model, "picky", limits=limits)) as client:
        yield client, model


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (
            [user("x" * 101, SQUARE)],
            "the request's text is 101 characters, over this server's limit of 100",
        ),
        (
            [{"role": "system", "content": "s" * 60}, user("x" * 50, SQUARE)],
            "the request's text is 110 characters",
        ),
        (
            [user("three", SQUARE, SQUARE, SQUARE)],
            "the request has 3 images, over this server's limit of 2",
        ),
        (
            [user("big", Image.new("1", (101, 100)))],
            "content part 0: the image is 101x100 = 10,100 pixels, over this server's limit of "
            "10,000 per image",
        ),
        (
            [user("two", Image.new("1", (100, 80)), Image.new("1", (100, 80)))],
            "the request's images hold 16,000 pixels together, over this server's limit of "
            "15,000 per request",
        ),
    ],
)
def test_each_limit_is_a_400_saying_which_and_no_model_work(limited, messages, message) -> None:
    client, model = limited
    response = post(client, *messages)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert model.batches == []


def test_an_image_over_the_limit_is_refused_from_its_header_without_decoding() -> None:
    # A 1-bit 9000x9000 PNG is about 10 kB; decoding it to RGB would take 243 MB.
    bomb = png_bytes(Image.new("1", (9000, 9000)))
    assert len(bomb) < 20_000
    model = Picky("picky")
    decoded: list[Any] = []

    def recording_load_image(*args: Any, **kwargs: Any) -> Image.Image:
        decoded.append(args[0])
        return real_load_image(*args, **kwargs)

    real_load_image = model_interface.chat_requests.load_image
    with pytest.MonkeyPatch.context() as patch, TestClient(create_app(model, "picky")) as client:
        patch.setattr(model_interface.chat_requests, "load_image", recording_load_image)
        part = {"type": "image_url", "image_url": {"url": image_to_data_url_raw(bomb)}}
        response = post(client, {"role": "user", "content": [part, {"type": "text", "text": "?"}]})
        assert post(client, user("a small one", SQUARE)).status_code == 200
    assert response.status_code == 400
    assert "9000x9000 = 81,000,000 pixels, over this server's limit of 25,000,000" in (
        response.text
    )
    assert len(decoded) == 1 and model.batches == [["a small one"]]  # only the small one decoded


def image_to_data_url_raw(data: bytes) -> str:
    import base64

    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def test_a_body_over_the_limit_is_a_413(limited) -> None:
    client, model = limited
    body = {"messages": [user("x", SQUARE)], "padding": "p" * 60_000}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 413
    assert "the request body is over this server's limit of 52,428 bytes" in response.text

    def chunks():  # no Content-Length: the limit applies while reading
        yield b'{"messages": [], "padding": "'
        for _ in range(10):
            yield b"p" * 10_000
        yield b'"}'

    streamed = client.post("/v1/chat/completions", content=chunks())
    assert streamed.status_code == 413 and model.batches == []


@pytest.mark.parametrize("depth", [9, 5_000])
def test_deeply_nested_json_is_a_400_in_openai_format(limited, depth: int) -> None:
    client, model = limited
    nested = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    response = client.post(
        "/v1/chat/completions", content=nested, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "nested" in response.json()["error"]["message"]
    assert "over this server's limit of 8" in response.json()["error"]["message"]
    assert model.batches == []


def test_json_depth_counts_without_recursion() -> None:
    assert json_depth(1) == 0 and json_depth([]) == 1 and json_depth({"a": [1, {"b": 2}]}) == 3
    deep: Any = []
    for _ in range(50_000):
        deep = [deep]
    assert json_depth(deep) == 50_001


# --- keys and docs ---------------------------------------------------------------------------


def test_a_key_is_required_on_every_endpoint_but_health() -> None:
    with TestClient(create_app(Picky("picky"), "picky", api_key="s3cret-key")) as client:
        assert client.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            assert client.get("/v1/models", headers=headers).status_code == 401
            refused = client.post(
                "/v1/chat/completions", headers=headers, json={"messages": [user("q", SQUARE)]}
            )
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert "s3cret" not in refused.text
        good = {"Authorization": "Bearer s3cret-key"}
        assert client.get("/v1/models", headers=good).status_code == 200
        answered = client.post(
            "/v1/chat/completions", headers=good, json={"messages": [user("q", SQUARE)]}
        )
        assert answered.status_code == 200


def test_the_api_documentation_is_off_unless_asked_for() -> None:
    with TestClient(create_app(Picky("picky"), "picky")) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 404
    with TestClient(create_app(Picky("picky"), "picky", docs=True)) as client:
        assert client.get("/docs").status_code == 200
        assert "/v1/chat/completions" in client.get("/openapi.json").text


@pytest.mark.slow
def test_serving_beyond_loopback_without_a_key_warns_and_a_missing_key_refuses(
    model_cache, tmp_path
) -> None:
    missing = run_cli(
        "model=dummy",
        "serve.api_key_env=NO_SUCH_VARIABLE",
        module="runners.serve",
        cwd=tmp_path,
        cache_dir=model_cache,
        timeout=60,
    )
    assert missing.returncode == 2
    (line,) = error_lines(missing.stdout)
    assert "serve.api_key_env=NO_SUCH_VARIABLE, but the environment variable" in line

    # A port already taken makes the server stop right after its start-up warnings.
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        warned = run_cli(
            "model=dummy",
            "serve.host=0.0.0.0",
            f"serve.port={port}",
            module="runners.serve",
            cwd=tmp_path,
            cache_dir=model_cache,
            timeout=60,
        )
    assert "serving on 0.0.0.0 without an API key: anyone who can reach this address" in (
        warned.stdout
    )


# --- batches that fill up --------------------------------------------------------------------


class Counting(DummyModel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_sizes: list[int] = []

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        self.batch_sizes.append(len(requests))
        time.sleep(0.02)
        return super().predict_batch(requests)


def test_batches_fill_up_to_what_clients_keep_in_flight() -> None:
    from model_interface.backends.openai_api import OpenAIModel

    model = Counting("counting")
    with serve_in_thread(
        model, "m", max_batch_size=8, batch_wait_s=0.0, batch_fill_s=0.5
    ) as base_url:
        requests = [PredictionRequest([SQUARE], f"q{index}") for index in range(32)]
        with OpenAIModel(base_url=base_url, concurrency=4) as client:
            assert all(p.error is None for p in client.predict_batch(requests))
    # After the first batch (the server has seen no client yet), each batch waits for the 4
    # requests the client keeps going; the last takes what is left.
    middle = model.batch_sizes[1:-1]
    assert sum(model.batch_sizes) == 32 and set(middle) == {4} and len(middle) >= 6


def test_one_request_at_a_time_never_waits_for_company_that_is_not_coming() -> None:
    from model_interface.backends.openai_api import OpenAIModel

    model = Counting("counting")
    app = create_app(model, "m", batch_wait_s=0.0, batch_fill_s=2.0)
    with running(app) as root, OpenAIModel(base_url=f"{root}/v1", concurrency=1) as client:
        for index in range(5):
            client.predict_batch([PredictionRequest([SQUARE], f"q{index}")])
    assert model.batch_sizes == [1] * 5
    # Each batch closed when batch_wait_s (0) ran out: none waited for batch_fill_s.
    assert list(app.state.batch_closed_by) == ["batch_wait_s"] * 5


# --- a real server, and raw sockets ----------------------------------------------------------


@contextlib.contextmanager
def running(app: Any, max_connections: int = 64) -> Iterator[str]:
    """``app`` in a real uvicorn server on 127.0.0.1, bounded as ``runners.serve`` bounds it;
    yields its root URL. ``log_config=None`` leaves logging alone, so caplog sees uvicorn's."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, **uvicorn_limits(max_connections)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(2000):  # at most 20 s
            if server.started or not thread.is_alive():
                break
            time.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def start_post(root: str, length: int) -> socket.socket:
    """A connection whose POST to /v1/chat/completions has sent its headers, announcing a body
    of ``length`` bytes, and none of the body yet."""
    port = int(root.rsplit(":", 1)[1])
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n" + f"Content-Length: {length}\r\n\r\n".encode()
    )
    return connection


def drip_until_answered(connections: list[socket.socket], length: int) -> dict[int, int]:
    """Send each connection's body a byte at a time, about 50 ms apart, until the server
    answers (or closes); returns the bytes each had sent by then (``length``: the whole body)."""
    sent = dict.fromkeys(range(len(connections)), 0)
    waiting = set(sent)
    for _ in range(length):
        answered, _, _ = select.select([connections[i] for i in waiting], [], [], 0.05)
        waiting -= {connections.index(connection) for connection in answered}
        for index in sorted(waiting):
            try:
                connections[index].sendall(b" ")
            except OSError:  # closed by the server since the select: answered
                waiting.discard(index)
            else:
                sent[index] += 1
        if not waiting:
            break
    return sent


def read_answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the answer on ``connection``, read until the server
    closes it (a socket timeout if it never does)."""
    data = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            # A server that closes a connection with bytes it has not read (the drip's) ends it
            # with a reset instead of a FIN, after the answer.
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


# --- slow clients ----------------------------------------------------------------------------


def test_clients_that_drip_their_bodies_are_cut_off_with_a_408_and_the_server_goes_on() -> None:
    model = Picky("picky")
    app = create_app(model, "picky", limits=RequestLimits(body_timeout_s=0.5))
    with running(app) as root:
        drippers = [start_post(root, length=400) for _ in range(3)]
        try:
            assert httpx.get(f"{root}/health", timeout=30).status_code == 200
            sent = drip_until_answered(drippers, length=400)  # 20 s for a whole body
            answers = [read_answer(connection) for connection in drippers]
        finally:
            for connection in drippers:
                connection.close()
        health = httpx.get(f"{root}/health", timeout=30)
    assert all(count < 400 for count in sent.values()), sent  # cut off before their bodies ended
    error = {
        "message": "the request body did not all arrive within 0.5 s, this server's limit; "
        "send it without pauses",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    for status, headers, body in answers:
        assert (status, headers["connection"]) == (408, "close")  # read_answer saw it closed
        assert json.loads(body) == {"error": error}
    assert health.status_code == 200 and model.batches == []


def test_a_body_over_the_limit_still_reads_its_413_over_a_real_connection() -> None:
    # The server answers before it has read the body; the client sends it all, then reads. The
    # connection must stay open for that: httpx's async client (OpenAIModel's) would read a
    # reset instead of the answer.
    async def send_too_much(url: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(url, content=b" " * 8 * 2**20)

    limits = RequestLimits(max_body_mb=0.05)
    with running(create_app(Picky("picky"), "picky", limits=limits)) as root:
        response = asyncio.run(send_too_much(f"{root}/v1/chat/completions"))
        health = httpx.get(f"{root}/health", timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["message"] == (
        "the request body is over this server's limit of 52,428 bytes"
    )
    assert health.status_code == 200


def test_at_most_max_connections_are_served_and_the_next_gets_a_503_at_once() -> None:
    app = create_app(Picky("picky"), "picky")
    with running(app, max_connections=2) as root:
        slow = [start_post(root, length=400) for _ in range(2)]  # headers sent, never a body
        try:
            refused = httpx.get(f"{root}/health", timeout=30)
        finally:
            for connection in slow:
                connection.close()
        for _ in range(20):  # until the server has seen the slow clients go
            health = httpx.get(f"{root}/health", timeout=30)
            if health.status_code == 200:
                break
    assert refused.status_code == 503
    assert health.status_code == 200


def test_a_client_that_leaves_while_sending_its_body_is_no_server_error(caplog) -> None:
    reads: list[str] = []
    done = threading.Event()

    async def recording_read_body(*args: Any, **kwargs: Any) -> bytes:
        try:
            return await real_read_body(*args, **kwargs)
        except BaseException as error:
            reads.append(type(error).__name__)
            raise
        finally:
            done.set()

    real_read_body = model_interface.server.read_body
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_interface.server, "read_body", recording_read_body)
        with running(create_app(Picky("picky"), "picky")) as root:
            leaving = start_post(root, length=400)
            leaving.sendall(b'{"messages": ')
            leaving.close()
            assert done.wait(timeout=30)
            health = httpx.get(f"{root}/health", timeout=30)  # the server went on past it
    assert reads == ["ClientDisconnect"] and health.status_code == 200
    assert [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []


# --- huge bodies -----------------------------------------------------------------------------


def test_a_body_with_too_many_json_values_is_refused_before_it_is_parsed() -> None:
    model = Picky("picky")
    # 14 million numbers in 28 MB, under the 32 MB body limit: seconds of parsing, never done.
    huge = b'{"messages": [' + b",".join([b"0"] * 14_000_000) + b"]}"
    at_the_limit = b'{"messages": [' + b",".join([b"0"] * 199_999) + b"]}"  # 200,000 in all
    with TestClient(create_app(model, "picky")) as client:
        refused = client.post("/v1/chat/completions", content=huge)
        parsed = client.post("/v1/chat/completions", content=at_the_limit)
        over = client.post("/v1/chat/completions", content=at_the_limit.replace(b"[", b"[0,", 1))
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "the request body has 14,000,001 commas and brackets, over this server's limit of "
        "200,000 JSON values (each list item or object member takes one)"
    )
    assert parsed.json()["error"]["message"] == (
        "messages[0] must be an object with 'role' and 'content'"
    )  # parsed, and refused for what it holds
    assert "has 200,001 commas and brackets" in over.json()["error"]["message"]
    assert model.batches == []


@pytest.mark.slow
def test_health_and_a_small_request_are_answered_while_a_huge_body_is_parsed() -> None:
    # 4.4 million strings in 30 MB, under every limit here: parsing and checking them takes
    # seconds. Whatever is asked meanwhile must not wait for it.
    huge = b'{"messages": [' + b",".join([b'"p-01"'] * 4_400_000) + b"]}"
    assert 29 * 2**20 < len(huge) < 30 * 2**20
    events: list[str] = []
    parsing = threading.Event()

    def recording_parse(raw: bytes, limits: Any) -> Any:
        if len(raw) == len(huge):
            parsing.set()
        try:
            return real_parse(raw, limits)
        finally:
            if len(raw) == len(huge):
                events.append("huge body parsed")

    real_parse = model_interface.server.parse_json_body
    model = Picky("picky")
    app = create_app(model, "picky", limits=RequestLimits(max_json_values=10**8))
    with pytest.MonkeyPatch.context() as patch, running(app) as root:
        patch.setattr(model_interface.server, "parse_json_body", recording_parse)
        with ThreadPoolExecutor(1) as pool:
            big = pool.submit(
                httpx.post,
                f"{root}/v1/chat/completions",
                content=huge,
                headers={"content-type": "application/json"},
                timeout=300,
            )
            assert parsing.wait(timeout=300)
            if httpx.get(f"{root}/health", timeout=300).status_code == 200:
                events.append("health answered")
            small = post_to(root, user("small", SQUARE))
            if small.status_code == 200:
                events.append("small request answered")
            answer = big.result()
    assert events == ["health answered", "small request answered", "huge body parsed"]
    assert answer.json()["error"]["message"] == (
        "messages[0] must be an object with 'role' and 'content'"
    )
    assert model.batches == [["small"]]


def post_to(root: str, *messages: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{root}/v1/chat/completions", json={"messages": list(messages)}, timeout=300)


# --- text that is not Unicode ----------------------------------------------------------------

SURROGATE_MESSAGE = "a \\ud800-\\udfff escape must be one half of a surrogate pair"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (
            b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}',
            "the request's messages[0].content is not valid Unicode (lone surrogate \\ud800 at "
            "character 3)",
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, '
            b'{"type": "text", "text": "\\uDC00 low"}]}]}',
            "the request's messages[0].content[1].text is not valid Unicode (lone surrogate "
            "\\udc00 at character 0)",
        ),
        (
            b'{"model": "pi\\ud83ccky", "messages": [{"role": "user", "content": "hi"}]}',
            "the request's model is not valid Unicode (lone surrogate \\ud83c at character 2)",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\udfff"]}',
            "the request's stop[0] is not valid Unicode (lone surrogate \\udfff at character 0)",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi", "\\ud800": 1}]}',
            "a key in the request's messages[0] is not valid Unicode (lone surrogate \\ud800 at "
            "character 0)",
        ),
        (
            '{"messages": [{"role": "user", "content": "utf-8 \ud800"}]}'.encode(
                "utf-8", "surrogatepass"
            ),
            "the request's messages[0].content is not valid Unicode (lone surrogate \\ud800 at "
            "character 6)",
        ),
    ],
    ids=["prompt", "text part", "model", "stop", "key", "utf-8 encoded surrogate"],
)
def test_a_lone_surrogate_is_a_400_saying_where_before_the_model(body: bytes, where: str) -> None:
    model = Counting("dummy")  # answers text alone, echoing the prompt
    # TestClient raises whatever the app fails with: a traceback would fail the test.
    with TestClient(create_app(model, "picky")) as client:
        response = client.post("/v1/chat/completions", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == f"{where}; {SURROGATE_MESSAGE}"
    assert model.batch_sizes == []


def test_a_surrogate_pair_is_one_character_and_answered() -> None:
    body = {"messages": [user("smile \U0001f600", SQUARE)]}
    with TestClient(create_app(Picky("picky"), "picky")) as client:
        # json.dumps escapes the emoji as the pair "\ud83d\ude00"
        response = client.post("/v1/chat/completions", content=json.dumps(body).encode())
    assert "\\ud83d\\ude00" in json.dumps(body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].endswith("smile \U0001f600")
