"""One registry mechanism for everything found by name: models, tasks, metrics.

A name maps to a target ``"package.module:attr"``, imported on first use. Names come from three
places, all lazy (nothing is imported until a name is asked for):

* built-ins, given when the registry is made;
* :meth:`Registry.register` at run time (a target string or the object itself);
* installed packages that declare an entry point in the registry's group, e.g.::

      [project.entry-points."model_interface.tasks"]
      my-task = "my_pkg.tasks:MyTask"

Every error says what to fix: an unknown name lists the registered ones and the closest match,
a malformed target shows the expected form, an import problem names the module or attribute.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry:
    target: str  # "package.module:attr"
    source: str  # where the name came from, for error messages
    value: Any = None  # set once imported


class Registry(Generic[T]):
    """Names → lazily imported objects of one kind.

    Args:
        kind: what is registered, in messages ("model", "task", "metric").
        group: the entry-point group installed packages declare names in.
        builtins: the names known from the start, with their targets.
        accepts: whether an imported object is of the right kind.
        expected: what the right kind is, in messages ("a subclass of ...").
        example: the attribute part of a well-formed target, in messages ("ClassName").
        how_to_register: the call that registers ``name``, in messages.
        error: the exception raised for a name or target that can't be resolved.
    """

    def __init__(
        self,
        *,
        kind: str,
        group: str,
        builtins: Mapping[str, str],
        accepts: Callable[[Any], bool],
        expected: str,
        example: str,
        how_to_register: Callable[[str], str],
        error: type[Exception] = ValueError,
    ) -> None:
        self.kind, self.group, self.accepts, self.expected = kind, group, accepts, expected
        self.example, self.how_to_register, self.error = example, how_to_register, error
        self._entries = {name: _Entry(target, "built-in") for name, target in builtins.items()}
        self._entry_points_loaded = False
        self._lock = threading.RLock()

    def register(self, name: str, target: str | Any, *, overwrite: bool = False) -> None:
        """Register ``name`` as ``"pkg.module:attr"``, ``"pkg.module.attr"`` or the object.

        Registering a name again with the same target does nothing; with a different target it
        raises unless ``overwrite=True``.
        """
        value, target = self._parse(name, target)
        with self._lock:
            self._load_entry_points()
            existing = self._entries.get(name)
            if existing is not None and existing.target == target:
                existing.value = value if value is not None else existing.value
                return
            if existing is not None and not overwrite:
                raise self.error(
                    f"{self.kind} '{name}' is already registered as '{existing.target}' "
                    f"({existing.source}); pass overwrite=True to replace it with '{target}', "
                    "or register under another name"
                )
            self._entries[name] = _Entry(target, "registered at run time", value)

    def get(self, name: str) -> T:
        """The object registered as ``name``, imported on first use."""
        with self._lock:
            entry = self._lookup(name)
            if entry.value is None:
                entry.value = self._import(name, entry)
            return entry.value

    def target(self, name: str) -> str:
        """The ``"module:attr"`` registered as ``name``, without importing it."""
        with self._lock:
            return self._lookup(name).target

    def names(self) -> list[str]:
        """Every registered name, entry points included, sorted."""
        with self._lock:
            self._load_entry_points()
            return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            self._load_entry_points()
            return name in self._entries

    def unregister(self, name: str) -> None:
        with self._lock:
            self._lookup(name)
            del self._entries[name]

    def state(self) -> tuple[dict[str, _Entry], bool]:
        """A copy of the registrations, for :meth:`restore` (tests give each test its own)."""
        with self._lock:
            entries = {
                name: _Entry(e.target, e.source, e.value) for name, e in self._entries.items()
            }
            return entries, self._entry_points_loaded

    def restore(self, state: tuple[dict[str, _Entry], bool]) -> None:
        with self._lock:
            self._entries = dict(state[0])
            self._entry_points_loaded = state[1]

    def _lookup(self, name: str) -> _Entry:
        self._load_entry_points()
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        names = sorted(self._entries)
        close = difflib.get_close_matches(str(name), names, n=1)
        suggestion = f" Did you mean '{close[0]}'?" if close else ""
        raise self.error(
            f"{self.kind.capitalize()} '{name}' is not registered.{suggestion} Registered "
            f"{self.kind}s: {names}. {self.how_to_register(name)} or install a package that "
            f"declares it under the '{self.group}' entry-point group."
        )

    def _load_entry_points(self) -> None:
        """Add installed packages' entry points once; names registered in code take precedence."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for entry_point in entry_points(group=self.group):
            distribution = getattr(entry_point.dist, "name", "an installed package")
            if entry_point.name not in self._entries:
                self._entries[entry_point.name] = _Entry(
                    entry_point.value.strip(), f"entry point of {distribution}"
                )

    def _parse(self, name: str, target: str | Any) -> tuple[Any, str]:
        """Check a target's form; return (the object if one was given, "module:attr")."""
        if not isinstance(name, str) or not name:
            raise self.error(f"a {self.kind} name must be a non-empty string, got {name!r}")
        expected = f"expected 'package.module:{self.example}' (or 'package.module.{self.example}')"
        if not isinstance(target, str) and hasattr(target, "__qualname__"):  # a class, a function
            where = f"{target.__module__}:{target.__qualname__}"
            self._check(name, target, where)
            return target, where
        if not isinstance(target, str):
            raise self.error(f"{self.kind} path for '{name}' is {target!r}; {expected}")
        path = target.strip()
        module, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
        parts = [*module.split("."), *attribute.split(".")]
        if not module or not attribute or not all(part.isidentifier() for part in parts):
            raise self.error(f"malformed {self.kind} path {target!r} for '{name}'; {expected}")
        return None, f"{module}:{attribute}"

    def _import(self, name: str, entry: _Entry) -> Any:
        module_name, _, attribute = entry.target.partition(":")
        where = f"{self.kind} '{name}' is registered as '{entry.target}' ({entry.source})"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):
                raise self.error(
                    f"{where}, but module '{module_name}' cannot be imported: {error}. Install "
                    "the package that provides it, or fix the path."
                ) from error
            raise self.error(
                f"{where}; module '{module_name}' was found but needs a missing package: {error}"
            ) from error
        except Exception as error:
            raise self.error(
                f"{where}, but importing module '{module_name}' failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        found: Any = module
        for part in attribute.split("."):
            if not hasattr(found, part):
                available = sorted(
                    key for key, value in vars(module).items() if self.accepts(value)
                )
                raise self.error(
                    f"{where}, but module '{module_name}' has no attribute '{attribute}'. "
                    f"What in that module is {self.expected}: {available}"
                )
            found = getattr(found, part)
        self._check(name, found, entry.target)
        return found

    def _check(self, name: str, found: Any, target: str) -> None:
        if not self.accepts(found):
            raise self.error(f"'{target}' ({self.kind} '{name}') is {found!r}, not {self.expected}")
