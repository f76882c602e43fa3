"""runners.serve as a shared server: one request never hurts another. Limits, keys, isolation
of a failing batch, clients that leave, text-only requests."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model_interface.backends.dummy import DummyModel
from model_interface.chat import image_to_data_url
from model_interface.model_interface import Prediction, PredictionRequest, UnsupportedRequest
from runners.config import RequestLimits
from runners.serve import create_app, json_depth
from tests.helpers import error_lines, run_cli, serve_in_thread


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
    assert poisoned == {"message": "RuntimeError: CUDA error: an input the model chokes on",
                        "type": "server_error", "param": None, "code": None}  # fmt: skip
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
            target=httpx.post, args=(url,), kwargs={"json": {"messages": [user("first", SQUARE)]},
                                                    "timeout": 10},
        )  # fmt: skip
        first.start()
        time.sleep(0.2)  # the first request is in the model now; the next one waits
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={"messages": [user("impatient", SQUARE)]}, timeout=0.3)
        first.join()
        time.sleep(1.5)  # long enough for the worker to reach the impatient request
        health = httpx.get(f"{base_url.removesuffix('/v1')}/health", timeout=5)
    assert health.status_code == 200
    assert model.batches == [["first"]]


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
        ([user("x" * 101, SQUARE)],
         "the request's text is 101 characters, over this server's limit of 100"),
        ([{"role": "system", "content": "s" * 60}, user("x" * 50, SQUARE)],
         "the request's text is 110 characters"),
        ([user("three", SQUARE, SQUARE, SQUARE)],
         "the request has 3 images, over this server's limit of 2"),
        ([user("big", Image.new("1", (101, 100)))],
         "content part 0: the image is 101x100 = 10,100 pixels, over this server's limit of "
         "10,000 per image"),
        ([user("two", Image.new("1", (100, 80)), Image.new("1", (100, 80)))],
         "the request's images hold 16,000 pixels together, over this server's limit of "
         "15,000 per request"),
    ],
)  # fmt: skip
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
    with TestClient(create_app(model, "picky")) as client:
        part = {"type": "image_url", "image_url": {"url": image_to_data_url_raw(bomb)}}
        started = time.monotonic()
        response = post(client, {"role": "user", "content": [part, {"type": "text", "text": "?"}]})
    assert response.status_code == 400
    assert "9000x9000 = 81,000,000 pixels, over this server's limit of 25,000,000" in (
        response.text
    )
    assert time.monotonic() - started < 1 and model.batches == []


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
    response = client.post("/v1/chat/completions", content=nested,
                           headers={"content-type": "application/json"})  # fmt: skip
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
            refused = client.post("/v1/chat/completions", headers=headers,
                                  json={"messages": [user("q", SQUARE)]})  # fmt: skip
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert "s3cret" not in refused.text
        good = {"Authorization": "Bearer s3cret-key"}
        assert client.get("/v1/models", headers=good).status_code == 200
        answered = client.post("/v1/chat/completions", headers=good,
                               json={"messages": [user("q", SQUARE)]})  # fmt: skip
        assert answered.status_code == 200


def test_the_api_documentation_is_off_unless_asked_for() -> None:
    with TestClient(create_app(Picky("picky"), "picky")) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 404
    with TestClient(create_app(Picky("picky"), "picky", docs=True)) as client:
        assert client.get("/docs").status_code == 200
        assert "/v1/chat/completions" in client.get("/openapi.json").text


def test_serving_beyond_loopback_without_a_key_warns_and_a_missing_key_refuses(
    model_cache, tmp_path
) -> None:
    missing = run_cli("model=dummy", "serve.api_key_env=NO_SUCH_VARIABLE", module="runners.serve",
                      cwd=tmp_path, cache_dir=model_cache, timeout=60)  # fmt: skip
    assert missing.returncode == 2
    (line,) = error_lines(missing.stdout)
    assert "serve.api_key_env=NO_SUCH_VARIABLE, but the environment variable" in line

    # A port already taken makes the server stop right after its start-up warnings.
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        warned = run_cli("model=dummy", "serve.host=0.0.0.0", f"serve.port={port}",
                         module="runners.serve", cwd=tmp_path, cache_dir=model_cache,
                         timeout=60)  # fmt: skip
    assert "serving on 0.0.0.0 without an API key: anyone who can reach this address" in (
        warned.stdout
    )


# --- batches that fill up ----------------------------------------------------------------------


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
    with serve_in_thread(model, "m", max_batch_size=8, batch_wait_s=0.0,
                         batch_fill_s=0.5) as base_url:  # fmt: skip
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
    served = serve_in_thread(model, "m", batch_wait_s=0.0, batch_fill_s=2.0)
    with served as base_url, OpenAIModel(base_url=base_url, concurrency=1) as client:
        started = time.monotonic()
        for index in range(5):
            client.predict_batch([PredictionRequest([SQUARE], f"q{index}")])
        elapsed = time.monotonic() - started
    assert model.batch_sizes == [1] * 5
    assert elapsed < 2  # waiting out batch_fill_s even once would take 2 s
