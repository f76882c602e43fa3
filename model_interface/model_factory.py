"""A registry of VLM wrappers: a name maps to ``"package.module:Class"``, imported on first use.

Three ways in, all lazy (nothing is imported until a model is asked for):

* built-in backends, listed in :data:`BUILTIN_MODELS`;
* ``ModelFactory.register_model(name, "pkg.module:Class")`` at run time;
* installed packages that declare an entry point in the ``model_interface.models`` group::

      [project.entry-points."model_interface.models"]
      my-vlm = "my_pkg.models:MyVLM"
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

from model_interface.model_interface import ModelInterface

ENTRY_POINT_GROUP = "model_interface.models"

BUILTIN_MODELS: dict[str, str] = {
    "dummy": "model_interface.backends.dummy:DummyModel",
    "hf": "model_interface.backends.hf:HFModel",
    "openai": "model_interface.backends.openai_api:OpenAIModel",
    "vllm": "model_interface.backends.vllm:VLLMModel",
    "sglang": "model_interface.backends.sglang:SGLangModel",
}

CONFIG_KEYS = ("name", "class_path", "_target_", "init_params")


class ModelFactoryError(ValueError):
    """A model name or class path can't be resolved; the message says how to fix it."""


class ModelCreationError(RuntimeError):
    """A model class was found but its constructor failed; the message names the model."""


@dataclass
class _Registration:
    target: str  # "package.module:Class"
    source: str  # where the name came from, for error messages
    model_class: type[ModelInterface] | None = None  # set once imported


class ModelFactory:
    """Register VLM wrapper classes by name and create them. All methods are class methods."""

    _registry: ClassVar[dict[str, _Registration]] = {
        name: _Registration(target, "built-in") for name, target in BUILTIN_MODELS.items()
    }
    _lock = threading.RLock()
    _entry_points_loaded = False

    @classmethod
    def register_model(
        cls, model_name: str, model_path: str | type[ModelInterface], *, overwrite: bool = False
    ) -> None:
        """Register ``model_name`` as ``"pkg.module:Class"``, ``"pkg.module.Class"`` or a class.

        Registering a name again with the same target does nothing; with a different target it
        raises unless ``overwrite=True``.
        """
        model_class, target = _parse_model_path(model_name, model_path)
        with cls._lock:
            cls._load_entry_points()
            existing = cls._registry.get(model_name)
            if existing is not None and existing.target == target:
                existing.model_class = model_class or existing.model_class
                return
            if existing is not None and not overwrite:
                raise ModelFactoryError(
                    f"model '{model_name}' is already registered as '{existing.target}' "
                    f"({existing.source}); pass overwrite=True to replace it with '{target}', "
                    "or register under another name"
                )
            cls._registry[model_name] = _Registration(target, "register_model", model_class)

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
                f"creating model '{model_name}' ({cls._registry[model_name].target}) failed: "
                f"{type(error).__name__}: {error}{hint}"
            ) from error

    @classmethod
    def get_model_class(cls, model_name: str) -> type[ModelInterface]:
        """The class registered as ``model_name``, imported on first use."""
        with cls._lock:
            registration = cls._lookup(model_name)
            if registration.model_class is None:
                registration.model_class = _import_model_class(model_name, registration)
            return registration.model_class

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
            return _parse_model_path(name, class_path)[1]
        with cls._lock:
            return cls._lookup(name).target

    @classmethod
    def list_models(cls) -> list[str]:
        """Every registered name, entry points included, sorted."""
        with cls._lock:
            cls._load_entry_points()
            return sorted(cls._registry)

    @classmethod
    def is_registered(cls, model_name: str) -> bool:
        with cls._lock:
            cls._load_entry_points()
            return model_name in cls._registry

    @classmethod
    def unregister(cls, model_name: str) -> None:
        with cls._lock:
            cls._lookup(model_name)
            del cls._registry[model_name]

    @classmethod
    def _register_config(cls, config: Mapping[str, Any]) -> str:
        name, class_path = _name_and_class_path(config)
        if class_path:
            cls.register_model(name, class_path, overwrite=True)
        return name

    @classmethod
    def _lookup(cls, model_name: str) -> _Registration:
        cls._load_entry_points()
        registration = cls._registry.get(model_name)
        if registration is not None:
            return registration
        names = sorted(cls._registry)
        close = difflib.get_close_matches(str(model_name), names, n=1)
        suggestion = f" Did you mean '{close[0]}'?" if close else ""
        raise ModelFactoryError(
            f"Model '{model_name}' is not registered.{suggestion} Registered models: {names}. "
            f"Register it with ModelFactory.register_model('{model_name}', "
            "'package.module:Class') or install a package that declares it under the "
            f"'{ENTRY_POINT_GROUP}' entry-point group."
        )

    @classmethod
    def _load_entry_points(cls) -> None:
        """Add installed packages' entry points once; names registered in code take precedence."""
        if cls._entry_points_loaded:
            return
        cls._entry_points_loaded = True
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            distribution = getattr(entry_point.dist, "name", "an installed package")
            if entry_point.name not in cls._registry:
                cls._registry[entry_point.name] = _Registration(
                    entry_point.value.strip(), f"entry point of {distribution}"
                )


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


def _parse_model_path(
    model_name: str, model_path: str | type[ModelInterface]
) -> tuple[type[ModelInterface] | None, str]:
    """Check a model path's form; return (the class if one was given, "module:Class")."""
    if not isinstance(model_name, str) or not model_name:
        raise ModelFactoryError(f"model_name must be a non-empty string, got {model_name!r}")
    if isinstance(model_path, type):
        _check_is_model_class(model_name, model_path, model_path.__qualname__)
        return model_path, f"{model_path.__module__}:{model_path.__qualname__}"
    expected = (
        "expected 'package.module:ClassName' (or 'package.module.ClassName'), "
        "e.g. 'my_ml_models.models:Qwen2VLModel'"
    )
    if not isinstance(model_path, str):
        raise ModelFactoryError(f"model path for '{model_name}' is {model_path!r}; {expected}")
    path = model_path.strip()
    if ":" in path:
        module, _, attribute = path.partition(":")
    else:
        module, _, attribute = path.rpartition(".")
    names = [*module.split("."), *attribute.split(".")]
    if not module or not attribute or not all(name.isidentifier() for name in names):
        raise ModelFactoryError(
            f"malformed model path {model_path!r} for '{model_name}'; {expected}"
        )
    return None, f"{module}:{attribute}"


def _import_model_class(model_name: str, registration: _Registration) -> type[ModelInterface]:
    module_name, _, attribute = registration.target.partition(":")
    where = f"model '{model_name}' is registered as '{registration.target}' ({registration.source})"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise ModelFactoryError(
                f"{where}, but module '{module_name}' cannot be imported: {error}. Install the "
                "package that provides it, or fix the path."
            ) from error
        raise ModelFactoryError(
            f"{where}; module '{module_name}' was found but needs a missing package: {error}"
        ) from error
    except Exception as error:
        raise ModelFactoryError(
            f"{where}, but importing module '{module_name}' failed: {type(error).__name__}: {error}"
        ) from error
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            available = sorted(
                name
                for name, value in vars(module).items()
                if isinstance(value, type) and issubclass(value, ModelInterface)
            )
            raise ModelFactoryError(
                f"{where}, but module '{module_name}' has no attribute '{attribute}'. "
                f"ModelInterface subclasses in that module: {available}"
            )
        found = getattr(found, part)
    _check_is_model_class(model_name, found, registration.target)
    return found


def _check_is_model_class(model_name: str, found: object, target: str) -> None:
    if not (isinstance(found, type) and issubclass(found, ModelInterface)):
        raise ModelFactoryError(
            f"'{target}' (model '{model_name}') is {found!r}, not a subclass of "
            "model_interface.model_interface.ModelInterface; wrappers must inherit from it"
        )
