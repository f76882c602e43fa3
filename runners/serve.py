"""Serve any model config over an OpenAI-compatible HTTP API:
``python -m runners.serve model=<config> serve.port=8000``.

Endpoints: ``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions`` (non-streaming).
A request is one optional system message and one user message whose content is a string or a
list of ``text`` and ``image_url`` parts; images must be base64 ``data:`` URLs (the server never
fetches a URL or reads a file on a client's behalf). Several text parts are joined with
newlines, and the images are shown to the model before the text, in order.

Batching: requests wait in one queue; a single worker takes up to ``max_batch_size`` of them
(waiting at most ``batch_wait_s`` after the first) and answers them with one
``model.predict_batch`` call, in one thread, so the model is never called concurrently. Clients
that send many requests at once (``OpenAIModel`` with ``concurrency`` > 1) thus get batched
inference, which is what makes concurrency pay off with a local model.

Generation settings are the server's: they come from the model config (e.g.
``model.init_params.max_new_tokens``). A request's ``max_tokens``, ``temperature``, ``top_p``,
``seed``... are NOT applied, because a model fixes its settings when it is created and one batch
shares them; a request that asks for different ones is answered anyway, with a warning logged
once per setting. ``model`` in a request must be the served name (or left out).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import hydra
from omegaconf import DictConfig

from model_interface.chat import data_url_to_bytes
from model_interface.images import ImageLoadError, load_image
from model_interface.model_interface import ModelInterface, Prediction, PredictionRequest
from runners.config import CONFIG_DIR

INSTALL_HINT = "pip install 'model-interface[serve]'"

try:
    # At module level because FastAPI resolves the routes' annotations in module globals.
    import fastapi
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
except ImportError as error:  # reported with the install hint when an app is created
    fastapi = None
    _fastapi_missing: ImportError | None = error
else:
    _fastapi_missing = None

log = logging.getLogger("runners.serve")
# Request settings the server can't apply per request (see the module docstring), with the
# GenerationSettings field each corresponds to.
IGNORED_SETTINGS = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "repetition_penalty": "repetition_penalty",
}


class BadRequest(ValueError):
    """The request can't be answered as sent; the message says why. ``status``: 400 or 404."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _require_fastapi() -> None:
    if _fastapi_missing is not None:
        raise ImportError(
            f"runners.serve needs fastapi and uvicorn ({_fastapi_missing}); "
            f"install them with: {INSTALL_HINT}"
        )


# --- turning a chat completion request into a PredictionRequest -------------------------------


def parse_chat_request(body: Any, served_model_name: str) -> PredictionRequest:
    """The PredictionRequest for a chat completion body; raises :class:`BadRequest`."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("stream"):
        raise BadRequest("streaming is not supported: send stream=false (or leave it out)")
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
    images, prompt = _user_content(user_contents[0])
    system_prompt = "\n".join(system_parts) if system_parts else None
    return PredictionRequest(images, prompt, system_prompt=system_prompt)


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


def _user_content(content: Any) -> tuple[list[Any], str]:
    if isinstance(content, str):
        return [], content
    if not isinstance(content, list):
        raise BadRequest("the user message's content must be a string or a list of parts")
    images, texts = [], []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            images.append(_decode_image(part.get("image_url"), index))
        else:
            raise BadRequest(
                f"content part {index} has type {kind!r}; supported: 'text' and 'image_url'"
            )
    return images, "\n".join(texts)


def _decode_image(image_url: Any, index: int) -> Any:
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
        return load_image(data_url_to_bytes(url))
    except ImageLoadError as error:
        raise BadRequest(f"content part {index}: bad image: {error}") from None


# --- batching ------------------------------------------------------------------------------


@dataclass
class _Pending:
    request: PredictionRequest
    future: asyncio.Future[Prediction]


@dataclass
class _Batcher:
    """One queue and one worker task; the model runs in one dedicated thread."""

    model: ModelInterface
    max_batch_size: int
    batch_wait_s: float
    queue: asyncio.Queue[_Pending] | None = None
    task: asyncio.Task[None] | None = None
    executor: ThreadPoolExecutor | None = None
    # The sizes of the latest batches, for tests and debugging; bounded for long-lived servers.
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))

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

    async def predict(self, request: PredictionRequest) -> Prediction:
        if self.queue is None:
            raise RuntimeError("the batch worker is not running (was the app started?)")
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(request, future))
        return await future

    async def _work(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(self.queue, loop)
            # A client that disconnected cancelled its future: don't spend the model on it.
            batch = [item for item in batch if not item.future.done()]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            requests = [item.request for item in batch]
            try:
                predictions = await loop.run_in_executor(
                    self.executor, self._predict_batch, requests
                )
            except Exception as error:  # the whole batch failed: every request says why
                log.exception("predict_batch failed on a batch of %d", len(batch))
                message = f"{type(error).__name__}: {error}"
                predictions = [Prediction("", error=message) for _ in batch]
            for item, prediction in zip(batch, predictions, strict=True):
                if not item.future.done():
                    item.future.set_result(prediction)

    async def _next_batch(
        self, queue: asyncio.Queue[_Pending], loop: asyncio.AbstractEventLoop
    ) -> list[_Pending]:
        """Up to max_batch_size requests: the first, then whatever arrives within the wait."""
        batch = [await queue.get()]
        deadline = loop.time() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # Polling (rather than wait_for(queue.get())) can never lose an item to a timeout.
            await asyncio.sleep(min(remaining, 0.001))
        return batch

    def _predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        predictions = list(self.model.predict_batch(requests))
        if len(predictions) != len(requests):
            raise RuntimeError(
                f"{type(self.model).__name__}.predict_batch returned {len(predictions)} "
                f"predictions for {len(requests)} requests"
            )
        return predictions


# --- the app -------------------------------------------------------------------------------


def create_app(
    model: ModelInterface,
    served_model_name: str,
    max_batch_size: int = 8,
    batch_wait_s: float = 0.005,
) -> fastapi.FastAPI:
    """An OpenAI-compatible app around ``model``. The caller keeps ownership of the model.

    The batch worker starts with the app's lifespan: run it with uvicorn, or use FastAPI's
    ``TestClient`` as a context manager (``with TestClient(app) as client``).
    ``app.state.batch_sizes`` holds the sizes of the (latest 10,000) batches the model was given.
    """
    _require_fastapi()
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if batch_wait_s < 0:
        raise ValueError(f"batch_wait_s must be >= 0, got {batch_wait_s}")
    batcher = _Batcher(model, max_batch_size, batch_wait_s)
    created = int(time.time())
    warned: set[str] = set()

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = fastapi.FastAPI(title="model-interface server", lifespan=lifespan)
    app.state.batch_sizes = batcher.batch_sizes

    def error_response(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, error: HTTPException) -> JSONResponse:
        # Unknown routes and wrong methods answer in OpenAI's error format too.
        return error_response(error.status_code, str(error.detail), "invalid_request_error")

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
            body = await request.json()
        except ValueError:
            message = "the request body is not valid JSON"
            return error_response(400, message, "invalid_request_error")
        try:
            # Decoding base64 and images is CPU work: keep it off the event loop.
            prediction_request = await asyncio.to_thread(
                parse_chat_request, body, served_model_name
            )
        except BadRequest as error:
            kind = "not_found_error" if error.status == 404 else "invalid_request_error"
            return error_response(error.status, str(error), kind)
        _warn_about_ignored_settings(body, model, warned)

        prediction = await batcher.predict(prediction_request)
        if prediction.error is not None:
            return error_response(500, prediction.error, "server_error")
        return _completion(prediction, served_model_name, model.generation.max_new_tokens)

    return app


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


def _warn_about_ignored_settings(body: dict, model: ModelInterface, warned: set[str]) -> None:
    for key, setting in IGNORED_SETTINGS.items():
        value = body.get(key)
        if value is None or key in warned or value == getattr(model.generation, setting):
            continue
        warned.add(key)
        log.warning(
            "a request asked for %s=%r; this server applies its model config's %s=%r to every "
            "request (warned once)",
            key,
            value,
            setting,
            getattr(model.generation, setting),
        )


# --- the command line ----------------------------------------------------------------------


def serve(cfg: DictConfig) -> None:
    """Load the configured model and serve it until interrupted."""
    from runners.config import ServeAppConfig, to_settings
    from runners.run import load

    _require_fastapi()
    try:
        import uvicorn
    except ImportError as error:
        raise ImportError(
            f"runners.serve needs uvicorn ({error}); install it with: {INSTALL_HINT}"
        ) from None

    settings = to_settings(cfg, ServeAppConfig)
    options = settings.serve
    served_name = (
        options.served_model_name
        or (settings.model.get("init_params") or {}).get("model_name")
        or settings.model.get("name")
    )
    loaded, _ = load(settings.model)
    app = create_app(
        loaded.model,
        str(served_name),
        max_batch_size=options.max_batch_size,
        batch_wait_s=options.batch_wait_ms / 1000,
    )
    log.info("serving %s on http://%s:%d", served_name, options.host, options.port)
    try:
        # log_config=None: uvicorn's loggers go through Hydra's logging (console and serve.log).
        uvicorn.run(app, host=options.host, port=options.port, log_config=None)
    finally:
        loaded.model.close()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    from runners.config import RunnerError

    try:
        serve(cfg)
    except (RunnerError, ImportError) as error:
        log.error("%s", error)
        raise SystemExit(2) from None


def cli() -> None:
    """``python -m runners.serve`` and the ``vlm-serve`` command."""
    from runners.config import run_hydra_command

    run_hydra_command(main)


if __name__ == "__main__":
    cli()
