"""model_interface.server: the OpenAI-compatible app around a model, through FastAPI's TestClient.

The model is the dummy (its answer spells out each image's size and colour, the system prompt
and the prompt), wrapped to record how it is called.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model_interface.backends.dummy import DummyModel
from model_interface.chat import image_to_data_url, openai_messages
from model_interface.chat_requests import BadRequest, parse_chat_request
from model_interface.model_interface import Prediction, PredictionRequest
from model_interface.server import create_app


class RecordingDummy(DummyModel):
    """The dummy model, recording each batch's size and how many calls overlapped.

    A prompt containing "fail" gets a Prediction with an error; one containing "raise" makes the
    whole batch raise. ``delay_s`` makes each batch take a while, so requests pile up.
    """

    def __init__(self, *args: Any, delay_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self.max_concurrent_calls = 0
        self._calls = 0
        self._lock = threading.Lock()

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        with self._lock:
            self._calls += 1
            self.max_concurrent_calls = max(self.max_concurrent_calls, self._calls)
            self.batch_sizes.append(len(requests))
        try:
            time.sleep(self.delay_s)
            if any("raise" in request.prompt for request in requests):
                raise RuntimeError("the model fell over")
            answers = super().predict_batch(requests)
            return [
                Prediction("", error="cannot read this one") if "fail" in request.prompt else answer
                for request, answer in zip(requests, answers, strict=True)
            ]
        finally:
            with self._lock:
                self._calls -= 1


@pytest.fixture
def model(clean_registry) -> RecordingDummy:
    """Created through the factory, as runners.serve does from a model config."""
    clean_registry.register_model("recording-dummy", RecordingDummy)
    return clean_registry.from_config(
        {
            "name": "recording-dummy",
            "init_params": {"model_name": "dummy", "system_prompt": "Be brief."},
        }
    )


@pytest.fixture
def client(model: RecordingDummy):
    with TestClient(create_app(model, "served-dummy", max_batch_size=4)) as client:
        yield client


def red_square(size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), (255, 0, 0))


def chat(client: TestClient, messages: list[dict[str, Any]], **extra: Any):
    return client.post(
        "/v1/chat/completions", json={"model": "served-dummy", "messages": messages, **extra}
    )


def data_url(payload: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64,{base64.b64encode(payload).decode()}"


# --- endpoints -------------------------------------------------------------------------------


def test_health_and_models_list_the_served_name(client) -> None:
    assert client.get("/health").json() == {"status": "ok", "model": "served-dummy"}
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [card["id"] for card in listing["data"]] == ["served-dummy"]
    assert listing["data"][0]["object"] == "model"


def test_a_request_built_by_the_client_gets_the_models_own_answer(client, model) -> None:
    request = PredictionRequest([red_square(8), red_square(16)], "What is this?", "You count.")
    (expected,) = DummyModel("dummy").predict_batch([request])

    response = chat(client, openai_messages("Ignored, the request's wins.", request))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "served-dummy"
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == "stop"
    assert expected.text == "8x8 rgb(255,0,0) 16x16 rgb(255,0,0) | You count. What is this?"
    assert body["usage"] == {
        "prompt_tokens": expected.prompt_tokens,
        "completion_tokens": expected.completion_tokens,
        "total_tokens": expected.prompt_tokens + expected.completion_tokens,
    }


@pytest.mark.parametrize(
    ("system", "expected_system"),
    [
        (None, "Be brief."),  # no system message: the served model's own system prompt
        ({"role": "system", "content": "As a string."}, "As a string."),
        (
            {"role": "system", "content": [{"type": "text", "text": "As parts."}]},
            "As parts.",
        ),
    ],
)
def test_the_system_message_overrides_the_models_system_prompt(
    client, system, expected_system
) -> None:
    messages = [] if system is None else [system]
    messages.append({"role": "user", "content": "Hello?"})
    response = chat(client, messages)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == f"| {expected_system} Hello?"


def test_text_parts_are_joined_with_newlines_and_images_kept_in_order() -> None:
    content = [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": image_to_data_url(red_square(8))}},
        {"type": "image_url", "image_url": {"url": image_to_data_url(red_square(16))}},
        {"type": "text", "text": "second"},
    ]
    request = parse_chat_request({"messages": [{"role": "user", "content": content}]}, "m")
    assert request.prompt == "first\nsecond"
    assert [image.size for image in request.images] == [(8, 8), (16, 16)]
    assert request.system_prompt is None


def test_finish_reason_is_length_when_the_answer_hits_max_new_tokens() -> None:
    model = DummyModel("dummy", max_new_tokens=3)
    with TestClient(create_app(model, "dummy")) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "one two three four five"}]},
        )
    body = response.json()
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


# --- requests the server refuses -------------------------------------------------------------

USER = {"role": "user", "content": "Hi"}


def image_part(url: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [USER], "max_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"messages": [USER], "temperature": "hot"}, "'temperature' must be a number"),
        ({"messages": [USER], "stop": [1]}, "'stop' must be a string or a list of strings"),
        (
            {"messages": [USER, {"role": "assistant", "content": "Hello"}, USER]},
            "multi-turn conversations are not supported",
        ),
        ({"messages": [USER, USER]}, "send exactly one user message (found 2)"),
        ({"messages": [{"role": "system", "content": "only a system message"}]}, "(found 0)"),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"prompt": "a completions request"}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "unsupported role 'tool'"),
        ({"messages": [USER], "n": 2}, "only n=1 is supported"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "type 'input_audio'; supported: 'text' and 'image_url'",
        ),
        ({"messages": [image_part("https://example.com/a.png")]}, "scheme 'https' is refused"),
        ({"messages": [image_part("file:///etc/passwd")]}, "scheme 'file' is refused"),
        ({"messages": [image_part("data:image/png;base64,@@@")]}, "bad image: invalid base64"),
        (
            {"messages": [image_part(data_url(b"not an image at all"))]},
            "bad image: cannot read image <19 bytes>",
        ),
        ({"messages": [image_part(data_url(b""))]}, "bad image: image <0 bytes> is empty"),
    ],
)
def test_bad_requests_get_400_saying_what_is_wrong(client, model, body, message) -> None:
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert model.batch_sizes == []  # nothing reached the model


def test_a_truncated_png_is_a_bad_image(client) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 80).convert("RGB").save(buffer, format="PNG")
    response = chat(client, [image_part(data_url(buffer.getvalue()[:200]))])
    assert response.status_code == 400
    assert "bad image" in response.json()["error"]["message"]


def test_body_that_is_not_json_and_unknown_routes_answer_in_openai_error_format(client) -> None:
    response = client.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the request body is not valid JSON"
    missing = client.get("/v1/embeddings")
    assert missing.status_code == 404 and "error" in missing.json()


def test_a_model_name_the_server_does_not_serve_is_404(client) -> None:
    response = client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": [USER]})
    assert response.status_code == 404
    assert "'gpt-4o' is not served here; this server serves 'served-dummy'" in response.text


def test_parse_errors_are_bad_request_exceptions() -> None:
    with pytest.raises(BadRequest, match="must be a JSON object"):
        parse_chat_request(["not", "an", "object"], "m")


# --- model failures --------------------------------------------------------------------------


def test_a_prediction_error_is_a_500_with_the_models_message(client) -> None:
    response = chat(client, [{"role": "user", "content": "please fail"}])
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "cannot read this one",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert chat(client, [USER]).status_code == 200  # the server carries on


def test_a_batch_that_raises_fails_its_requests_with_500(client) -> None:
    response = chat(client, [{"role": "user", "content": "raise"}])
    assert response.status_code == 500
    assert "RuntimeError: the model fell over" in response.json()["error"]["message"]
    assert chat(client, [USER]).status_code == 200


# --- batching --------------------------------------------------------------------------------


def send_together(client: TestClient, prompts: list[str]) -> list[Any]:
    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(
            pool.map(lambda prompt: chat(client, [{"role": "user", "content": prompt}]), prompts)
        )


def test_requests_that_arrive_together_share_one_predict_batch_call(model) -> None:
    # A long batch wait: the batch closes as soon as max_batch_size requests are in.
    app = create_app(model, "served-dummy", max_batch_size=4, batch_wait_s=2.0)
    with TestClient(app) as client:
        responses = send_together(client, [f"question {i}" for i in range(4)])
    assert model.batch_sizes == [4]
    assert list(app.state.batch_sizes) == [4]
    assert list(app.state.batch_closed_by) == ["full"]  # it did not wait out batch_wait_s
    answers = [response.json()["choices"][0]["message"]["content"] for response in responses]
    assert answers == [f"| Be brief. question {i}" for i in range(4)]  # each got its own


def test_batches_are_capped_and_the_model_is_never_called_concurrently(model) -> None:
    model.delay_s = 0.1  # requests pile up while the model works
    app = create_app(model, "served-dummy", max_batch_size=3, batch_wait_s=0.05)
    with TestClient(app) as client:
        responses = send_together(client, [f"q{i}" for i in range(10)])
    assert all(response.status_code == 200 for response in responses)
    assert sum(model.batch_sizes) == 10
    assert max(model.batch_sizes) == 3 and len(model.batch_sizes) < 10
    assert model.max_concurrent_calls == 1


def test_a_failing_request_does_not_fail_the_others_in_its_batch(model) -> None:
    app = create_app(model, "served-dummy", max_batch_size=3, batch_wait_s=2.0)
    with TestClient(app) as client:
        responses = send_together(client, ["ok 1", "fail here", "ok 2"])
    assert model.batch_sizes == [3]
    assert [response.status_code for response in responses] == [200, 500, 200]


def test_create_app_checks_its_arguments(model) -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        create_app(model, "m", max_batch_size=0)


def test_a_published_wrapper_that_skips_super_init_is_served(clean_registry) -> None:
    from tests.support.upstream_wrappers import Qwen2_5_VLStyleModel

    model = clean_registry.from_config(
        {
            "name": "Qwen2.5-VL-style",
            "class_path": "tests.support.upstream_wrappers:Qwen2_5_VLStyleModel",
            "init_params": {"model_name": "Qwen2.5-VL-3B-Instruct", "device_map": "auto"},
        }
    )
    assert isinstance(model, Qwen2_5_VLStyleModel)
    request = PredictionRequest([red_square(12)], "What is this?")
    with TestClient(create_app(model, "qwen")) as client:
        response = client.post(
            "/v1/chat/completions", json={"messages": openai_messages("", request)}
        )
        # Its predict_on_image takes no generation settings: a request's own is refused, not
        # silently ignored.
        own_settings = client.post(
            "/v1/chat/completions",
            json={"messages": openai_messages("", request), "max_tokens": 5},
        )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "12x12 | What is this?"
    assert own_settings.status_code == 400
    assert "use the model's own generation settings" in own_settings.json()["error"]["message"]


# --- per-request settings and streaming -------------------------------------------------------


def test_a_requests_max_tokens_and_stop_apply_to_it_alone(client) -> None:
    long = "one two three four five six seven"
    full = chat(client, [{"role": "user", "content": long}]).json()
    short = chat(client, [{"role": "user", "content": long}], max_tokens=4).json()
    stopped = chat(client, [{"role": "user", "content": long}], stop=[" four"]).json()
    assert full["choices"][0]["message"]["content"] == f"| Be brief. {long}"
    assert short["choices"][0]["message"]["content"] == "| Be brief. one"
    assert short["usage"]["completion_tokens"] == 4 and short["choices"][0]["finish_reason"] == (
        "length"
    )
    assert full["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["message"]["content"] == "| Be brief. one two three"
    assert stopped["usage"]["completion_tokens"] == 6


def test_streaming_answers_in_openais_chunk_format(client) -> None:
    plain = chat(client, [USER], max_tokens=3).json()
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "messages": [USER],
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert deltas[0]["role"] == "assistant"
    text = "".join(delta.get("content", "") for delta in deltas)
    assert text == plain["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "length" and set(finish[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_a_streamed_request_that_fails_is_an_ordinary_error(client) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "please fail"}], "stream": True},
    )
    assert response.status_code == 500 and response.json()["error"]["message"] == (
        "cannot read this one"
    )


def test_a_response_format_constrains_the_answer(client) -> None:
    schema = {
        "type": "object",
        "properties": {"Фамилия": {"type": "string", "maxLength": 6}, "pages": {"type": "integer"}},
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "f", "schema": schema}}
    response = chat(client, [USER], response_format=response_format)
    answer = json.loads(response.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"Фамилия", "pages"} and len(answer["Фамилия"]) <= 6
    assert isinstance(answer["pages"], int)
    refused = chat(client, [USER], response_format={"type": "xml"})
    assert refused.status_code == 400 and "response_format type 'xml'" in refused.text
