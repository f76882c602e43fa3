"""JSON Schemas as grammar engines should compile them, for constrained decoding.

The Hugging Face backend compiles a request's schema with xgrammar, and vLLM's structured
outputs use xgrammar too: both are given :func:`grammar_schema`'s form, without optional
whitespace, so that the two engines constrain a model to the same texts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# No optional whitespace, and compact separators: what vLLM's structured outputs write with
# ``disable_any_whitespace``, so that both engines admit exactly the same texts.
GRAMMAR_WHITESPACE = {"any_whitespace": False, "separators": (",", ":")}

NO_CONTROL_OR_QUOTE = '[^\\u0000-\\u001f"\\\\]'


def grammar_schema(schema: Any) -> Any:
    """``schema`` as xgrammar should compile it, with the same meaning where it can.

    xgrammar's JSON strings admit raw control characters, which JSON forbids (``json.loads``
    refuses them), and a random model is happy to produce them. So every plain string (no
    ``pattern``, ``enum``, ``const`` or ``format`` of its own) gets a pattern of characters
    that are neither control characters nor a double quote or backslash, carrying its
    ``minLength``/``maxLength`` (xgrammar ignores those beside a pattern). The price: such a
    string can't hold an ASCII double quote or a backslash.
    """
    if isinstance(schema, list):
        return [grammar_schema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    converted = {key: grammar_schema(value) for key, value in schema.items()}
    plain = not any(key in schema for key in ("pattern", "enum", "const", "format"))
    if schema.get("type") == "string" and plain:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        count = f"{{{low},{'' if high is None else high}}}"
        converted = {
            key: value for key, value in converted.items() if key not in ("minLength", "maxLength")
        }
        converted["pattern"] = f"^{NO_CONTROL_OR_QUOTE}{count}$"
    return converted
