"""Wrappers with exactly the traits of those published for the upstream 0.1 API (VLMHyperBench's
``model_qwen2_vl`` and ``model_qwen2_5_vl`` packages), minus the weights:

* ``__init__`` never calls ``super().__init__``: it sets ``model_name``, ``system_prompt``,
  ``cache_dir`` and ``framework`` on the instance itself;
* it takes extra init arguments (``device_map``, ``min_pixels``, ``max_pixels``);
* the prompt parameter is named ``prompt`` (Qwen2.5-VL) or ``question`` (Qwen2-VL);
* the module registers its class with ``ModelFactory`` when imported.

Their users call them as ``model.predict_on_image(image=path, question=q)`` and
``model.predict_on_images(images=[...], question=q)``. The answer describes the picture
(its size), so a test can tell that the right image reached the model.
"""

from __future__ import annotations

from typing import Any

from model_interface.images import load_image
from model_interface.model_factory import ModelFactory
from model_interface.model_interface import ModelInterface


def _describe(images: list[Any]) -> str:
    return " ".join("{}x{}".format(*load_image(image).size) for image in images)


class Qwen2_5_VLStyleModel(ModelInterface):
    def __init__(
        self,
        model_name: str = "Qwen2.5-VL-3B-Instruct",
        system_prompt: str = "",
        cache_dir: str = "model_cache",
        device_map: Any = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.system_prompt = system_prompt
        self.cache_dir = cache_dir
        self.framework = "Hugging_Face"
        self.device_map = device_map or "auto"
        self.min_pixels = min_pixels if min_pixels is not None else 256 * 28 * 28

    def predict_on_image(self, image: Any, prompt: str) -> str:
        return f"{_describe([image])} | {prompt}"

    def predict_on_images(self, images: list[Any], prompt: str) -> str:
        return f"{_describe(images)} | {prompt}"


class Qwen2VLStyleModel(ModelInterface):
    def __init__(
        self, model_name="Qwen2-VL-2B-Instruct", system_prompt="", cache_dir="model_cache"
    ):
        self.model_name = model_name
        self.system_prompt = system_prompt
        self.cache_dir = cache_dir
        self.framework = "Hugging_Face"

    def predict_on_image(self, image, question):
        return f"{_describe([image])} | {question}"

    def predict_on_images(self, images, question):
        return f"{_describe(images)} | {question}"


ModelFactory.register_model(
    "Qwen2.5-VL-style", "tests.support.upstream_wrappers:Qwen2_5_VLStyleModel"
)
ModelFactory.register_model("Qwen2-VL-style", "tests.support.upstream_wrappers:Qwen2VLStyleModel")
