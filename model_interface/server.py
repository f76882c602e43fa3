"""Any model over an OpenAI-compatible HTTP API: :func:`create_app` makes the app (run it with
uvicorn); ``python -m runners.serve model=<config>`` serves a model config (runners/serve.py).

Endpoints: ``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions``. A request is
one optional system message and one user message whose content is a string or a list of
``text`` and ``image_url`` parts; images must be base64 ``data:`` URLs (the server never
fetches a URL or reads a file on a client's behalf). Several text parts are joined with
newlines, and the images are shown to the model before the text, in order.

A request's ``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p``,
``top_k``, ``seed``, ``stop``, ``repetition_penalty`` and ``response_format`` (a JSON Schema
the answer must follow) override the model config's for that request alone
(:attr:`PredictionRequest.generation`); ``usage`` counts what the model really read and
wrote. ``stream: true`` answers as server-sent events in OpenAI's chunk format; the
models here don't stream, so the text comes as one chunk once it is complete.

One request never hurts another:

* **Limits** (``serve.limits``): the body size (413), images per request, pixels per image and
  per request (read from the image headers before anything is decoded), prompt length, JSON
  nesting and the number of JSON values (counted before the body is parsed) are checked before
  a request is queued; a request over a limit gets a 400 saying which, and costs no model time.
  Text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``) is a 400 too.
* **Slow and many clients**: a body that has not all arrived within
  ``serve.limits.body_timeout_s`` is a 408, and its connection is closed; at most
  ``serve.max_connections`` connections are served at once (more are answered 503 straight
  away). Bodies over a few kilobytes are parsed in a
  worker thread, so a huge one never holds up ``/health`` or other clients.
* **Isolation**: a batch the model fails on is tried again one request at a time, so a bad
  request fails alone. A request the model can't take as it is (``UnsupportedRequest``, e.g. no
  image for a model that needs one) is a 400, a failure of the model a 500; each goes only to
  its own client. A client that disconnects while its request waits is dropped from the queue.
* **Keys**: with ``serve.api_key_env=NAME``, every endpoint but ``/health`` requires
  ``Authorization: Bearer <the key in $NAME>`` (401 otherwise). ``/docs`` and
  ``/openapi.json`` are off unless ``serve.docs=true``.

Batching: requests wait in one queue; a single worker takes up to ``max_batch_size`` of them
(waiting ``batch_wait_s`` after the first for company, and up to ``batch_fill_s`` while fewer
have come than clients recently kept in flight together) and answers them with one
``model.predict_batch`` call, in one thread, so the model is never called concurrently. Clients
that send many requests at once (``OpenAIModel`` with ``concurrency`` > 1) thus get batched
inference, which is what makes concurrency pay off with a local model.

``model`` in a request must be the served name (or left out).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from model_interface.chat import data_url_to_bytes, lone_surrogate
from model_interface.images import ImageLoadError, image_size, load_image
from model_interface.model_interface import (
    ModelInterface,
    Prediction,
    PredictionRequest,
    TimedPrediction,
    UnsupportedRequest,
    predict_isolated,
)

INSTALL_HINT = "pip install 'model-interface[serve]'"

try:
    # At module level because FastAPI resolves the routes' annotations in module globals.
    import fastapi
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
except ImportError as error:  # reported with the install hint when an app is created
    fastapi = None
    _fastapi_missing: ImportError | None = error
else:
    _fastapi_missing = None

log = logging.getLogger("model_interface.server")
# How often a waiting request checks whether its client is still there.
DISCONNECT_POLL_S = 0.25
# How far back the batcher looks for how many requests clients keep in flight together.
RECENT_S = 2.0
# Bodies up to this size are parsed on the event loop (microseconds); bigger ones in a worker
# thread, so that /health and other clients are answered while they are.
INLINE_PARSE_BYTES = 64 * 1024
# Commas and brackets are counted this many bytes at a time: one count holds the GIL for well
# under a millisecond, so the event loop gets its turn between two.
SCAN_WINDOW_BYTES = 2**20
# Seconds an idle keep-alive connection is kept open after its last answer (uvicorn's default,
# said out loud: it is part of what bounds the connections slow clients can hold).
KEEP_ALIVE_S = 5
# The OpenAI request fields that set generation, and the GenerationSettings field each sets.
REQUEST_SETTINGS = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "repetition_penalty": "repetition_penalty",
}


@dataclass
class RequestLimits:
    """What one request may hold; more is refused before any model work (``serve.limits`` in
    runners.serve's config)."""

    max_body_mb: float = 32  # the request body (413 beyond)
    max_images: int = 16  # images in one request
    # Pixels of one image and of all a request's images together, read from the image headers
    # before anything is decoded (a 9 KB PNG can hold a 9000x9000 picture).
    max_image_pixels: int = 25_000_000
    max_request_pixels: int = 64_000_000
    max_prompt_chars: int = 100_000  # all the text of a request, system message included
    max_json_depth: int = 32  # nesting of the JSON body
    # JSON values in the body (list items and object members), counted from its commas and
    # brackets before it is parsed: those in text count too, so keep it above max_prompt_chars.
    max_json_values: int = 200_000
    # Seconds a client may take to send a body (408 beyond, and the connection closed), so a
    # client that drips its body can't hold a connection.
    body_timeout_s: float = 60

    def __post_init__(self) -> None:
        checks = [
            (self.max_body_mb > 0, "serve.limits.max_body_mb must be > 0"),
            (self.max_images >= 0, "serve.limits.max_images must be >= 0"),
            (self.max_image_pixels >= 1, "serve.limits.max_image_pixels must be >= 1"),
            (self.max_request_pixels >= 1, "serve.limits.max_request_pixels must be >= 1"),
            (self.max_prompt_chars >= 1, "serve.limits.max_prompt_chars must be >= 1"),
            (self.max_json_depth >= 2, "serve.limits.max_json_depth must be >= 2"),
            (
                self.max_json_values > self.max_prompt_chars,
                "serve.limits.max_json_values must be > serve.limits.max_prompt_chars (commas and "
                "brackets in the text count too)",
            ),
            (self.body_timeout_s > 0, "serve.limits.body_timeout_s must be > 0"),
        ]
        for passed, rule in checks:
            if not passed:
                key = rule.split()[0].rsplit(".", 1)[1]
                raise ValueError(f"{rule}, got {getattr(self, key)!r}")


class BadRequest(ValueError):
    """The request can't be answered as sent; the message says why. ``status``: 400, 404, 408,
    413."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def require_fastapi() -> None:
    if _fastapi_missing is not None:
        raise ImportError(
            f"serving needs fastapi and uvicorn ({_fastapi_missing}); "
            f"install them with: {INSTALL_HINT}"
        )


# --- turning a chat completion request into a PredictionRequest -------------------------------


def parse_chat_request(
    body: Any, served_model_name: str, limits: RequestLimits | None = None
) -> PredictionRequest:
    """The PredictionRequest for a chat completion body; raises :class:`BadRequest`.

    Every limit is checked before an image is decoded: counts and text first, then each image's
    size from its header.
    """
    limits = limits or RequestLimits()
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("n", 1) != 1:
        raise BadRequest(f"only n=1 is supported, got n={body['n']!r}")
    model = body.get("model")
    if model not in (None, "", served_model_name):
        raise BadRequest(
            f"model {model!r} is not served here; this server serves {served_model_name!r}",
            status=404,
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")

    system_parts: list[str] = []
    user_contents: list[Any] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}] must be an object with 'role' and 'content'")
        role = message.get("role")
        if role == "system":
            system_parts.append(_system_text(message.get("content"), index))
        elif role == "user":
            user_contents.append(message.get("content"))
        elif role == "assistant":
            raise BadRequest(
                "multi-turn conversations are not supported: send an optional system message "
                "and one user message (found an assistant message at messages["
                f"{index}])"
            )
        else:
            raise BadRequest(f"messages[{index}] has unsupported role {role!r}")
    if len(user_contents) != 1:
        raise BadRequest(
            "multi-turn conversations are not supported: send exactly one user message "
            f"(found {len(user_contents)})"
        )
    image_urls, prompt = _user_content(user_contents[0])
    system_prompt = "\n".join(system_parts) if system_parts else None
    characters = len(prompt) + len(system_prompt or "")
    if characters > limits.max_prompt_chars:
        raise BadRequest(
            f"the request's text is {characters:,} characters, over this server's limit of "
            f"{limits.max_prompt_chars:,}"
        )
    if len(image_urls) > limits.max_images:
        raise BadRequest(
            f"the request has {len(image_urls)} images, over this server's limit of "
            f"{limits.max_images}"
        )
    images = _decode_images(image_urls, limits)
    return PredictionRequest(images, prompt, system_prompt, _generation_overrides(body))


def _generation_overrides(body: dict[str, Any]) -> dict[str, Any]:
    """The request's own generation settings, by GenerationSettings name."""
    overrides: dict[str, Any] = {}
    schema = _response_schema(body.get("response_format"))
    if schema is not None:
        overrides["json_schema"] = schema
    for key, setting in REQUEST_SETTINGS.items():
        value = body.get(key)
        if value is None:
            continue
        if setting == "stop":
            value = [value] if isinstance(value, str) else value
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise BadRequest(f"'stop' must be a string or a list of strings, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest(f"{key!r} must be a number, got {value!r}")
        overrides[setting] = value
    return overrides


def _response_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON Schema OpenAI's ``response_format`` asks for, if any."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return schema
        raise BadRequest("response_format.json_schema.schema must be a JSON Schema object")
    raise BadRequest(
        f"response_format type {kind!r} is not supported; use 'json_schema', 'json_object' or "
        "'text'"
    )


def _system_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise BadRequest(f"messages[{index}] (system) may hold only text parts")
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise BadRequest(f"messages[{index}] (system) content must be a string or a list of parts")


def _user_content(content: Any) -> tuple[list[tuple[int, Any]], str]:
    """((part index, image_url) for each image, the text joined) of the user message."""
    if isinstance(content, str):
        return [], content
    if not isinstance(content, list):
        raise BadRequest("the user message's content must be a string or a list of parts")
    image_urls, texts = [], []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image_urls.append((index, part.get("image_url")))
        else:
            raise BadRequest(
                f"content part {index} has type {kind!r}; supported: 'text' and 'image_url'"
            )
    return image_urls, "\n".join(texts)


def _decode_images(image_urls: list[tuple[int, Any]], limits: RequestLimits) -> list[Any]:
    """The pictures, once every one's size (from its header) is within the limits."""
    encoded, total = [], 0
    for index, image_url in image_urls:
        data = _image_bytes(image_url, index)
        try:
            width, height = image_size(data)
        except ImageLoadError as error:
            raise BadRequest(f"content part {index}: bad image: {error}") from None
        if width * height > limits.max_image_pixels:
            raise BadRequest(
                f"content part {index}: the image is {width}x{height} = {width * height:,} "
                f"pixels, over this server's limit of {limits.max_image_pixels:,} per image"
            )
        total += width * height
        encoded.append((index, data))
    if total > limits.max_request_pixels:
        raise BadRequest(
            f"the request's images hold {total:,} pixels together, over this server's limit "
            f"of {limits.max_request_pixels:,} per request"
        )
    pictures = []
    for index, data in encoded:
        try:
            pictures.append(load_image(data, max_pixels=limits.max_image_pixels))
        except ImageLoadError as error:
            raise BadRequest(f"content part {index}: bad image: {error}") from None
    return pictures


def _image_bytes(image_url: Any, index: int) -> bytes:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise BadRequest(f"content part {index}: image_url needs a 'url'")
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else url[:20]
        # Fetching URLs or reading local files for a client would let anyone who can reach
        # the server probe its network or read its disk.
        raise BadRequest(
            f"content part {index}: image URL scheme {scheme!r} is refused; send the image "
            "inline as a base64 data URL ('data:image/png;base64,...')"
        )
    try:
        return data_url_to_bytes(url)
    except ImageLoadError as error:
        raise BadRequest(f"content part {index}: bad image: {error}") from None


def parse_json_body(raw: bytes, limits: RequestLimits) -> Any:
    """The decoded body, or a :class:`BadRequest` saying which limit it is over.

    Before parsing, the commas and brackets are counted: each list item or object member needs
    one, so a body with more than ``max_json_values`` of them is refused without being parsed
    (``json.loads`` holds the GIL while it runs, and 14 million values take seconds to parse and
    check, worker thread or not). After parsing: the nesting (whatever Python's recursion
    limit), and that every string is valid Unicode. Bodies over :data:`INLINE_PARSE_BYTES` take
    a while: call it in a worker thread.
    """
    max_values = limits.max_json_values
    separators = count_json_separators(raw)
    if separators > max_values:
        raise BadRequest(
            f"the request body has {separators:,} commas and brackets, over this server's limit "
            f"of {max_values:,} JSON values (each list item or object member takes one)"
        )
    try:
        body = json.loads(raw)
    except RecursionError:
        body = None
        depth = limits.max_json_depth + 1
    except ValueError:
        raise BadRequest("the request body is not valid JSON") from None
    else:
        depth = json_depth(body)
    if depth > limits.max_json_depth:
        raise BadRequest(
            f"the request body is nested {depth if body is not None else 'too'} levels deep, "
            f"over this server's limit of {limits.max_json_depth}"
        )
    check_unicode(body)
    return body


def count_json_separators(raw: bytes) -> int:
    """The commas, ``[`` and ``{`` in ``raw``: at least as many as the list items and object
    members in it (those inside strings only add to the count). Counted a window at a time, so
    that a worker thread doing it lets the event loop run between two windows."""
    count = 0
    for start in range(0, len(raw), SCAN_WINDOW_BYTES):
        end = start + SCAN_WINDOW_BYTES
        count += raw.count(b",", start, end) + raw.count(b"[", start, end)
        count += raw.count(b"{", start, end)
    return count


def check_unicode(body: Any) -> None:
    """Raise :class:`BadRequest` naming the first string (or key) of ``body`` that is not valid
    Unicode: JSON's ``"\\ud800"`` escape decodes to a lone surrogate, which no tokenizer takes
    and UTF-8 can't encode, so it is refused here rather than fail after the model."""
    # (value, the path of its parent, its own step): paths are built only where needed.
    pending: list[tuple[Any, str, str]] = [(body, "", "")]
    while pending:
        value, parent, step = pending.pop()
        if isinstance(value, str):
            problem = lone_surrogate(value)
            if problem is not None:
                where = f"the request's {parent}{step}" if parent or step else "the request body"
                raise BadRequest(_not_unicode(where, problem))
        elif isinstance(value, (dict, list)):
            path = f"{parent}{step}"
            if isinstance(value, list):
                children = [(child, path, f"[{index}]") for index, child in enumerate(value)]
            else:
                children = []
                for key, child in value.items():
                    problem = lone_surrogate(key)
                    if problem is not None:
                        where = f"a key in the request's {path}" if path else "a key in the request"
                        raise BadRequest(_not_unicode(where, problem))
                    children.append((child, path, f".{key}" if path else key))
            pending.extend(reversed(children))  # popped in document order


def _not_unicode(where: str, problem: str) -> str:
    return (
        f"{where} is not valid Unicode ({problem}); a \\ud800-\\udfff escape must be one half "
        "of a surrogate pair"
    )


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        children = list(item.values()) if isinstance(item, dict) else item
        if not isinstance(children, list):
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        pending.extend((child, depth + 1) for child in children)
    return deepest


async def read_body(request: Any, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over ``max_bytes``, and
    with 408 if it has not all arrived within ``timeout_s``: a client that drips its body a byte
    at a time can't hold a connection (and the memory of what it sent) for longer.

    Raises starlette's ``ClientDisconnect`` if the client goes away before the end.
    """
    too_large = BadRequest(
        f"the request body is over this server's limit of {max_bytes:,} bytes", status=413
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large

    async def read_all() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read_all(), timeout_s)
    except asyncio.TimeoutError:  # TimeoutError's alias from Python 3.11 on
        raise BadRequest(
            f"the request body did not all arrive within {timeout_s:g} s, this server's limit; "
            "send it without pauses",
            status=408,
        ) from None


# --- batching ------------------------------------------------------------------------------


@dataclass
class _Pending:
    request: PredictionRequest
    future: asyncio.Future[TimedPrediction]


@dataclass
class _Batcher:
    """One queue and one worker task; the model runs in one dedicated thread.

    How long a batch waits: ``batch_wait_s`` for company, as any batch does; and, while it holds
    fewer requests than were recently in flight together (clients that keep several requests
    going send the next ones as soon as their answers arrive), up to ``batch_fill_s`` for
    them. A client that sends one request at a time never waits longer than ``batch_wait_s``.
    """

    model: ModelInterface
    max_batch_size: int
    batch_wait_s: float
    batch_fill_s: float = 0.0
    queue: asyncio.Queue[_Pending] | None = None
    task: asyncio.Task[None] | None = None
    executor: ThreadPoolExecutor | None = None
    # The sizes of the latest batches, and what closed each (see _next_batch), for tests and
    # debugging; bounded for long-lived servers.
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))
    batch_closed_by: deque[str] = field(default_factory=lambda: deque(maxlen=10_000))
    in_flight: int = 0  # requests between their arrival and their answer
    # (time, in_flight) at each arrival within the last RECENT_S seconds.
    _arrivals: deque[tuple[float, int]] = field(default_factory=deque)

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.task = asyncio.create_task(self._work(), name="batch-worker")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
        while self.queue is not None and not self.queue.empty():
            left = self.queue.get_nowait()
            if not left.future.done():
                left.future.set_exception(RuntimeError("the server is shutting down"))
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.queue = self.task = self.executor = None

    async def predict(
        self, request: PredictionRequest, gone: Callable[[], Awaitable[bool]]
    ) -> TimedPrediction | None:
        """The request's answer; None if the client went away (``gone()``) while it waited."""
        if self.queue is None:
            raise RuntimeError("the batch worker is not running (was the app started?)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TimedPrediction] = loop.create_future()
        self.in_flight += 1
        self._arrivals.append((loop.time(), self.in_flight))
        try:
            await self.queue.put(_Pending(request, future))
            while True:
                done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
                if done:
                    return future.result()
                if await gone():
                    future.cancel()  # the worker skips it, if its batch has not started yet
                    return None
        finally:
            self.in_flight -= 1

    async def _work(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch, closed_by = await self._next_batch(self.queue, loop)
            # A client that disconnected cancelled its future: don't spend the model on it.
            batch = [item for item in batch if not item.future.done()]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            self.batch_closed_by.append(closed_by)
            requests = [item.request for item in batch]
            answers = await loop.run_in_executor(
                self.executor, predict_isolated, self.model, requests
            )
            for item, answer in zip(batch, answers, strict=True):
                if not item.future.done():
                    item.future.set_result(answer)

    async def _next_batch(
        self, queue: asyncio.Queue[_Pending], loop: asyncio.AbstractEventLoop
    ) -> tuple[list[_Pending], str]:
        """Up to max_batch_size requests: the first, then whatever arrives within the wait; and
        what closed the batch: ``"full"``, or the wait that ran out, ``"batch_wait_s"`` or
        ``"batch_fill_s"`` (the longer one, taken while fewer requests are in the batch than
        clients recently kept in flight together)."""
        batch = [await queue.get()]
        started = loop.time()
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            expected = min(self.max_batch_size, self._recently_together(loop.time()))
            if len(batch) < expected and self.batch_fill_s > self.batch_wait_s:
                wait_name, wait = "batch_fill_s", self.batch_fill_s
            else:
                wait_name, wait = "batch_wait_s", self.batch_wait_s
            if loop.time() - started >= wait:
                return batch, wait_name
            # Polling (rather than wait_for(queue.get())) can never lose an item to a timeout.
            await asyncio.sleep(0.001)
        return batch, "full"

    def _recently_together(self, now: float) -> int:
        """The most requests in flight at once over the last RECENT_S seconds."""
        while self._arrivals and self._arrivals[0][0] < now - RECENT_S:
            self._arrivals.popleft()
        return max((count for _, count in self._arrivals), default=1)


# --- the app -------------------------------------------------------------------------------


def create_app(
    model: ModelInterface,
    served_model_name: str,
    max_batch_size: int = 8,
    batch_wait_s: float = 0.005,
    *,
    batch_fill_s: float = 0.0,
    limits: RequestLimits | None = None,
    api_key: str | None = None,
    docs: bool = False,
) -> fastapi.FastAPI:
    """An OpenAI-compatible app around ``model``. The caller keeps ownership of the model.

    ``api_key`` (the key itself) makes every endpoint but ``/health`` require it as a bearer
    token. The batch worker starts with the app's lifespan: run it with uvicorn, or use
    FastAPI's ``TestClient`` as a context manager (``with TestClient(app) as client``).
    ``app.state.batch_sizes`` holds the sizes of the (latest 10,000) batches the model was given,
    and ``app.state.batch_closed_by`` what closed each: ``"full"``, ``"batch_wait_s"`` or
    ``"batch_fill_s"`` (the wait that ran out).
    """
    require_fastapi()
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if batch_wait_s < 0 or batch_fill_s < 0:
        raise ValueError(
            f"batch_wait_s and batch_fill_s must be >= 0, got {batch_wait_s}, {batch_fill_s}"
        )
    if api_key is not None and not api_key:
        raise ValueError("api_key is empty; pass None for a server without a key")
    limits = limits or RequestLimits()
    max_body_bytes = int(limits.max_body_mb * 2**20)
    batcher = _Batcher(model, max_batch_size, batch_wait_s, batch_fill_s)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = fastapi.FastAPI(
        title="model-interface server",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.batch_sizes = batcher.batch_sizes
    app.state.batch_closed_by = batcher.batch_closed_by

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, error: HTTPException) -> JSONResponse:
        # Unknown routes and wrong methods answer in OpenAI's error format too.
        return error_response(error.status_code, str(error.detail))

    if api_key is not None:
        app.add_middleware(_RequireKey, key=api_key)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": served_model_name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": served_model_name,
            "object": "model",
            "created": created,
            "owned_by": "model-interface",
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: fastapi.Request) -> Any:
        try:
            raw = await read_body(request, max_body_bytes, limits.body_timeout_s)
            if len(raw) <= INLINE_PARSE_BYTES:
                body = parse_json_body(raw, limits)
            else:  # parsing megabytes takes a while: the event loop serves others meanwhile
                body = await asyncio.to_thread(parse_json_body, raw, limits)
            # Decoding base64 and images is CPU work: keep it off the event loop.
            prediction_request = await asyncio.to_thread(
                parse_chat_request, body, served_model_name, limits
            )
            settings = model.settings_for(prediction_request)
        except (BadRequest, UnsupportedRequest) as error:
            status = getattr(error, "status", 400)
            response = error_response(status, str(error))
            if status == 408:
                # A client that drips its body must not keep the connection for more. (A 413
                # keeps it: uvicorn drops the rest of that body, and the client reads the answer
                # once it has sent it, rather than a reset in the middle.)
                response.headers["connection"] = "close"
            return response
        except ClientDisconnect:  # gone before its body was all sent; nobody reads this
            return Response(status_code=499)

        answer = await batcher.predict(prediction_request, request.is_disconnected)
        if answer is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        prediction = answer.prediction
        if prediction.error is not None:
            status = 400 if answer.unsupported else 500
            return error_response(status, prediction.error)
        completion = _completion(prediction, served_model_name, settings.max_new_tokens)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            chunks = _stream_chunks(completion, bool(options.get("include_usage")))
            return StreamingResponse(chunks, media_type="text/event-stream")
        return completion

    return app


class _RequireKey:
    """ASGI middleware: every request but ``/health`` must carry ``Authorization: Bearer <key>``.

    A plain ASGI class rather than ``@app.middleware``: that wrapper hides a client's disconnect
    from the endpoint, and waiting requests must see it.
    """

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            headers = dict(scope["headers"])
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            given = token.strip().encode("latin-1")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.key):
                message = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
                await error_response(401, message, code="invalid_api_key")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def error_response(status: int, message: str, code: str | None = None) -> JSONResponse:
    """An error in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = {401: "authentication_error", 404: "not_found_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    error = {"message": message, "type": kind, "param": None, "code": code}
    return JSONResponse({"error": error}, status_code=status)


def _completion(prediction: Prediction, served_model_name: str, max_new_tokens: int) -> dict:
    """An OpenAI ``chat.completion`` object. Unknown token counts are sent as null."""
    prompt, completion = prediction.prompt_tokens, prediction.completion_tokens
    finished = "length" if completion is not None and completion >= max_new_tokens else "stop"
    total = prompt + completion if prompt is not None and completion is not None else None
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served_model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": prediction.text},
                "finish_reason": finished,
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total},
    }


def _stream_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """A finished completion as OpenAI's server-sent ``chat.completion.chunk`` events: the role,
    the text in one piece, the finish reason, the usage if asked for, then ``[DONE]``."""
    (choice,) = completion["choices"]
    head = {key: completion[key] for key in ("id", "created", "model")}
    deltas = [
        ({"role": "assistant", "content": ""}, None),
        ({"content": choice["message"]["content"]}, None),
        ({}, choice["finish_reason"]),
    ]
    for delta, finish_reason in deltas:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        chunk = {**head, "object": "chat.completion.chunk", "choices": choices}
        yield f"data: {json.dumps(chunk)}\n\n"
    if include_usage:
        usage = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": completion["usage"],
        }
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"


def uvicorn_limits(max_connections: int) -> dict[str, Any]:
    """uvicorn's options that bound what clients can hold: at most ``max_connections``
    connections served at once (a request on one more is answered 503 and its connection
    closed), and an idle keep-alive connection closed after :data:`KEEP_ALIVE_S`."""
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections}")
    # uvicorn answers 503 once the open connections, the new one included, reach
    # limit_concurrency: one more lets max_connections be served.
    return {"limit_concurrency": max_connections + 1, "timeout_keep_alive": KEEP_ALIVE_S}
