"""A deterministic model with no weights: it describes the picture it is shown.

The answer is built from each image's size and mean colour plus the prompt, so a different
image or prompt changes it. It is the quickest model for testing a pipeline end to end, and
the example of a batching wrapper in the README.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        prompt_tokens = len(f"{system_prompt} {request.prompt}".split())
        return Prediction(text, prompt_tokens=prompt_tokens, completion_tokens=len(text.split()))
