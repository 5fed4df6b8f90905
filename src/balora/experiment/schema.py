"""The one reader of run options: a settings dataclass tree seen as one flat list of named options.

:class:`~balora.experiment.settings.TrainSettings` embeds :class:`~balora.methods.AdapterOptions` and
:class:`~balora.training.BALoRAConfig` as groups (fields with ``metadata={"group": True}``). Every leaf
option has ONE name, used as the command-line flag (``--name-with-dashes``), the YAML key, the Python
field and the ``config.yaml`` key; names are unique across groups. :func:`parse_value` is the only
place a text becomes a typed value (command line, YAML, ``balora compare --grid``), and the dataclasses'
``__post_init__`` the only validation.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
import warnings
from dataclasses import Field
from typing import Any

from ..errors import ConfigError

# Options that a group declares but a run sets itself (BALoRAConfig.task: the run derives it from the model).
HIDDEN = frozenset({"task@regularizers"})
# Old names still read, for one release, with a deprecation message: old name -> current name.
DEPRECATED: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Option:
    """One leaf option: its field, its group (None at the top level) and its value type."""

    field: Field
    group: str | None
    type: type
    optional: bool

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")

    @property
    def choices(self) -> tuple | None:
        return self.field.metadata.get("choices")

    @property
    def default(self) -> Any:
        return self.field.default


def _value_type(hint: Any) -> tuple[type, bool]:
    """(type, optional) of a field annotation such as ``int | None``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return inner[0], len(inner) < len(args)
    return hint, False


@functools.cache
def options(cls: type) -> tuple[Option, ...]:
    """Every leaf option of the settings class ``cls``, groups flattened, in declaration order."""
    found: list[Option] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            group_cls = hints[f.name]
            group_hints = typing.get_type_hints(group_cls)
            for g in dataclasses.fields(group_cls):
                if f"{g.name}@{f.name}" not in HIDDEN:
                    found.append(Option(g, f.name, *_value_type(group_hints[g.name])))
        else:
            found.append(Option(f, None, *_value_type(hints[f.name])))
    names = [o.name for o in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:  # a programming error: one name per option everywhere
        raise TypeError(f"{cls.__name__} declares the option name(s) {duplicates} twice")
    return tuple(found)


def option(cls: type, name: str) -> Option:
    by_name = {o.name: o for o in options(cls)}
    if name not in by_name:
        raise ConfigError(f"unknown setting {name!r}; the settings are: {', '.join(sorted(by_name))}.")
    return by_name[name]


def parse_value(opt: Option, value: Any) -> Any:
    """A typed value for ``opt`` from text or YAML (``none``/``null`` -> None for optional options)."""
    if value is None or (opt.optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if not opt.optional and opt.type is not bool:
            raise ConfigError(f"{opt.flag} needs a value.")
        return None
    try:
        if opt.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1"):
                return True
            if text in ("false", "no", "0"):
                return False
            raise ValueError("expected true or false")
        if opt.type is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        converted = opt.type(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{opt.flag}: {value!r} is not a valid {opt.type.__name__}.") from exc
    if opt.choices is not None and converted not in opt.choices:
        raise ConfigError(f"{opt.flag}: invalid choice: {value!r} (choose from {', '.join(map(str, opt.choices))}).")
    return converted


def flatten(settings: Any) -> dict[str, Any]:
    """{option name: value} over the whole tree."""
    return {o.name: getattr(getattr(settings, o.group) if o.group else settings, o.name)
            for o in options(type(settings))}


def unflatten(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` (and its groups) from flat option names; values are parsed, then validated once."""
    values = dict(values)
    for old, new in DEPRECATED.items():
        if old in values:
            warnings.warn(f"setting {old!r} is now called {new!r}; the old name goes in the next release.",
                          FutureWarning, stacklevel=3)
            values.setdefault(new, values.pop(old))
    known = {o.name: o for o in options(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; the settings are: {', '.join(sorted(known))}.")
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        opt = known[name]
        target = groups.setdefault(opt.group, {}) if opt.group else top
        target[name] = None if value is None else parse_value(opt, value)
    hints = typing.get_type_hints(cls)
    for group in {o.group for o in known.values() if o.group}:
        top[group] = hints[group](**groups.get(group, {}))
    return cls(**top)
