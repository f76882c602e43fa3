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

from model_interface.chat_requests import (
    BadRequest,
    RequestLimits,
    parse_chat_request,
    parse_json_body,
)
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
# Seconds an idle keep-alive connection is kept open after its last answer (uvicorn's default,
# said out loud: it is part of what bounds the connections slow clients can hold).
KEEP_ALIVE_S = 5


def require_fastapi() -> None:
    if _fastapi_missing is not None:
        raise ImportError(
            f"serving needs fastapi and uvicorn ({_fastapi_missing}); "
            f"install them with: {INSTALL_HINT}"
        )


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
    cut = prediction.truncated or (completion is not None and completion >= max_new_tokens)
    total = prompt + completion if prompt is not None and completion is not None else None
    message: dict[str, Any] = {"role": "assistant", "content": prediction.text}
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
    }
    if prediction.reasoning is not None:  # as vLLM and SGLang servers return a model's thinking
        message["reasoning_content"] = prediction.reasoning
        usage["completion_tokens_details"] = {"reasoning_tokens": prediction.reasoning_tokens}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served_model_name,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "length" if cut else "stop",
            }
        ],
        "usage": usage,
    }


def _stream_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """A finished completion as OpenAI's server-sent ``chat.completion.chunk`` events: the role,
    the text in one piece, the finish reason, the usage if asked for, then ``[DONE]``."""
    (choice,) = completion["choices"]
    head = {key: completion[key] for key in ("id", "created", "model")}
    message = choice["message"]
    deltas = [
        ({"role": "assistant", "content": ""}, None),
        *(
            [({"reasoning_content": message["reasoning_content"]}, None)]
            if "reasoning_content" in message
            else []
        ),
        ({"content": message["content"]}, None),
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
