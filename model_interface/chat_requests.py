"""OpenAI chat-completion requests read and checked, before any model work: what one request
may hold (:class:`RequestLimits`), its JSON body parsed within them, and the request it makes
for a model (:func:`parse_chat_request`). No web framework is imported here: the runner's
config uses the limits without loading the server."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from model_interface.chat import data_url_to_bytes, lone_surrogate
from model_interface.images import ImageLoadError, image_size, load_image
from model_interface.model_interface import PredictionRequest

# Commas and brackets are counted this many bytes at a time: one count holds the GIL for well
# under a millisecond, so the event loop gets its turn between two.
SCAN_WINDOW_BYTES = 2**20
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
    template_options = body.get("chat_template_kwargs")
    if template_options is not None:
        if not isinstance(template_options, dict):
            raise BadRequest(f"'chat_template_kwargs' must be an object, got {template_options!r}")
        overrides["chat_template_kwargs"] = template_options
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
