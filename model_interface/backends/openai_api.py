"""A client for any OpenAI-compatible chat completions server: ``vllm serve``, SGLang,
``python -m runners.serve``, or a cloud API.

Each request is one ``POST {base_url}/chat/completions`` with the images as base64 ``data:`` URLs
(see :mod:`model_interface.chat`). Requests are sent concurrently, at most ``concurrency`` in
flight over the model's whole life, whoever calls ``predict_batch``; the server does the
batching. One event loop in a background thread runs one ``httpx.AsyncClient`` (one connection
pool), so a request can be given up at any moment: ``timeout`` bounds each attempt from
connecting to the last byte, ``deadline_s`` each request with all its retries.

Generation settings go with every request, but ``max_tokens`` only when ``max_new_tokens`` is
set (for the model or in a request): unset, the server's own limit applies, as for any OpenAI
client that sends none.

Failures stay with their request: a request that still fails after its retries, or that can't
be sent at all (text that is not valid Unicode), comes back as a ``Prediction`` with ``error``
set, and the rest of the batch goes on. A server that can't be reached at all is different:
after ``max_connection_failures`` requests in a row failed to connect, ``predict_batch`` raises
:class:`ModelUnavailable` instead of trying every sample.

The API key is read from the environment variable *named* by ``api_key_env`` and kept only in
the HTTP client's headers (which httpx masks in its repr), never in an attribute, a log line or
a config; should a server echo it back, it is masked in every text and error the client returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import threading
import weakref
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import Any

from PIL import Image

from model_interface.chat import image_to_data_url, lone_surrogate, openai_messages
from model_interface.model_interface import (
    ModelInterface,
    ModelUnavailable,
    Prediction,
    PredictionRequest,
)

try:
    import httpx
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the OpenAI API backend needs httpx ({error}); "
        "install it with: pip install 'model-interface[openai]'"
    ) from error

log = logging.getLogger(__name__)

# httpx logs every request at INFO; in a benchmark run that is one line per sample in run.log.
# Quieten it unless the application has configured that logger itself.
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Exceptions worth another attempt: the server was slow, not (yet) listening, or dropped the
# connection. Other transport errors (a malformed URL, an unsupported scheme) are our mistake.
RETRY_EXCEPTIONS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    TimeoutError,  # an attempt over ``timeout`` from start to finish
)
# What a server that is not there at all looks like.
CONNECTION_EXCEPTIONS = (httpx.ConnectError, httpx.ConnectTimeout)
MAX_BACKOFF_S = 30.0  # the cap on one exponential backoff sleep
MAX_RETRY_AFTER_S = 60.0  # the cap on a server's Retry-After, so one header can't stall a run
MAX_ERROR_BODY_CHARS = 500


class OpenAIRequestError(RuntimeError):
    """A request failed for good (after its retries, or with a status not worth retrying)."""


class OpenAIModel(ModelInterface):
    """A vision-language model behind an OpenAI-compatible HTTP API.

    Args:
        model_name: the model id the server serves; empty takes the first one that
            ``GET {base_url}/models`` lists.
        system_prompt: sent as the system message when non-empty.
        cache_dir: unused (the server holds the weights); accepted so every config looks alike.
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: the NAME of the environment variable holding the API key, e.g.
            ``OPENAI_API_KEY``; ``None`` sends no key.
        timeout: seconds one attempt may take, from connecting to the answer's last byte.
        deadline_s: seconds one request may take with all its retries and backoffs; ``None``:
            ``(max_retries + 1) * (timeout + 30)``, every attempt and the longest backoffs.
        max_retries: further attempts after a failed one (so ``max_retries + 1`` in all) on
            429/500/502/503/504, timeouts, refused and dropped connections.
        concurrency: requests in flight at once over the model's life (also the connection
            pool's size); the runner hands the model at least this many per call.
        max_connection_failures: requests in a row that could not connect at all (after their
            retries) before the server counts as down and ``predict_batch`` raises
            :class:`ModelUnavailable`.
        retry_backoff_s: the first backoff; it doubles each attempt (full jitter, capped at 30 s).
        image_format: how images are encoded into data URLs; PNG is lossless.
        **generation: ``max_new_tokens``, ``temperature``, ... (see ``GenerationSettings``);
            they are sent with every request (a request's own override them), and
            ``generation_kwargs`` are merged into the request body as they are.
            ``max_new_tokens`` is sent (as ``max_tokens``) only when given and not None: left
            out, the server's own limit applies.
    """

    framework = "OpenAI API"

    def __init__(
        self,
        model_name: str = "",
        system_prompt: str = "",
        cache_dir: str = "model_cache",
        *,
        base_url: str,
        api_key_env: str | None = None,
        timeout: float = 60,
        deadline_s: float | None = None,
        max_retries: int = 3,
        concurrency: int = 8,
        max_connection_failures: int = 3,
        retry_backoff_s: float = 0.5,
        image_format: str = "PNG",
        requests_per_minute: float | None = None,
        **generation: Any,
    ) -> None:
        # Unset is not the same as GenerationSettings' default of 512: the server decides.
        if generation.get("max_new_tokens") is None:
            generation.pop("max_new_tokens", None)
        self._max_new_tokens_set = "max_new_tokens" in generation
        super().__init__(model_name, system_prompt, cache_dir, **generation)
        if not base_url:
            raise ValueError("base_url is required, e.g. http://127.0.0.1:8000/v1")
        lower_bounds = [
            ("concurrency", concurrency, 1),
            ("max_retries", max_retries, 0),
            ("max_connection_failures", max_connection_failures, 1),
        ]
        for name, value, least in lower_bounds:
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be > 0 or null, got {requests_per_minute}")
        if timeout <= 0 or (deadline_s is not None and deadline_s <= 0):
            raise ValueError(f"timeout and deadline_s must be > 0 s, got {timeout}, {deadline_s}")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        every_attempt = (self.max_retries + 1) * (self.timeout + MAX_BACKOFF_S)
        self.deadline_s = float(deadline_s or every_attempt)
        self.concurrency = int(concurrency)
        self.max_connection_failures = int(max_connection_failures)
        self.retry_backoff_s = float(retry_backoff_s)
        self.image_format = image_format
        # A provider's rate limit: request starts spread at least 60 / rpm seconds apart.
        self.requests_per_minute = requests_per_minute
        self._next_start = 0.0  # loop time the next request may start at
        self._encoded_images = _EncodedImages(image_format)
        headers = {"Accept": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(
                    f"api_key_env={api_key_env!r}, but the environment variable {api_key_env} "
                    f"is not set or empty; export {api_key_env}=<your key>, or set "
                    "api_key_env=null for a server that needs no key"
                )
            # The only place the key lives: httpx masks Authorization in its reprs.
            headers["Authorization"] = f"Bearer {key}"

        self._connection_failures = 0  # requests in a row that could not connect
        self._unreachable: str | None = None  # why the server counts as down, once it does
        self._loop: asyncio.AbstractEventLoop | None = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="openai-client", daemon=True).start()
        self._client: httpx.AsyncClient | None = self._run(self._open(headers))
        if not self.model_name:
            try:
                self.model_name = self._run(self._first_listed_model())
            except Exception:
                self.close()
                raise

    # --- the batch entry point ------------------------------------------------------------

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        """All requests at once (at most ``concurrency`` in flight); answers in request order.

        Raises :class:`ModelUnavailable` once the server can't be reached at all.
        """
        if not requests:
            return []
        if self._loop is None:
            return [Prediction("", error=f"{self!r} was closed") for _ in requests]
        self._unreachable = None  # try again; one more failure to connect says it is still down
        predictions = self._run(self._predict_all(requests))
        if self._unreachable is not None:
            raise ModelUnavailable(self._unreachable)
        return predictions

    def close(self) -> None:
        loop, self._loop = getattr(self, "_loop", None), None
        if loop is None:
            return
        client, self._client = self._client, None
        if client is not None:
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_name={self.model_name!r}, base_url={self.base_url!r}, "
            f"framework={self.framework!r})"
        )

    # --- one request ----------------------------------------------------------------------

    def request_body(self, request: PredictionRequest) -> dict[str, Any]:
        """The JSON body of the chat completion request for ``request``.

        Raises :class:`OpenAIRequestError` for text that can't be sent: a lone surrogate (e.g.
        from ``"\\ud800"`` in a JSON file) can't be encoded as UTF-8, so no server could read it.
        """
        _refuse_lone_surrogates(
            {"prompt": request.prompt, "system prompt": self.system_prompt_for(request)}
        )
        settings = self.settings_for(request)
        # top_k, repetition_penalty and seed are not OpenAI's own, but vLLM and SGLang take
        # them; they are sent only when set. A request's own settings override the model's.
        options = settings.sampling_options()
        asked = self._max_new_tokens_set or "max_new_tokens" in (request.generation or {})
        if not asked and "max_tokens" not in settings.generation_kwargs:
            del options["max_tokens"]  # the server's own limit applies
        body = {
            "model": self.model_name,
            "messages": openai_messages(
                self.system_prompt, request, image_part=self._encoded_images.part
            ),
            **options,
        }
        if settings.chat_template_kwargs:  # vLLM's and SGLang's servers pass it to the template
            body["chat_template_kwargs"] = dict(settings.chat_template_kwargs)
        if settings.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": settings.json_schema, "strict": True},
            }
        return body

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coroutine`` on the client's event loop and wait for its result."""
        assert self._loop is not None, "closed"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _open(self, headers: dict[str, str]) -> httpx.AsyncClient:
        # Created on the loop: the semaphore and the connection pool belong to it.
        self._slots = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(None), limits=limits)

    async def _predict_all(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        return list(await asyncio.gather(*(self._predict_one(r) for r in requests)))

    async def _predict_one(self, request: PredictionRequest) -> Prediction:
        """Never raises: a failure becomes the prediction's ``error``."""
        url = f"{self.base_url}/chat/completions"
        try:
            # Slots are taken in request order (the semaphore is first come, first served).
            async with self._slots:
                if self._unreachable is not None:
                    return Prediction("", error=self._unreachable)
                # Encoding images is CPU work, mostly outside the GIL: off the loop.
                body = await asyncio.to_thread(self.request_body, request)
                try:
                    answer = await asyncio.wait_for(
                        self._send("POST", "/chat/completions", json=body), self.deadline_s
                    )
                except TimeoutError:
                    raise OpenAIRequestError(
                        f"POST {url} got no answer within deadline_s={self.deadline_s:g} s"
                    ) from None
            prediction = _parse_completion(answer)
            prediction.text = self._redact(prediction.text)
            if prediction.reasoning is not None:
                prediction.reasoning = self._redact(prediction.reasoning)
            return prediction
        except Exception as error:
            described = str(error) if isinstance(error, OpenAIRequestError) else _describe(error)
            message = self._redact(described)
            log.warning("%s", message)
            return Prediction("", error=message)

    async def _first_listed_model(self) -> str:
        listing = await self._send("GET", "/models")
        models = listing.get("data") if isinstance(listing, dict) else None
        if not models:
            raise OpenAIRequestError(
                f"GET {self.base_url}/models listed no models ({_shorten(json.dumps(listing))}); "
                "set model_name to the model the server serves"
            )
        first = models[0].get("id") if isinstance(models[0], dict) else None
        if not first:
            raise OpenAIRequestError(f"GET {self.base_url}/models: a model without an id")
        return str(first)

    async def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer, retrying what is worth retrying.

        Raises :class:`OpenAIRequestError` with the URL, the status or exception, and the
        number of attempts.
        """
        url = f"{self.base_url}{path}"
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            client = self._client
            if client is None:
                raise OpenAIRequestError(f"{method} {url}: the model was closed")
            retry_after: float | None = None
            connected = True
            await self._take_turn()
            try:
                response = await asyncio.wait_for(
                    client.request(method, url, **kwargs), self.timeout
                )
            except RETRY_EXCEPTIONS as error:
                connected = not isinstance(error, CONNECTION_EXCEPTIONS)
                problem = (
                    f"no answer within timeout={self.timeout:g} s"
                    if isinstance(error, TimeoutError)
                    else _describe(error)
                )
            except httpx.HTTPError as error:
                raise OpenAIRequestError(f"{method} {url} failed: {_describe(error)}") from None
            else:
                self._connection_failures = 0
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError:
                        raise OpenAIRequestError(
                            f"{method} {url}: HTTP {response.status_code} but the body is not "
                            f"JSON: {_shorten(response.text)!r}"
                        ) from None
                problem = f"HTTP {response.status_code}: {_server_message(response)}"
                if response.status_code not in RETRY_STATUSES:
                    raise OpenAIRequestError(f"{method} {url} failed with {problem} (not retried)")
                retry_after = _retry_after_s(response)
            if attempt == attempts or self._unreachable is not None:
                if not connected:
                    self._count_connection_failure(url, problem)
                raise OpenAIRequestError(
                    f"{method} {url} failed after {attempt} attempt(s); last: {problem}"
                )
            delay = self._backoff_s(attempt, retry_after)
            log.info(
                "%s %s: %s; retry %d of %d in %.2f s",
                method,
                url,
                problem,
                attempt,
                self.max_retries,
                delay,
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _take_turn(self) -> None:
        """Wait until ``requests_per_minute`` lets the next request (a retry too) start. Only
        the event loop's thread runs this, so the turns need no lock."""
        if self.requests_per_minute is None:
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self._next_start)
        self._next_start = start + 60 / self.requests_per_minute
        if start > now:
            await asyncio.sleep(start - now)

    def _count_connection_failure(self, url: str, problem: str) -> None:
        self._connection_failures += 1
        if self._unreachable is None and self._connection_failures >= self.max_connection_failures:
            self._unreachable = (
                f"the server at {url} can't be reached: {self._connection_failures} requests in "
                f"a row could not connect ({problem}); start it, or fix base_url"
            )

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform over [0, base * 2^(attempt-1)], so clients that failed together
        don't come back together. A server's own Retry-After wins, within a cap."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        ceiling = min(MAX_BACKOFF_S, self.retry_backoff_s * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)

    def _redact(self, text: str) -> str:
        """``text`` with the API key masked, should a server have echoed it back."""
        client = self._client
        authorization = client.headers.get("Authorization", "") if client is not None else ""
        key = authorization.removeprefix("Bearer ")
        return text.replace(key, "***") if key else text


class _EncodedImages:
    """The ``image_url`` parts of the latest pictures sent, by picture object: a document page
    asked about several times (the runner hands the model the same decoded page for each
    question) is encoded once.

    A picture is recognised by identity, as long as it is alive; one drawn on after it was sent
    would not be encoded again (the runner's page cache makes the same assumption).
    """

    def __init__(self, image_format: str, size: int = 64) -> None:
        self.image_format, self.size = image_format, size
        self._parts: OrderedDict[int, tuple[weakref.ref[Any], dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def part(self, image: Any) -> dict[str, Any]:
        if not isinstance(image, Image.Image):  # a path or bytes: nothing to recognise it by
            return self._encode(image)
        with self._lock:
            cached = self._parts.get(id(image))
            if cached is not None and cached[0]() is image:
                self._parts.move_to_end(id(image))
                return cached[1]
        part = self._encode(image)
        with self._lock:
            self._parts[id(image)] = (weakref.ref(image), part)
            while len(self._parts) > self.size:
                self._parts.popitem(last=False)
        return part

    def _encode(self, image: Any) -> dict[str, Any]:
        url = image_to_data_url(image, image_format=self.image_format)
        return {"type": "image_url", "image_url": {"url": url}}


def _refuse_lone_surrogates(texts: dict[str, str]) -> None:
    """Raise :class:`OpenAIRequestError` naming the first of ``texts`` (by what it is) that
    holds a lone surrogate, which can't be encoded as UTF-8 and so can't be sent."""
    for what, text in texts.items():
        if problem := lone_surrogate(text):
            raise OpenAIRequestError(
                f"the {what} is not valid Unicode ({problem}), so it was not sent; fix the text "
                "(a surrogate must be one half of a pair)"
            )


def _parse_completion(answer: Any) -> Prediction:
    try:
        message = answer["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise OpenAIRequestError(
            f"the server's answer has no choices[0].message: {_shorten(json.dumps(answer))}"
        ) from None
    usage = answer.get("usage") or {}
    text = (message.get("content") or "").strip()
    # A reasoning model's thinking, apart, where the server splits it (vLLM and SGLang with a
    # reasoning parser: reasoning_content; some servers: reasoning).
    reasoning = message.get("reasoning_content", message.get("reasoning"))
    details = usage.get("completion_tokens_details") or {}
    return Prediction(
        text=text,
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
        # Stripped as the answer is, and as split_reasoning leaves the thinking it splits.
        reasoning=reasoning.strip() if isinstance(reasoning, str) else None,
        reasoning_tokens=_int_or_none(details.get("reasoning_tokens")),
        # Cut by the token limit while thinking: no answer came.
        truncated=isinstance(reasoning, str)
        and not text
        and answer["choices"][0].get("finish_reason") == "length",
    )


def _server_message(response: httpx.Response) -> str:
    """The error message in an OpenAI-style (or FastAPI-style) error body, else the raw body."""
    try:
        body = response.json()
    except ValueError:
        return _shorten(response.text) or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return _shorten(str(error["message"]))
        for key in ("detail", "message", "error"):
            if body.get(key):
                return _shorten(str(body[key]))
    return _shorten(json.dumps(body))


def _retry_after_s(response: httpx.Response) -> float | None:
    """A numeric Retry-After header in seconds; anything else (an HTTP date, ``nan``, a
    negative number) is ignored, and the backoff applies."""
    value = response.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _shorten(text: str) -> str:
    text = text.strip()
    if len(text) <= MAX_ERROR_BODY_CHARS:
        return text
    return text[:MAX_ERROR_BODY_CHARS] + "..."


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
