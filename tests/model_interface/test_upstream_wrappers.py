"""Wrappers published for the upstream API, called exactly as their users call them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from model_interface import ModelFactory, PredictionRequest, measure, measure_inference_time
from tests.support.upstream_wrappers import Qwen2_5_VLStyleModel, Qwen2VLStyleModel


@pytest.fixture
def page(tmp_path: Path) -> str:
    path = tmp_path / "page.png"
    Image.new("RGB", (30, 20), "white").save(path)
    return str(path)


@pytest.mark.parametrize("wrapper", [Qwen2_5_VLStyleModel, Qwen2VLStyleModel])
def test_keyword_calls_as_upstream_users_write_them(wrapper, page: str) -> None:
    model = wrapper("some-model", "", "model_cache")
    assert model.predict_on_image(image=page, question="what?") == "30x20 | what?"
    assert model.predict_on_image(image=page, prompt="what?") == "30x20 | what?"
    assert model.predict_on_images(images=[page, page], question="both?") == "30x20 30x20 | both?"
    assert model.predict_on_images(images=[page], prompt="one?") == "30x20 | one?"
    assert model.predict_on_image(page, "positional") == "30x20 | positional"


def test_a_wrapper_that_skips_super_init_has_every_attribute_the_package_uses() -> None:
    model = Qwen2_5_VLStyleModel(
        "Qwen2.5-VL-7B-Instruct", "Be brief.", "/cache", device_map="cuda:0"
    )
    assert (model.model_name, model.system_prompt, model.cache_dir) == (
        "Qwen2.5-VL-7B-Instruct",
        "Be brief.",
        "/cache",
    )
    assert model.framework == "Hugging_Face" and model.device_map == "cuda:0"
    assert model.generation.max_new_tokens == 512 and model.generation.greedy
    assert model.cache_hit is None
    assert "Qwen2_5_VLStyleModel(model_name='Qwen2.5-VL-7B-Instruct'" in repr(model)
    assert model.system_prompt_for(PredictionRequest(["x"], "q")) == "Be brief."
    model.close()


def test_registered_on_import_and_created_the_upstream_way(page: str) -> None:
    # Importing the module registered it; registering again as the benchmark does is harmless.
    ModelFactory.register_model(
        "Qwen2.5-VL-style", "tests.support.upstream_wrappers:Qwen2_5_VLStyleModel"
    )
    model = ModelFactory.get_model(
        "Qwen2.5-VL-style",
        {
            "model_name": "Qwen2.5-VL-3B-Instruct",
            "system_prompt": "",
            "cache_dir": "c",
            "device_map": "auto",
        },
    )
    assert isinstance(model, Qwen2_5_VLStyleModel)
    assert model.predict_on_image(page, "q") == "30x20 | q"
    (prediction,) = model.predict_batch([PredictionRequest([page, page], "q")])
    assert prediction.text == "30x20 30x20 | q"


def test_measuring_a_wrapper_that_skips_super_init(page: str) -> None:
    model = Qwen2VLStyleModel()
    assert measure_inference_time(model.predict_on_image, image=page, question="q") >= 0
    with measure() as cost:
        answer = model.predict_on_images(images=[page], question="q")
    assert answer == "30x20 | q"
    assert cost.wall_s >= 0 and cost.peak_rss_mb > 0
