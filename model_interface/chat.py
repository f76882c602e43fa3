"""OpenAI-style chat messages for a request: the wire format of OpenAI-compatible servers, which
vLLM and SGLang also accept in-process.

Images travel as base64 ``data:`` URLs. PNG is the default because it is lossless: a server
that decodes the URL sees exactly the pixels the client had.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
from collections.abc import Callable
from typing import Any

from model_interface.images import ImageInput, ImageLoadError, load_image
from model_interface.model_interface import PredictionRequest


def lone_surrogate(text: str) -> str | None:
    """``"lone surrogate \\ud800 at character 5"`` for the first half of a surrogate pair in
    ``text`` that stands alone (Python keeps a valid pair as one character; JSON's ``"\\ud800"``
    escape makes a lone one), else None. Such text can't be encoded as UTF-8: no server or
    tokenizer can take it."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"lone surrogate \\u{ord(text[error.start]):04x} at character {error.start}"
    return None


def image_to_data_url(image: ImageInput, *, image_format: str = "PNG") -> str:
    """Encode an image input as a ``data:image/...;base64,...`` URL."""
    buffer = io.BytesIO()
    # PNG's fastest compression: a third less time than the default, hardly a larger file for
    # document scans, and the same pixels.
    options = {"compress_level": 1} if image_format.upper() == "PNG" else {}
    load_image(image).save(buffer, format=image_format, **options)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/{image_format.lower()};base64,{encoded}"


def data_url_to_bytes(url: str) -> bytes:
    """The encoded image inside a base64 ``data:`` URL."""
    header, comma, payload = url.partition(",")
    if not (comma and header.startswith("data:") and header.endswith(";base64")):
        raise ImageLoadError(
            f"expected a base64 data URL ('data:image/png;base64,...'), got {url[:40]!r}"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise ImageLoadError(f"invalid base64 in image data URL: {error}") from None


def openai_messages(
    system_prompt: str,
    request: PredictionRequest,
    *,
    image_format: str = "PNG",
    image_part: Callable[[ImageInput], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The OpenAI chat messages for one request: an optional system message, then one user turn
    with the images (in order) followed by the prompt text.

    ``system_prompt`` is the model's; the request's own, if it has one, takes precedence.
    Images become ``image_url`` parts with data URLs, unless ``image_part`` builds the part
    (vLLM in process takes PIL images as they are).
    """
    if image_part is None:
        image_part = functools.partial(_data_url_part, image_format=image_format)
    return _messages(
        system_prompt if request.system_prompt is None else request.system_prompt,
        [image_part(image) for image in request.images],
        request.prompt,
        system_as_parts=False,
    )


def template_messages(system_prompt: str, request: PredictionRequest) -> list[dict[str, Any]]:
    """The messages a Hugging Face processor's chat template takes: an image placeholder per
    image (the pictures themselves go to the processor), then the prompt text."""
    return _messages(
        system_prompt if request.system_prompt is None else request.system_prompt,
        [{"type": "image"} for _ in request.images],
        request.prompt,
        system_as_parts=True,
    )


def _data_url_part(image: ImageInput, *, image_format: str) -> dict[str, Any]:
    return {
        "type": "image_url",
        "image_url": {"url": image_to_data_url(image, image_format=image_format)},
    }


def _messages(
    system_prompt: str, image_parts: list[dict[str, Any]], text: str, *, system_as_parts: bool
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system_prompt:
        # Chat templates iterate over content parts; the OpenAI format also takes a string.
        content = [{"type": "text", "text": system_prompt}] if system_as_parts else system_prompt
        messages.append({"role": "system", "content": content})
    messages.append({"role": "user", "content": [*image_parts, {"type": "text", "text": text}]})
    return messages
