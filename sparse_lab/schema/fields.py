"""The schema language: what a config key may hold, declared next to the key, and the one validator.

A component's keys are the class attributes of a :class:`Schema` subclass, each a :class:`Field`::

    class Random(SparsityBudget):
        registered_as = "random"              # the `name:` its config gives
        sparsity = Float(ge=0, lt=1)          # -> "sparsity.sparsity must be a number in [0, 1), got 1.5"
        distribution = Choice("uniform", "er", "erk")

Subclasses inherit their bases' keys (``key = REMOVED`` drops one). ``check`` states rules between keys
(``n <= m``), ``warnings`` the legal values that make a component do nothing. Nothing here imports torch:
a config is validated in a fraction of a second, before anything heavy starts.
"""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from sparse_lab.errors import UserError


class SchemaError(UserError):
    """A config value the schema rejects (one line: the key, the value, what is allowed)."""


def show(value: Any) -> str:
    """A value as the user wrote it on the command line or in YAML (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value)  # strings quoted, floats as typed (1.0, 1e-05)


def closest(word: str, candidates) -> str | None:
    """The candidate a typo most likely meant (difflib), or None."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return close[0] if close else None


def _number(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _bounds(ge=None, gt=None, le=None, lt=None) -> str:
    low = ("[", ge) if ge is not None else ("(", gt) if gt is not None else None
    high = ("]", le) if le is not None else (")", lt) if lt is not None else None
    if low and high:
        return f" in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    if high:
        return f" {'<=' if high[0] == ']' else '<'} {_number(high[1])}"
    return ""


class Field(ABC):
    """One key: ``accepts`` says whether a value is allowed, ``describe`` what is allowed, in words
    (each kind of field — Int, Float, Choice, ... — defines both)."""

    def __init__(self, *, nullable: bool = False, required: bool = False):
        self.nullable, self.required = nullable, required

    @abstractmethod
    def accepts(self, value: Any) -> bool: ...

    @abstractmethod
    def describe(self, plural: bool = False) -> str: ...

    def alternatives(self) -> list[str]:
        return [self.describe()]

    def allowed(self) -> str:
        """What is allowed, in words: "an integer >= 1, -1 or null"."""
        words = self.alternatives() + (["null"] if self.nullable else [])
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]

    def validate(self, key: str, value: Any) -> list[str]:
        """Raise a SchemaError naming ``key`` if ``value`` is not allowed; return warnings (nested sections)."""
        if value is None and self.nullable:
            return []
        if not self.accepts(value):
            raise SchemaError(f"{key} must be {self.allowed()}, got {show(value)}")
        return []


class Int(Field):
    def __init__(self, *, ge=None, gt=None, le=None, lt=None, **kw):
        super().__init__(**kw)
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt

    def accepts(self, value) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        return _in_range(value, self.ge, self.gt, self.le, self.lt)

    def describe(self, plural=False) -> str:
        return ("integers" if plural else "an integer") + _bounds(self.ge, self.gt, self.le, self.lt)


class Float(Field):
    """A real number (an integer is one too); never NaN."""

    def __init__(self, *, ge=None, gt=None, le=None, lt=None, **kw):
        super().__init__(**kw)
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt

    def accepts(self, value) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            return False
        return _in_range(value, self.ge, self.gt, self.le, self.lt)

    def describe(self, plural=False) -> str:
        return ("numbers" if plural else "a number") + _bounds(self.ge, self.gt, self.le, self.lt)


def _in_range(value, ge, gt, le, lt) -> bool:
    return (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )


class Bool(Field):
    def accepts(self, value) -> bool:
        return isinstance(value, bool)

    def describe(self, plural=False) -> str:
        return "true or false"


class Str(Field):
    """A string; ``pattern`` (a regular expression it must match in full) is described by ``what``."""

    def __init__(self, *, pattern: str | None = None, what: str | None = None, nonempty: bool = True, **kw):
        super().__init__(**kw)
        self.pattern, self.what, self.nonempty = pattern, what, nonempty

    def accepts(self, value) -> bool:
        if not isinstance(value, str) or (self.nonempty and not value.strip()):
            return False
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None

    def describe(self, plural=False) -> str:
        if self.what:
            return self.what
        return ("non-empty strings" if plural else "a non-empty string") if self.nonempty else "a string"


class Regex(Str):
    """A regular expression (``re`` syntax) that compiles."""

    def accepts(self, value) -> bool:
        if not isinstance(value, str):
            return False
        try:
            re.compile(value)
        except re.error:
            return False
        return True

    def describe(self, plural=False) -> str:
        return "regular expressions" if plural else "a regular expression"


class Choice(Field):
    """One of a fixed set of values: an unknown one gets the list and a close match."""

    def __init__(self, *choices, **kw):
        super().__init__(**kw)
        self.choices = choices

    def accepts(self, value) -> bool:
        return any(type(value) is type(c) and value == c for c in self.choices)

    def describe(self, plural=False) -> str:
        shown = list(dict.fromkeys(str(c) for c in self.choices))
        return shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)

    def validate(self, key, value) -> list[str]:
        if (value is None and self.nullable) or self.accepts(value):
            return []
        from sparse_lab.catalog import unknown_option

        choices = list(dict.fromkeys(str(c) for c in self.choices)) + (["null"] if self.nullable else [])
        raise SchemaError(unknown_option(key, show(value), choices))


class Any_(Field):
    """Anything (the component reading it decides)."""

    def accepts(self, value) -> bool:
        return True

    def describe(self, plural=False) -> str:
        return "anything"


class List(Field):
    def __init__(self, item: Field, *, length: int | None = None, min_length: int = 0, **kw):
        super().__init__(**kw)
        self.item, self.length, self.min_length = item, length, min_length

    def accepts(self, value) -> bool:
        if not isinstance(value, (list, tuple)):
            return False
        if (self.length is not None and len(value) != self.length) or len(value) < self.min_length:
            return False
        return all(v is None and self.item.nullable or self.item.accepts(v) for v in value)

    def describe(self, plural=False) -> str:
        items = self.item.describe(True)
        if self.length is not None:
            return ("lists" if plural else "a list") + f" of {self.length} {items}"
        if self.min_length == 1:
            return ("non-empty lists" if plural else "a non-empty list") + f" of {items}"
        if self.min_length > 1:
            return ("lists" if plural else "a list") + f" of at least {self.min_length} {items}"
        return ("lists" if plural else "a list") + f" of {items}"


class Union(Field):
    """Any one of several kinds of value (e.g. an integer count or a fraction)."""

    def __init__(self, *options: Field, **kw):
        super().__init__(**kw)
        self.options = options

    def accepts(self, value) -> bool:
        return any(o.accepts(value) for o in self.options)

    def validate(self, key, value) -> list[str]:
        if value is None and self.nullable:
            return []
        for option in self.options:
            if option.accepts(value):  # a mapping's own keys are checked by its section
                return option.validate(key, value) if isinstance(option, Section) else []
        raise SchemaError(f"{key} must be {self.allowed()}, got {show(value)}")

    def alternatives(self) -> list[str]:
        return [o.describe() for o in self.options]

    def describe(self, plural=False) -> str:
        words = [o.describe(plural) for o in self.options]
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


class Forbidden(Field):
    """A key the run sets itself: setting it is an error that says what to do instead."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def accepts(self, value) -> bool:
        return False

    def describe(self, plural=False) -> str:
        return "left unset"

    def validate(self, key, value) -> list[str]:
        raise SchemaError(f"{key} cannot be set: {self.reason}")


class Section(Field):
    """A nested mapping with a schema of its own (``model.optim``, ``logger.wandb``)."""

    def __init__(self, schema: type[Schema], *, what: str | None = None, **kw):
        super().__init__(**kw)
        self.schema, self.what = schema, what

    def accepts(self, value) -> bool:
        return isinstance(value, Mapping)

    def describe(self, plural=False) -> str:
        return self.what or ("mappings" if plural else "a mapping of keys")

    def validate(self, key, value) -> list[str]:
        if value is None and self.nullable:
            return []
        if not isinstance(value, Mapping):
            raise SchemaError(f"{key} must be {self.allowed()}, got {show(value)}")
        return validate_mapping(self.schema, value, key)

    def keys(self) -> dict[str, Field]:
        return self.schema.fields


class Choose(Field):
    """A mapping whose schema depends on its ``name`` (a registered component), or a plug-in's
    ``_target_`` (then only the keys the project itself reads are checked; the rest are the plug-in's)."""

    def __init__(
        self, kind: str, schemas: list[type[Schema]], plugin: type[Schema] | None = None, default: str | None = None
    ):
        super().__init__()
        self.kind, self.plugin, self.default = kind, plugin, default
        self.schemas = {s.registered_as: s for s in sorted(schemas, key=lambda s: s.registered_as)}

    def accepts(self, value) -> bool:
        return isinstance(value, Mapping)

    def describe(self, plural=False) -> str:
        return "mappings" if plural else "a mapping of keys"

    def schema_for(self, key: str, value: Mapping) -> type[Schema]:
        if "_target_" in value:
            if self.plugin is None:
                raise SchemaError(f"{key}._target_ is not supported here (choose {key}.name)")
            if not isinstance(value["_target_"], str) or not value["_target_"].strip():
                raise SchemaError(
                    f"{key}._target_ must be an importable path (package.module.Name), got {show(value['_target_'])}"
                )
            return self.plugin
        name = value.get("name", self.default)
        if name is None:
            raise SchemaError(f"{key} needs `name:` (a built-in {self.kind}) or `_target_:` (your own callable)")
        if name not in self.schemas:
            from sparse_lab.catalog import unknown_option

            raise SchemaError(unknown_option(self.kind, show(name), list(self.schemas)))
        return self.schemas[name]

    def validate(self, key, value) -> list[str]:
        if not isinstance(value, Mapping):
            raise SchemaError(f"{key} must be {self.allowed()}, got {show(value)}")
        schema = self.schema_for(key, value)
        warnings = validate_mapping(schema, value, key, skip=DISPATCH_KEYS)
        if "_schema_" in value:  # a plug-in's own keys, declared by its author (docs/extending.md)
            own = import_schema(f"{key}._schema_", value["_schema_"])
            warnings += validate_mapping(own, value, key, skip=(*DISPATCH_KEYS, *schema.fields))
        return warnings

    def keys(self) -> dict[str, Field]:
        """Every key any of the choices has (for suggestions)."""
        union: dict[str, Field] = {}
        for schema in [*self.schemas.values(), *([self.plugin] if self.plugin else [])]:
            union.update(schema.fields)
        return union


REMOVED = object()  # ``key = REMOVED`` in a subclass drops a key its base declares
DISPATCH_KEYS = ("name", "_target_", "_schema_")  # what a group's config is (not constructor arguments)


def import_schema(key: str, path: Any) -> type[Schema]:
    """The Schema subclass at ``package.module.Name`` (a plug-in's ``_schema_:``); importing it must be light."""
    import importlib

    if not isinstance(path, str) or "." not in path:
        raise SchemaError(f"{key} must be an importable path (package.module.Name), got {show(path)}")
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except Exception as exc:  # ImportError, AttributeError, or the module's own error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SchemaError(f"{key} {path!r} cannot be imported ({reason}); is its folder on PYTHONPATH?") from None
    if not (isinstance(found, type) and issubclass(found, Schema)):
        raise SchemaError(f"{key} {path!r} is not a sparse_lab.schema.Schema subclass")
    return found


class Schema:
    """The keys of one config (a component, a section). Subclass it; see the module docstring."""

    registered_as: ClassVar[str | None] = None  # the registry name (``name:``) this schema is for
    owner: ClassVar[str] = ""  # how messages name the config ("sparsity method 'random'"); default: its key
    open: ClassVar[bool] = False  # unknown keys allowed (a plug-in's config: its own keys are its business)
    fields: ClassVar[dict[str, Field]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fields: dict[str, Field] = {}
        for base in reversed(cls.__mro__):
            for attr, value in vars(base).items():
                if isinstance(value, Field):
                    fields[attr] = value
                elif value is REMOVED:
                    fields.pop(attr, None)
        cls.fields = fields

    @classmethod
    def check(cls, values: dict, at: Callable[[str], str]) -> None:
        """Rules between keys; raise SchemaError. ``at(key)`` is the key's full dotted name."""

    @classmethod
    def warnings(cls, values: dict, at: Callable[[str], str]) -> list[str]:
        """Legal values that make the component do nothing: say so, never silently."""
        return []


def validate_mapping(schema: type[Schema], values: Any, prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Validate ``values`` (a plain mapping) against ``schema``; raise on the first bad key, return warnings."""
    where = prefix or "the config"
    if not isinstance(values, Mapping):
        raise SchemaError(f"{where} must be a mapping of keys, got {show(values)}")

    def at(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    warnings: list[str] = []
    for key, value in values.items():
        if key in skip:
            continue
        field = schema.fields.get(key)
        if field is not None:
            warnings += field.validate(at(key), value)
        elif not schema.open:
            raise SchemaError(unknown_key(schema, str(key), prefix))
    for key, field in schema.fields.items():
        if field.required and values.get(key) is None:
            raise SchemaError(f"{at(key)} must be set ({field.describe()})")
    schema.check(dict(values), at)
    return warnings + schema.warnings(dict(values), at)


def unknown_key(schema: type[Schema], key: str, prefix: str) -> str:
    full = f"{prefix}.{key}" if prefix else key
    owner = schema.owner or prefix or "the config"
    near = closest(key, schema.fields)
    if near:
        return f"{full} is not a key of {owner}; did you mean {f'{prefix}.{near}' if prefix else near}?"
    keys = ", ".join(k for k, f in schema.fields.items() if not isinstance(f, Forbidden))
    return f"{full} is not a key of {owner} (its keys: {keys})"
