"""A registry of VLM wrappers: a name maps to ``"package.module:Class"``, imported on first use.

Three ways in, all lazy (nothing is imported until a model is asked for):

* built-in backends, listed in :data:`BUILTIN_MODELS`;
* ``ModelFactory.register_model(name, "pkg.module:Class")`` at run time;
* installed packages that declare an entry point in the ``model_interface.models`` group::

      [project.entry-points."model_interface.models"]
      my-vlm = "my_pkg.models:MyVLM"
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from model_interface.model_interface import ModelInterface
from model_interface.registry import Registry

ENTRY_POINT_GROUP = "model_interface.models"

BUILTIN_MODELS: dict[str, str] = {
    "dummy": "model_interface.backends.dummy:DummyModel",
    "hf": "model_interface.backends.hf:HFModel",
    "openai": "model_interface.backends.openai_api:OpenAIModel",
    "vllm": "model_interface.backends.vllm:VLLMModel",
    "sglang": "model_interface.backends.sglang:SGLangModel",
}

# pricing: the model's prices per million tokens, read by the runner (never by the model).
CONFIG_KEYS = ("name", "class_path", "_target_", "init_params", "pricing")


class ModelFactoryError(ValueError):
    """A model name or class path can't be resolved; the message says how to fix it."""


class ModelCreationError(RuntimeError):
    """A model class was found but its constructor failed; the message names the model."""


MODELS: Registry[type[ModelInterface]] = Registry(
    kind="model",
    group=ENTRY_POINT_GROUP,
    builtins=BUILTIN_MODELS,
    accepts=lambda found: isinstance(found, type) and issubclass(found, ModelInterface),
    expected=(
        "a subclass of model_interface.model_interface.ModelInterface (wrappers must inherit "
        "from it)"
    ),
    example="ClassName",
    how_to_register=lambda name: (
        f"Register it with ModelFactory.register_model('{name}', 'package.module:Class')"
    ),
    error=ModelFactoryError,
)


class ModelFactory:
    """Register VLM wrapper classes by name and create them. All methods are class methods;
    the names live in :data:`MODELS`."""

    @classmethod
    def register_model(
        cls, model_name: str, model_path: str | type[ModelInterface], *, overwrite: bool = False
    ) -> None:
        """Register ``model_name`` as ``"pkg.module:Class"``, ``"pkg.module.Class"`` or a class.

        Registering a name again with the same target does nothing; with a different target it
        raises unless ``overwrite=True``.
        """
        MODELS.register(model_name, model_path, overwrite=overwrite)

    @classmethod
    def get_model(
        cls, model_name: str, model_init_params: Mapping[str, Any] | None = None
    ) -> ModelInterface:
        """Create the model registered as ``model_name`` with ``model_init_params`` as kwargs."""
        model_class = cls.get_model_class(model_name)
        params = dict(model_init_params or {})
        try:
            return model_class(**params)
        except Exception as error:
            hint = ""
            if isinstance(error, TypeError):
                signature = inspect.signature(model_class.__init__)
                hint = f"; {model_class.__name__}.__init__ takes {signature}"
            raise ModelCreationError(
                f"creating model '{model_name}' ({MODELS.target(model_name)}) failed: "
                f"{type(error).__name__}: {error}{hint}"
            ) from error

    @classmethod
    def get_model_class(cls, model_name: str) -> type[ModelInterface]:
        """The class registered as ``model_name``, imported on first use."""
        return MODELS.get(model_name)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelInterface:
        """Create a model from ``{name, class_path (or _target_), init_params}``.

        With a class path the name is (re)bound to it, so the config is the source of truth;
        with only a name, the name must already be registered.
        """
        name = cls._register_config(config)
        return cls.get_model(name, config.get("init_params") or {})

    @classmethod
    def config_class(cls, config: Mapping[str, Any]) -> type[ModelInterface]:
        """The class a model config names, imported (what :meth:`from_config` does first)."""
        return cls.get_model_class(cls._register_config(config))

    @classmethod
    def config_target(cls, config: Mapping[str, Any]) -> str:
        """The ``"module:Class"`` a model config names, found without importing anything."""
        name, class_path = _name_and_class_path(config)
        if class_path:
            return MODELS._parse(name, class_path)[1]
        return MODELS.target(name)

    @classmethod
    def list_models(cls) -> list[str]:
        """Every registered name, entry points included, sorted."""
        return MODELS.names()

    @classmethod
    def is_registered(cls, model_name: str) -> bool:
        return model_name in MODELS

    @classmethod
    def unregister(cls, model_name: str) -> None:
        MODELS.unregister(model_name)

    @classmethod
    def _register_config(cls, config: Mapping[str, Any]) -> str:
        name, class_path = _name_and_class_path(config)
        if class_path:
            MODELS.register(name, class_path, overwrite=True)
        return name


def _name_and_class_path(config: Mapping[str, Any]) -> tuple[str, str | None]:
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ModelFactoryError(
            f"unknown model config key(s) {unknown}; expected {list(CONFIG_KEYS)}"
        )
    class_path = config.get("class_path") or config.get("_target_")
    name = config.get("name") or class_path
    if not name:
        raise ModelFactoryError(
            "a model config needs 'name' (a registered model) or 'class_path' "
            "('package.module:Class')"
        )
    return name, class_path
