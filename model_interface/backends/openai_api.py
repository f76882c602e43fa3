"""A client for any OpenAI-compatible chat completions server: ``vllm serve``, SGLang,
``python -m runners.serve``, or a cloud API.

Each request is one ``POST {base_url}/chat/completions`` with the images as base64 ``data:`` URLs
(see :mod:`model_interface.chat`). A batch is sent as concurrent requests, at most
``concurrency`` in flight, over one pooled ``httpx.Client``; the server does the batching.

Failures stay with their request: a request that still fails after its retries comes back as a
``Prediction`` with ``error`` set, and the rest of the batch goes on.

The API key is read from the environment variable *named* by ``api_key_env`` and kept only in
the HTTP client's headers (which httpx masks in its repr), never in an attribute, a log line or
a config.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from model_interface.chat import openai_messages
from model_interface.model_interface import ModelInterface, Prediction, PredictionRequest

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
RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
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
        timeout: seconds allowed for connecting, and between bytes of the answer.
        max_retries: further attempts after a failed one (so ``max_retries + 1`` in all) on
            429/500/502/503/504, timeouts, refused and dropped connections.
        concurrency: requests in flight at once (also the connection pool's size).
        retry_backoff_s: the first backoff; it doubles each attempt (full jitter, capped at 30 s).
        image_format: how images are encoded into data URLs; PNG is lossless.
        **generation: ``max_new_tokens``, ``temperature``, ... (see ``GenerationSettings``);
            they are sent with every request, and ``generation_kwargs`` are merged into the
            request body as they are.
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
        max_retries: int = 3,
        concurrency: int = 8,
        retry_backoff_s: float = 0.5,
        image_format: str = "PNG",
        **generation: Any,
    ) -> None:
        super().__init__(model_name, system_prompt, cache_dir, **generation)
        if not base_url:
            raise ValueError("base_url is required, e.g. http://127.0.0.1:8000/v1")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.retry_backoff_s = float(retry_backoff_s)
        self.image_format = image_format

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
        self._client: httpx.Client | None = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            ),
        )
        if not self.model_name:
            try:
                self.model_name = self._first_listed_model()
            except Exception:
                self.close()
                raise

    # --- the batch entry point ------------------------------------------------------------

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        """One request per item, at most ``concurrency`` in flight; answers in request order."""
        if not requests:
            return []
        workers = min(self.concurrency, len(requests))
        if workers == 1:
            return [self._predict_one(request) for request in requests]
        with ThreadPoolExecutor(workers, thread_name_prefix="openai-request") as pool:
            # map() yields results in the order of its input, whatever order they finish in.
            return list(pool.map(self._predict_one, requests))

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_name={self.model_name!r}, base_url={self.base_url!r}, "
            f"framework={self.framework!r})"
        )

    # --- one request ----------------------------------------------------------------------

    def request_body(self, request: PredictionRequest) -> dict[str, Any]:
        """The JSON body of the chat completion request for ``request``."""
        return {
            "model": self.model_name,
            "messages": openai_messages(
                self.system_prompt, request, image_format=self.image_format
            ),
            # top_k, repetition_penalty and seed are not OpenAI's own, but vLLM and SGLang take
            # them; they are sent only when set. A request's own settings override the model's.
            **self.settings_for(request).sampling_options(),
        }

    def _predict_one(self, request: PredictionRequest) -> Prediction:
        """Never raises: a failure becomes the prediction's ``error``."""
        try:
            body = self.request_body(request)
            answer = self._send("POST", "/chat/completions", json=body)
            return _parse_completion(answer)
        except Exception as error:
            message = str(error) if isinstance(error, OpenAIRequestError) else _describe(error)
            log.warning("%s", message)
            return Prediction("", error=message)

    def _first_listed_model(self) -> str:
        listing = self._send("GET", "/models")
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

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
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
            try:
                response = client.request(method, url, **kwargs)
            except RETRY_EXCEPTIONS as error:
                problem = _describe(error)
            except httpx.HTTPError as error:
                raise OpenAIRequestError(f"{method} {url} failed: {_describe(error)}") from None
            else:
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
            if attempt == attempts:
                raise OpenAIRequestError(
                    f"{method} {url} failed after {attempts} attempt(s); last: {problem}"
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
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform over [0, base * 2^(attempt-1)], so clients that failed together
        don't come back together. A server's own Retry-After wins, within a cap."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        ceiling = min(MAX_BACKOFF_S, self.retry_backoff_s * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)


def _parse_completion(answer: Any) -> Prediction:
    try:
        message = answer["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise OpenAIRequestError(
            f"the server's answer has no choices[0].message: {_shorten(json.dumps(answer))}"
        ) from None
    usage = answer.get("usage") or {}
    return Prediction(
        text=(message.get("content") or "").strip(),
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
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
    """A numeric Retry-After header in seconds (an HTTP date is ignored: backoff applies)."""
    value = response.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None or seconds < 0 else seconds


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
