from __future__ import annotations

from PIL import Image

from model_interface.backends.dummy import DummyModel
from model_interface.model_interface import PredictionRequest


def test_answers_describe_the_image_and_prompt(tmp_path) -> None:
    path = tmp_path / "blue.png"
    Image.new("RGB", (8, 6), (0, 0, 255)).save(path)
    model = DummyModel("dummy", system_prompt="Be brief.")
    assert model.predict_on_image(str(path), question="Colour?") == (
        "8x6 rgb(0,0,255) | Be brief. Colour?"
    )


def test_different_images_and_prompts_give_different_answers() -> None:
    model = DummyModel("dummy")
    white, black = Image.new("RGB", (4, 4), "white"), Image.new("RGB", (4, 4), "black")
    assert model.predict_on_image(white, "q") != model.predict_on_image(black, "q")
    assert model.predict_on_image(white, "q") != model.predict_on_image(white, "r")


def test_batch_counts_tokens_and_respects_max_new_tokens() -> None:
    model = DummyModel("dummy", max_new_tokens=3)
    image = Image.new("RGB", (2, 2))
    (prediction,) = model.predict_batch([PredictionRequest([image, image], "a b c d")])
    assert prediction.text == "2x2 rgb(0,0,0) 2x2"
    assert (prediction.prompt_tokens, prediction.completion_tokens) == (4, 3)
