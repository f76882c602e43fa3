"""ModelFactory against real importable packages written to disk, never a patched lookup."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from PIL import Image

from model_interface.model_factory import ModelCreationError, ModelFactory, ModelFactoryError
from model_interface.model_interface import ModelInterface
from tests.support.helpers import REPO_ROOT

# An upstream-style wrapper package: only the two 0.1 methods, the prompt named `question`.
UPSTREAM_WRAPPER = """
from PIL import Image
from model_interface.model_interface import ModelInterface


class Qwen2VLModel(ModelInterface):
    def __init__(self, model_name: str, system_prompt: str, cache_dir: str):
        super().__init__(model_name, system_prompt, cache_dir)
        self.framework = "Hugging Face"

    def predict_on_image(self, image, question):
        picture = Image.open(image) if isinstance(image, str) else image
        return f"{self.model_name} saw {picture.size[0]}x{picture.size[1]}: {question}"

    def predict_on_images(self, images, question):
        return f"{self.model_name} saw {len(images)} images: {question}"


class NotAModel:
    pass


def broken_factory():
    pass


class Exploding(ModelInterface):
    def __init__(self, model_name, system_prompt="", cache_dir="model_cache"):
        raise RuntimeError("CUDA out of memory")

    def predict_on_images(self, images, question):
        return ""
"""


@pytest.fixture
def wrapper_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry):
    """A real package `my_ml_models` on sys.path, like a third-party wrapper repository."""
    package = tmp_path / "site" / "my_ml_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(UPSTREAM_WRAPPER)
    (package / "needs_missing.py").write_text("import a_package_that_is_not_installed\n")
    (package / "raises_on_import.py").write_text("raise RuntimeError('bad config at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m.startswith("my_ml_models")]:
        monkeypatch.delitem(sys.modules, name)
    return clean_registry


def test_upstream_snippet_runs_unchanged(wrapper_package, tmp_path: Path) -> None:
    image_path = tmp_path / "0001.jpg"
    Image.new("RGB", (32, 24)).save(image_path)
    img1 = img2 = Image.new("RGB", (4, 4))

    ModelFactory.register_model(
        model_name="Qwen2-VL", model_path="my_ml_models.models:Qwen2VLModel"
    )
    model = ModelFactory.get_model(
        "Qwen2-VL",
        model_init_params={
            "model_name": "Qwen2-VL-2B-Instruct",
            "system_prompt": "",
            "cache_dir": "model_cache",
        },
    )
    answer = model.predict_on_image(str(image_path), "What is the passport number?")
    answers = model.predict_on_images([img1, img2], question="Compare these documents")

    assert answer == "Qwen2-VL-2B-Instruct saw 32x24: What is the passport number?"
    assert answers == "Qwen2-VL-2B-Instruct saw 2 images: Compare these documents"
    assert (model.framework, model.model_name) == ("Hugging Face", "Qwen2-VL-2B-Instruct")


@pytest.mark.parametrize(
    "path", ["my_ml_models.models:Qwen2VLModel", "my_ml_models.models.Qwen2VLModel"]
)
def test_both_path_forms_and_a_class_object_are_accepted(wrapper_package, path: str) -> None:
    ModelFactory.register_model("m", path)
    model_class = ModelFactory.get_model_class("m")
    assert model_class.__name__ == "Qwen2VLModel"
    ModelFactory.register_model("by-class", model_class)
    assert ModelFactory.get_model_class("by-class") is model_class


def test_registering_the_same_target_twice_is_a_no_op(wrapper_package) -> None:
    ModelFactory.register_model("m", "my_ml_models.models:Qwen2VLModel")
    ModelFactory.register_model("m", "my_ml_models.models.Qwen2VLModel")
    assert ModelFactory.list_models().count("m") == 1


def test_registering_another_target_needs_overwrite(wrapper_package) -> None:
    ModelFactory.register_model("m", "my_ml_models.models:Qwen2VLModel")
    with pytest.raises(ModelFactoryError, match=r"already registered as .*overwrite=True"):
        ModelFactory.register_model("m", "my_ml_models.models:Exploding")
    ModelFactory.register_model("m", "my_ml_models.models:Exploding", overwrite=True)
    assert ModelFactory.get_model_class("m").__name__ == "Exploding"


def test_unknown_name_lists_names_and_suggests_the_closest(wrapper_package) -> None:
    ModelFactory.register_model("Qwen2-VL", "my_ml_models.models:Qwen2VLModel")
    with pytest.raises(ModelFactoryError) as error:
        ModelFactory.get_model("Qwen2VL")
    message = str(error.value)
    assert "Model 'Qwen2VL' is not registered" in message
    assert "Did you mean 'Qwen2-VL'?" in message
    assert "'dummy'" in message and "register_model" in message


@pytest.mark.parametrize("bad", ["my_ml_models", "my_ml_models.models:", ":Cls", "a b:C", 42])
def test_malformed_path_says_the_expected_form(wrapper_package, bad) -> None:
    with pytest.raises(ModelFactoryError, match=r"expected 'package\.module:ClassName'"):
        ModelFactory.register_model("m", bad)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_package.models:Model", r"module 'no_such_package\.models' cannot be imported"),
        ("my_ml_models.needs_missing:M", r"needs a missing package.*a_package_that_is_not_inst"),
        ("my_ml_models.raises_on_import:M", r"importing module .* failed: RuntimeError: bad conf"),
        ("my_ml_models.models:Qwen3VLModel", r"has no attribute 'Qwen3VLModel'.*Qwen2VLModel"),
        ("my_ml_models.models:NotAModel", r"not a subclass of .*ModelInterface"),
        ("my_ml_models.models:broken_factory", r"not a subclass of .*ModelInterface"),
    ],
)
def test_import_problems_name_the_module_or_class(wrapper_package, target, message) -> None:
    ModelFactory.register_model("m", target)
    with pytest.raises(ModelFactoryError, match=message) as error:
        ModelFactory.get_model("m")
    assert "model 'm'" in str(error.value)


def test_registering_a_class_that_is_not_a_model_is_refused(clean_registry) -> None:
    with pytest.raises(ModelFactoryError, match="not a subclass of"):
        ModelFactory.register_model("m", dict)


def test_constructor_failure_names_the_model(wrapper_package) -> None:
    ModelFactory.register_model("boom", "my_ml_models.models:Exploding")
    with pytest.raises(ModelCreationError, match=r"model 'boom'.*RuntimeError: CUDA out of memory"):
        ModelFactory.get_model("boom", {"model_name": "x"})


def test_wrong_init_params_show_the_signature(wrapper_package) -> None:
    ModelFactory.register_model("m", "my_ml_models.models:Qwen2VLModel")
    with pytest.raises(ModelCreationError, match=r"Qwen2VLModel.__init__ takes \(self, model_name"):
        ModelFactory.get_model("m", {"model_name": "x", "temperature": 0.5})


def test_is_registered_and_unregister(wrapper_package) -> None:
    ModelFactory.register_model("m", "my_ml_models.models:Qwen2VLModel")
    assert ModelFactory.is_registered("m")
    ModelFactory.unregister("m")
    assert not ModelFactory.is_registered("m")
    with pytest.raises(ModelFactoryError, match="not registered"):
        ModelFactory.unregister("m")


def test_from_config_with_class_path_or_target(wrapper_package) -> None:
    params = {"model_name": "q", "system_prompt": "", "cache_dir": "c"}
    for key in ("class_path", "_target_"):
        model = ModelFactory.from_config(
            {"name": "cfg", key: "my_ml_models.models:Qwen2VLModel", "init_params": params}
        )
        assert type(model).__name__ == "Qwen2VLModel" and model.model_name == "q"
    by_name = ModelFactory.from_config({"name": "dummy", "init_params": {"model_name": "d"}})
    assert by_name.framework == "dummy"


def test_from_config_refuses_unknown_keys_and_empty_configs(clean_registry) -> None:
    with pytest.raises(ModelFactoryError, match=r"unknown model config key\(s\) \['init_param'\]"):
        ModelFactory.from_config({"name": "dummy", "init_param": {}})
    with pytest.raises(ModelFactoryError, match="needs 'name'"):
        ModelFactory.from_config({"init_params": {}})


def test_concurrent_registration_is_consistent(wrapper_package) -> None:
    errors: list[BaseException] = []

    def register(index: int) -> None:
        try:
            ModelFactory.register_model("shared", "my_ml_models.models:Qwen2VLModel")
            ModelFactory.register_model(f"own-{index}", "my_ml_models.models:Qwen2VLModel")
            ModelFactory.get_model_class("shared")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {f"own-{i}" for i in range(16)} <= set(ModelFactory.list_models())


def test_builtin_dummy_is_available_by_name() -> None:
    model = ModelFactory.get_model("dummy", {"model_name": "dummy"})
    assert isinstance(model, ModelInterface) and model.framework == "dummy"


@pytest.mark.slow
def test_entry_point_of_an_installed_package_needs_no_register_call(tmp_path: Path) -> None:
    """A real distribution (package + dist-info with entry_points.txt) on sys.path."""
    site = tmp_path / "site"
    (site / "acme_vlm").mkdir(parents=True)
    (site / "acme_vlm" / "__init__.py").write_text("")
    (site / "acme_vlm" / "models.py").write_text(
        textwrap.dedent(
            """
            from model_interface.model_interface import ModelInterface

            class AcmeVLM(ModelInterface):
                framework = "acme"

                def predict_on_images(self, images, prompt):
                    return f"acme: {prompt}"
            """
        )
    )
    dist_info = site / "acme_vlm-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-vlm\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[model_interface.models]\nacme-vlm = acme_vlm.models:AcmeVLM\n"
    )
    script = textwrap.dedent(
        """
        import sys
        from model_interface.model_factory import ModelFactory
        assert "acme_vlm.models" not in sys.modules  # discovered lazily, imported on use
        model = ModelFactory.get_model("acme-vlm", {"model_name": "a"})
        print(model.framework, model.predict_on_image("x.png", question="hi"))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": f"{site}:{REPO_ROOT}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "acme acme: hi"
