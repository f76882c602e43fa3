from __future__ import annotations

from collections.abc import Sequence

import pytest
from PIL import Image

from model_interface.model_interface import (
    GenerationSettings,
    ModelInterface,
    Prediction,
    PredictionRequest,
    UnsupportedRequest,
)


class UpstreamStyle(ModelInterface):
    """Written against model_interface 0.1: both methods, the prompt named `question`."""

    def __init__(self, model_name: str, system_prompt: str, cache_dir: str) -> None:
        super().__init__(model_name, system_prompt, cache_dir)
        self.framework = "Upstream"

    def predict_on_image(self, image, question: str) -> str:
        return f"one:{image}:{question}"

    def predict_on_images(self, images: list, question: str) -> str:
        return f"many:{len(images)}:{question}"


class BatchOnly(ModelInterface):
    framework = "batch"

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        return [
            Prediction(f"{len(r.images)}:{r.prompt}", prompt_tokens=1, completion_tokens=2)
            for r in requests
        ]


class ImagesOnly(ModelInterface):
    def predict_on_images(self, images, prompt: str) -> str:
        return f"{len(images)}:{prompt}"


def test_upstream_wrapper_accepts_prompt_and_question_keywords() -> None:
    model = UpstreamStyle("m", "", "cache")
    assert model.predict_on_image("a.jpg", "q") == "one:a.jpg:q"
    assert model.predict_on_image("a.jpg", question="q") == "one:a.jpg:q"
    assert model.predict_on_image("a.jpg", prompt="q") == "one:a.jpg:q"
    assert model.predict_on_images(["a", "b"], question="q") == "many:2:q"
    assert model.predict_on_images(["a", "b"], prompt="q") == "many:2:q"
    assert model.framework == "Upstream"
    assert (model.model_name, model.system_prompt, model.cache_dir) == ("m", "", "cache")


def test_giving_both_keywords_is_refused() -> None:
    model = UpstreamStyle("m", "", "cache")
    with pytest.raises(TypeError, match="both prompt= and question="):
        model.predict_on_image("a.jpg", prompt="q", question="q")


def test_default_batch_path_routes_to_upstream_methods() -> None:
    model = UpstreamStyle("m", "", "cache")
    predictions = model.predict_batch(
        [PredictionRequest(["a.jpg"], "q1"), PredictionRequest(["a", "b", "c"], "q2")]
    )
    assert predictions == [Prediction("one:a.jpg:q1"), Prediction("many:3:q2")]


def test_one_request_methods_derive_from_predict_batch() -> None:
    model = BatchOnly("m")
    assert model.predict_on_image("x", "q") == "1:q"
    assert model.predict_on_image("x", question="q") == "1:q"
    assert model.predict_on_images(["x", "y"], question="q") == "2:q"


def test_predict_on_image_defaults_to_predict_on_images() -> None:
    model = ImagesOnly("m")
    assert model.predict_on_image("x", question="q") == "1:q"
    assert model.predict_batch([PredictionRequest(["x", "y"], "q")]) == [Prediction("2:q")]


def test_error_in_a_prediction_surfaces_from_the_one_request_methods() -> None:
    class Failing(ModelInterface):
        def predict_batch(self, requests):
            return [Prediction("", error="server said no") for _ in requests]

    with pytest.raises(RuntimeError, match="server said no"):
        Failing("m").predict_on_image(Image.new("RGB", (2, 2)), "q")


def test_a_subclass_implementing_no_predict_method_fails_at_construction() -> None:
    class NoMethods(ModelInterface):
        pass

    with pytest.raises(TypeError, match=r"implement predict_batch.*or predict_on_image\("):
        NoMethods("m")
    with pytest.raises(TypeError, match="implement predict_batch"):
        ModelInterface("m")


def test_a_single_image_model_answers_one_image_and_refuses_several() -> None:
    class OnlySingle(ModelInterface):
        def predict_on_image(self, image, prompt):
            return f"one:{prompt}"

    model = OnlySingle("m")
    assert model.predict_on_images(["a"], "q") == "one:q"
    assert model.predict_batch([PredictionRequest(["a"], "q")]) == [Prediction("one:q")]
    with pytest.raises(NotImplementedError, match=r"implements only predict_on_image.*has 2"):
        model.predict_on_images(["a", "b"], "q")


def test_images_and_prompt_may_be_passed_by_keyword_in_any_combination() -> None:
    model = UpstreamStyle("m", "", "cache")
    assert model.predict_on_image(image="a.jpg", question="q") == "one:a.jpg:q"
    assert model.predict_on_image(image="a.jpg", prompt="q") == "one:a.jpg:q"
    assert model.predict_on_images(images=["a", "b"], question="q") == "many:2:q"
    assert model.predict_on_images(images=["a", "b"], prompt="q") == "many:2:q"
    batch = BatchOnly("m")
    assert batch.predict_on_image(image="x", question="q") == "1:q"
    assert batch.predict_on_images(images=["x", "y"], prompt="q") == "2:q"


def test_defaults_and_generation_settings() -> None:
    model = BatchOnly("m")
    assert (model.system_prompt, model.cache_dir) == ("", "model_cache")
    assert model.generation.greedy and model.generation.max_new_tokens == 512
    tuned = BatchOnly("m", max_new_tokens=8, temperature=0.7, generation_kwargs={"num_beams": 2})
    assert tuned.generation.max_new_tokens == 8
    assert not tuned.generation.greedy
    assert tuned.generation.generation_kwargs == {"num_beams": 2}


def test_unknown_init_parameter_is_named() -> None:
    with pytest.raises(TypeError, match=r"unknown init parameter\(s\) \['max_tokens'\]"):
        BatchOnly("m", max_tokens=5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"temperature": -1}, "temperature must be >= 0"),
        ({"top_p": 0}, "top_p must be in"),
    ],
)
def test_invalid_generation_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchOnly("m", **settings)


def test_framework_stays_assignable_and_close_is_a_context_manager() -> None:
    with BatchOnly("m") as model:
        assert model.framework == "batch"
        model.framework = "other"
        assert model.framework == "other"
    assert "BatchOnly(model_name='m'" in repr(model)


def test_a_requests_own_settings_override_the_models() -> None:
    model = BatchOnly("m", max_new_tokens=64, temperature=0.5, stop=["\n\n"])
    request = PredictionRequest(["x"], "q", generation={"max_new_tokens": 8, "stop": "."})
    settings = model.settings_for(request)
    assert (settings.max_new_tokens, settings.temperature, settings.stop) == (8, 0.5, (".",))
    assert model.settings_for(PredictionRequest(["x"], "q")) is model.generation
    assert settings.sampling_options()["stop"] == ["."]
    assert settings.cut_at_stop("a, b. c.") == "a, b"
    assert GenerationSettings(stop=("x", ", ")).cut_at_stop("a, bx") == "a"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_tokens": 5}, r"unknown generation setting\(s\) \['max_tokens'\]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"max_new_tokens": "many"}, "max_new_tokens must be an integer"),
        ({"temperature": -1}, "temperature must be >= 0"),
        ({"stop": [""]}, "stop must be non-empty strings"),
    ],
)
def test_a_bad_setting_in_a_request_is_an_unsupported_request(overrides, message) -> None:
    with pytest.raises(UnsupportedRequest, match=message):
        BatchOnly("m").settings_for(PredictionRequest(["x"], "q", generation=overrides))


def test_one_request_wrappers_refuse_what_their_methods_cannot_take() -> None:
    model = UpstreamStyle("m", "Be brief.", "cache")
    same = PredictionRequest(["a"], "q", system_prompt="Be brief.", generation={})
    assert model.predict_batch([same]) == [Prediction("one:a:q")]
    with pytest.raises(UnsupportedRequest, match="can't take a request's own"):
        model.predict_batch([PredictionRequest(["a"], "q", system_prompt="Other.")])
    with pytest.raises(UnsupportedRequest, match=r"generation settings.*'max_new_tokens': 3"):
        model.predict_batch([PredictionRequest(["a"], "q", generation={"max_new_tokens": 3})])
