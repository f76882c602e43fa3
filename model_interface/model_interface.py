"""The base class every vision-language model wrapper inherits.

A wrapper implements one of two things:

* ``predict_batch(requests)``: the batch entry point, for backends that batch for real;
* ``predict_on_images(images, prompt)`` (and optionally ``predict_on_image``): the upstream
  model_interface 0.1 API, one request at a time.

Everything else is derived from whichever one a wrapper implements, so a wrapper written
against the upstream API works wherever the batch path is used, and vice versa.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import time
from abc import ABC
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model_interface.images import ImageInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionRequest:
    """One prompt about one or more images (or none, where the model takes text alone).

    ``system_prompt`` overrides the model's own for this request (a server passes on what its
    client sent); ``None`` means the model's. ``generation`` overrides the model's generation
    settings for this request alone, by :class:`GenerationSettings` field name, e.g.
    ``{"max_new_tokens": 32, "temperature": 0.7, "stop": ["\\n"]}``. ``response_format`` is a
    JSON Schema the answer must follow (constrained decoding; the same as
    ``generation={"json_schema": ...}``).
    """

    images: Sequence[ImageInput]
    prompt: str
    system_prompt: str | None = None
    generation: Mapping[str, Any] | None = None
    response_format: Mapping[str, Any] | None = None


@dataclass
class Prediction:
    """A model's answer to one request; token counts are ``None`` where a backend can't know them.

    ``error`` is set (and ``text`` empty) when a backend failed this one request but not the
    whole batch, e.g. an HTTP request that still failed after its retries.
    """

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    # The generated token ids, where a backend sees them (Hugging Face, vLLM): two backends'
    # answers then compare token by token, not only as decoded text.
    token_ids: tuple[int, ...] | None = None
    # (width, height) of each image as the model received it, after its processor resized it
    # (max_pixels and the like), where a backend can tell: scores move with resolution.
    image_sizes: tuple[tuple[int, int], ...] | None = None
    # A reasoning model's thinking, apart from the answer in ``text`` (split_reasoning), with
    # its tokens where known; ``truncated``: the thinking never ended, so there is no answer.
    reasoning: str | None = None
    reasoning_tokens: int | None = None
    truncated: bool = False
    # The chat template opened a reasoning block at the end of the prompt (Qwen3-VL-Thinking,
    # DeepSeek-R1): the text starts inside it, without the start marker (prompt_opens_reasoning).
    prompt_opens_reasoning: bool = False


class UnsupportedRequest(ValueError):
    """A request this model can't take as it is (e.g. no image, for a model that needs one).

    A mistake of the request, not a failure of the model: a server answers it with 400.
    """


class ModelUnavailable(RuntimeError):
    """No request can be answered now (a server that is down): stop, rather than fail every
    remaining request one by one. The message says what is wrong."""


@dataclass
class TimedPrediction:
    """A prediction, with the model call that produced it: its wall time and its size."""

    prediction: Prediction
    call_s: float
    batch_size: int
    unsupported: bool = False  # the model refused the request itself (UnsupportedRequest)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings shared by every backend. Greedy unless ``temperature`` > 0."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    """Strings that end the answer; the answer is cut before the first one it contains."""
    json_schema: Mapping[str, Any] | None = None
    """A JSON Schema the answer must follow: backends constrain decoding to it (vLLM's and
    SGLang's structured outputs, ``response_format`` for OpenAI-compatible servers, xgrammar
    for Hugging Face)."""
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    """Backend-specific generation options passed through untouched (e.g. ``num_beams``)."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options the model's chat template reads, e.g. ``{"enable_thinking": False}`` (Qwen3):
    passed to the template by Hugging Face and vLLM, and sent to OpenAI-compatible servers."""
    reasoning_markers: Sequence[str] | None = ("<think>", "</think>")
    """The (start, end) markers around a reasoning model's thinking: text between them is
    ``Prediction.reasoning``, the rest the answer (:func:`split_reasoning`). None: no split."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> GenerationSettings:
        """These settings with some replaced (a request's own); raises :class:`UnsupportedRequest`
        for an unknown name or a value out of range."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(GENERATION_PARAMETERS))
        if unknown:
            raise UnsupportedRequest(
                f"unknown generation setting(s) {unknown}; known: {list(GENERATION_PARAMETERS)}"
            )
        try:
            return dataclasses.replace(self, **overrides)
        except (TypeError, ValueError) as error:
            raise UnsupportedRequest(f"bad generation setting: {error}") from None

    def cut_at_stop(self, text: str) -> str:
        """``text`` up to (not including) the first of the stop strings in it."""
        cut = min((found for stop in self.stop if (found := text.find(stop)) >= 0), default=None)
        return text if cut is None else text[:cut]

    def sampling_options(self, *, max_tokens_key: str = "max_tokens") -> dict[str, Any]:
        """These settings in the vocabulary vLLM, SGLang and OpenAI-compatible servers share.

        Greedy is ``temperature=0`` with no other sampling options; unset options are left out,
        and ``generation_kwargs`` are merged last, so they can override anything.
        """
        options: dict[str, Any] = {max_tokens_key: self.max_new_tokens}
        if self.greedy:
            options["temperature"] = 0.0
        else:
            options.update(temperature=self.temperature, top_p=self.top_p)
            if self.top_k is not None:
                options["top_k"] = self.top_k
        if self.repetition_penalty is not None:
            options["repetition_penalty"] = self.repetition_penalty
        if self.seed is not None:
            options["seed"] = self.seed
        if self.stop:
            options["stop"] = list(self.stop)
        options.update(self.generation_kwargs)
        return options  # json_schema is each backend's own business: their options differ

    def __post_init__(self) -> None:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if not all(isinstance(text, str) and text for text in stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))  # frozen: settings can be compared
        if self.reasoning_markers is not None:
            markers = tuple(self.reasoning_markers)
            if len(markers) != 2 or not all(isinstance(m, str) and m for m in markers):
                raise ValueError(
                    f"reasoning_markers must be two non-empty strings (start, end) or null, got "
                    f"{self.reasoning_markers!r}"
                )
            object.__setattr__(self, "reasoning_markers", markers)
        if self.json_schema is not None and not isinstance(self.json_schema, Mapping):
            raise ValueError(f"json_schema must be a JSON Schema object, got {self.json_schema!r}")
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool):
            raise ValueError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


GENERATION_PARAMETERS = tuple(f.name for f in dataclasses.fields(GenerationSettings))


def _accept_keyword_calls(method: Callable[..., str]) -> Callable[..., str]:
    """Let callers pass the image(s) and the prompt by keyword, whatever the subclass named them.

    Upstream callers write ``predict_on_image(image=path, question=q)`` or ``prompt=q``, and
    ``predict_on_images(images=[...], question=q)``; subclasses name their parameters
    ``question``, ``prompt`` or anything else. The call reaches the wrapped method with the
    image(s) first and the text second, positionally, so every combination works.
    """
    image_keyword = "image" if method.__name__ == "predict_on_image" else "images"

    @functools.wraps(method)
    def call(self: ModelInterface, *args: Any, **kwargs: Any) -> str:
        if not args and image_keyword in kwargs:
            args = (kwargs.pop(image_keyword),)
        given = [key for key in ("prompt", "question") if key in kwargs]
        if len(given) > 1:
            raise TypeError(f"{method.__name__}() got both prompt= and question=; pass one")
        if given and len(args) == 1:
            args = (*args, kwargs.pop(given[0]))
        return method(self, *args, **kwargs)

    call.__accepts_keyword_calls__ = True  # type: ignore[attr-defined]
    return call


class ModelInterface(ABC):  # noqa: B024 (abstract by __new__: one of three methods is required)
    """Abstract base of every VLM wrapper: images and a text prompt in, text out.

    Subclasses set ``framework`` (as a class attribute, or on the instance as upstream wrappers
    do) and implement ``predict_batch``, ``predict_on_images`` or, for single-image models,
    ``predict_on_image``.

    The attributes below have class-level defaults because published upstream wrappers set
    ``model_name``, ``system_prompt`` and ``cache_dir`` themselves and never call
    ``super().__init__``; such a wrapper still works everywhere.
    """

    framework: str = ""
    """Which inference framework runs the model: "Hugging Face", "vLLM", "SGLang", ..."""

    model_name: str = ""
    system_prompt: str = ""
    cache_dir: str = "model_cache"
    generation: GenerationSettings = GenerationSettings()
    """Decoding settings; wrappers that skip ``super().__init__`` get the defaults."""

    cache_hit: bool | None = None
    """Whether the weights came from ``cache_dir`` without a download; ``None`` if unknown."""

    random_weights: bool = False
    """True for the tiny offline models: they answer gibberish, so their scores mean nothing
    (the runner says so when a run ends)."""

    concurrency: int = 1
    """Requests the model works on at once (an HTTP client's requests in flight); the runner
    hands ``predict_batch`` at least this many at a time."""

    def __init__(
        self,
        model_name: str,
        system_prompt: str = "",
        cache_dir: str = "model_cache",
        **generation: Any,
    ) -> None:
        unknown = sorted(set(generation) - set(GENERATION_PARAMETERS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown init parameter(s) {unknown}; generation "
                f"settings are {list(GENERATION_PARAMETERS)}, other options belong to the "
                "backend's own __init__"
            )
        self.model_name = model_name
        self.system_prompt = system_prompt or ""
        self.cache_dir = str(cache_dir)
        self.generation = GenerationSettings(**generation)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("predict_on_image", "predict_on_images"):
            method = cls.__dict__.get(name)
            if callable(method) and not hasattr(method, "__accepts_keyword_calls__"):
                setattr(cls, name, _accept_keyword_calls(method))

    def __new__(cls, *args: Any, **kwargs: Any) -> ModelInterface:
        if not any(_overrides(cls, name) for name in PREDICT_METHODS):
            raise TypeError(
                f"Can't instantiate {cls.__name__}: implement predict_batch(self, requests) "
                "(batched backends), predict_on_images(self, images, prompt) (one request at a "
                "time) or predict_on_image(self, image, prompt) (single-image models)"
            )
        return super().__new__(cls)

    @_accept_keyword_calls
    def predict_on_image(self, image: ImageInput, prompt: str) -> str:
        """Answer ``prompt`` about one image."""
        return self.predict_on_images([image], prompt)

    @_accept_keyword_calls
    def predict_on_images(self, images: Sequence[ImageInput], prompt: str) -> str:
        """Answer ``prompt`` about several images shown together."""
        if not _overrides(type(self), "predict_batch"):
            # Only predict_on_image is implemented: one image is all this model can take.
            if len(images) != 1:
                raise NotImplementedError(
                    f"{type(self).__name__} implements only predict_on_image, so it answers "
                    f"about one image at a time; this request has {len(images)}"
                )
            return self.predict_on_image(images[0], prompt)
        (prediction,) = self.predict_batch([PredictionRequest(list(images), prompt)])
        if prediction.error is not None:
            raise RuntimeError(prediction.error)
        return prediction.text

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        """Answer many requests; returns one :class:`Prediction` per request, in order.

        The default loops over the one-request methods; batching backends override it. Those
        methods take neither a system prompt nor generation settings, so a request that asks
        for its own is refused (:class:`UnsupportedRequest`) rather than silently answered with
        the model's.
        """
        for request in requests:
            self._refuse_what_one_request_methods_cannot_take(request)
        predictions = []
        for request in requests:
            if len(request.images) == 1:
                text = self.predict_on_image(request.images[0], request.prompt)
            else:
                text = self.predict_on_images(request.images, request.prompt)
            predictions.append(Prediction(text=text))
        return predictions

    def system_prompt_for(self, request: PredictionRequest) -> str:
        """The system prompt that applies to ``request``."""
        return self.system_prompt if request.system_prompt is None else request.system_prompt

    def settings_for(self, request: PredictionRequest) -> GenerationSettings:
        """The generation settings that apply to ``request``: the model's, with the request's
        own overrides and response format; raises :class:`UnsupportedRequest` for a bad one."""
        overrides = dict(request.generation or {})
        if request.response_format is not None:
            overrides["json_schema"] = request.response_format
        return self.generation.with_overrides(overrides)

    def _refuse_what_one_request_methods_cannot_take(self, request: PredictionRequest) -> None:
        name = type(self).__name__
        if self.system_prompt_for(request) != self.system_prompt:
            raise UnsupportedRequest(
                f"{name} answers through predict_on_image(s), which use the model's own system "
                "prompt; it can't take a request's own"
            )
        if self.settings_for(request) != self.generation:
            raise UnsupportedRequest(
                f"{name} answers through predict_on_image(s), which use the model's own "
                f"generation settings; it can't take a request's own ({dict(request.generation)})"
            )

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what the model holds (GPU memory, server connections). Safe to call twice."""

    def __enter__(self) -> ModelInterface:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(model_name={self.model_name!r}, framework={self.framework!r})"


PREDICT_METHODS = ("predict_batch", "predict_on_images", "predict_on_image")


def _overrides(cls: type, name: str) -> bool:
    return inspect.getattr_static(cls, name) is not inspect.getattr_static(ModelInterface, name)


def predict_in_groups(
    requests: Sequence[PredictionRequest],
    key: Callable[[PredictionRequest], Hashable],
    predict: Callable[[list[PredictionRequest]], list[Prediction]],
) -> list[Prediction]:
    """``predict`` once per group of requests with equal ``key`` (those one engine call can
    take together), the predictions put back in request order."""
    groups: dict[Hashable, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(key(request), []).append(index)
    predictions: dict[int, Prediction] = {}
    for group in groups.values():
        answers = predict([requests[index] for index in group])
        predictions.update(zip(group, answers, strict=True))
    return [predictions[index] for index in range(len(requests))]


def predict_isolated(
    model: ModelInterface, requests: Sequence[PredictionRequest]
) -> list[TimedPrediction]:
    """``model.predict_batch(requests)``, where a failure stays with the request that caused it.

    A batch that raises (or returns the wrong number of predictions) is tried again one request
    at a time, so one bad request fails alone; a request that fails alone gets a
    :class:`Prediction` with ``error``. Raises only :class:`ModelUnavailable`.
    """
    if not requests:
        return []
    start = time.perf_counter()
    try:
        predictions = list(model.predict_batch(requests))
        if len(predictions) != len(requests):
            raise RuntimeError(
                f"{type(model).__name__}.predict_batch returned {len(predictions)} predictions "
                f"for {len(requests)} requests"
            )
    except ModelUnavailable:
        raise
    except Exception as error:
        call_s, message = time.perf_counter() - start, f"{type(error).__name__}: {error}"
        if len(requests) > 1:
            log.warning(
                "model failed on a batch of %d (%s); retrying one by one", len(requests), message
            )
            return [timed for request in requests for timed in predict_isolated(model, [request])]
        log.warning("model failed on a request: %s", message)
        unsupported = isinstance(error, (UnsupportedRequest, NotImplementedError))
        return [TimedPrediction(Prediction("", error=message), call_s, 1, unsupported)]
    call_s = time.perf_counter() - start
    return [
        TimedPrediction(
            split_reasoning(prediction, *_reasoning_settings(model, request)),
            call_s,
            len(requests),
        )
        for prediction, request in zip(predictions, requests, strict=True)
    ]


def split_reasoning(
    prediction: Prediction, markers: Sequence[str] | None, max_new_tokens: int | None = None
) -> Prediction:
    """``prediction`` with a reasoning model's thinking moved from ``text`` to ``reasoning``.

    The thinking is what lies between ``markers`` (start, end) at the start of the text, or
    before the end marker alone (templates that open the block in the prompt, as DeepSeek-R1's
    does, ``prompt_opens_reasoning``); the answer is what follows. A block that never ends
    leaves no answer, all its tokens thinking; it is ``truncated`` where the token limit cut it
    (the answer used ``max_new_tokens``, or its length or the limit is unknown), as a server
    says ``finish_reason: length``; a model that stopped mid-thought just gave no answer. A
    prediction a backend already split (a server's ``reasoning_content``), or one without
    markers, is left as it is.
    """
    if markers is None or prediction.reasoning is not None or prediction.error:
        return prediction
    start, end = markers
    text = prediction.text.lstrip()
    opened = text.startswith(start) or prediction.prompt_opens_reasoning
    text = text.removeprefix(start)
    closed_at = text.find(end)
    if not opened and (closed_at < 0 or start in text[:closed_at]):  # no block at the start
        return prediction
    if closed_at < 0:
        used = prediction.completion_tokens
        return dataclasses.replace(
            prediction,
            text="",
            reasoning=text.strip(),
            truncated=used is None or max_new_tokens is None or used >= max_new_tokens,
            reasoning_tokens=prediction.reasoning_tokens or used,
        )
    answer = text[closed_at + len(end) :].strip()
    return dataclasses.replace(prediction, text=answer, reasoning=text[:closed_at].strip())


def prompt_opens_reasoning(prompt: str | None, markers: Sequence[str] | None) -> bool:
    """Whether a rendered prompt ends with a reasoning block's start marker, as the templates
    that open the block write it last. A marker in the user's own text, or an empty block a
    template writes to switch thinking off, does not end the prompt."""
    if not prompt or markers is None:
        return False
    return prompt.rstrip().endswith(markers[0])


def _reasoning_settings(
    model: ModelInterface, request: PredictionRequest
) -> tuple[Sequence[str] | None, int | None]:
    """The request's reasoning markers and token limit (None, None where it failed on them)."""
    try:
        settings = model.settings_for(request)
    except UnsupportedRequest:  # the request failed on it already
        return None, None
    return settings.reasoning_markers, settings.max_new_tokens
