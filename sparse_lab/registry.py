"""One registry per concept (models, datasets, sparsity methods, hardware targets, tasks), one style.

Built-in components register with a decorator, the name written once::

    @MODELS.register("vit")
    def vit(num_classes, image_size, ...): ...

The decorator records the name on the object (``registered_name``). A config selects a built-in by
``name:``, or any importable callable by Hydra's ``_target_: package.module.Callable`` — a component
written outside sparse-lab, found on ``PYTHONPATH``, needs no registration (:meth:`Registry.from_config`).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sparse_lab.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = fn
            fn.registered_name = name
            return fn

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown {self.kind} {name!r}{hint}; choose one of: {', '.join(self.names())}") from None

    def build(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def constructor(self, options: dict) -> Callable[..., T]:
        """The callable a config group names: ``_target_`` (imported) or a registered ``name``."""
        if "_target_" in options:
            return import_target(options["_target_"], self.kind)
        if "name" not in options:
            raise UserError(f"a {self.kind} config needs `name:` (a built-in) or `_target_:` (your own callable)")
        return self.get(options["name"])

    def from_config(self, options: dict, **extra: Any) -> T:
        """Build from a config group's entries (``name`` / ``_target_`` and the constructor's keyword
        arguments) plus ``extra`` keyword arguments supplied by the run (e.g. the data's sizes)."""
        fn = self.constructor(options)
        kwargs = {
            k: v for k, v in options.items() if k not in ("name", "_target_", "_schema_")
        }  # _schema_: the keys' schema
        if "_target_" not in options:
            return fn(**kwargs, **extra)
        try:  # a user's callable: a signature mismatch is a config error, not a crash
            return fn(**kwargs, **extra)
        except TypeError as exc:
            if "argument" not in str(exc):
                raise
            raise UserError(f"{self.kind} {options['_target_']}: {exc}") from None


def import_submodules(package: str) -> None:
    """Import every module of ``package``: each registers what it defines, so a new module is all it takes."""
    parent = importlib.import_module(package)
    for module in pkgutil.iter_modules(parent.__path__):
        importlib.import_module(f"{package}.{module.name}")


def import_target(path: str, kind: str) -> Callable:
    """The object at ``package.module.Name`` (Hydra's ``_target_`` convention)."""
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception as exc:  # ImportError, AttributeError, or Hydra's wrapper of them
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{kind} _target_ {path!r} cannot be imported ({reason}); is its folder on PYTHONPATH?"
        ) from None


def component_name(options: dict) -> str:
    """A config group's display name: its ``name``, else the last part of its ``_target_``."""
    if options.get("name"):
        return str(options["name"])
    target = options.get("_target_")
    return str(target).rsplit(".", 1)[-1].lower() if target else "unnamed"
