"""A deterministic model with no weights: it describes the picture it is shown.

The answer is built from each image's size and mean colour plus the prompt, so a different
image or prompt changes it. It is the quickest model for testing a pipeline end to end, and
the example of a batching wrapper in the README. Asked for a JSON Schema, it answers with JSON
that follows it, the description in every string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from model_interface.images import load_image
from model_interface.model_interface import ModelInterface, Prediction, PredictionRequest


class DummyModel(ModelInterface):
    framework = "dummy"

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        return [self._answer(request) for request in requests]

    def _answer(self, request: PredictionRequest) -> Prediction:
        descriptions = []
        for image in request.images:
            picture = load_image(image)
            # A box filter down to one pixel is the mean colour, computed in C.
            red, green, blue = picture.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
            descriptions.append(f"{picture.width}x{picture.height} rgb({red},{green},{blue})")
        system_prompt = self.system_prompt_for(request)
        settings = self.settings_for(request)
        words = " ".join([*descriptions, "|", system_prompt, request.prompt]).split()
        text = settings.cut_at_stop(" ".join(words[: settings.max_new_tokens])).strip()
        if settings.json_schema is not None:
            text = json.dumps(_following(settings.json_schema, text), ensure_ascii=False)
        prompt_tokens = len(f"{system_prompt} {request.prompt}".split())
        return Prediction(text, prompt_tokens=prompt_tokens, completion_tokens=len(text.split()))


def _following(schema: Mapping[str, Any], text: str) -> Any:
    """A value that follows ``schema`` (the parts of JSON Schema a field list uses), with
    ``text`` in its strings."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: _following(part, text) for name, part in properties.items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return len(text)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return text[: schema.get("maxLength", len(text))]
