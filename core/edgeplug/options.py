"""Typed plugin options: declaration, parsing from `-o plugin.key=value` and TOML, validation."""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import difflib
import os
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OptionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TYPES = ("bool", "int", "float", "str", "list", "path", "callable")


@dataclass(frozen=True)
class Option:
    """One option a plugin accepts. `type` is one of bool, int, float, str, list, path, callable (a Python
    callable from the API, or a 'module:function' string from the command line that the plugin imports);
    `choices` the allowed values, `minimum`/`maximum` inclusive bounds of a number."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"option {self.name!r}: type must be one of {', '.join(TYPES)}")

    def expectation(self) -> str:
        """What a valid value is, in words: 'an integer from 0 to 5', 'one of fp32, fp16, int8'."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        noun = {
            "int": "an integer",
            "float": "a number (float)",
            "bool": "true or false",
            "callable": "",
        }.get(self.type, f"a {self.type}")
        if self.type == "callable":
            return "a Python callable or 'module:function'"
        if self.minimum is not None and self.maximum is not None:
            return f"{noun} from {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"{noun} of at least {self.minimum:g}"
        if self.maximum is not None:
            return f"{noun} of at most {self.maximum:g}"
        return noun

    def parse(self, value: Any, plugin: str) -> Any:
        """Convert a CLI string (or a TOML value) to this option's type and check its bounds, or raise
        OptionError naming PLUGIN.KEY, the value given and what is expected."""
        try:
            parsed = _convert(self.type, value)
        except (TypeError, ValueError):
            parsed = _INVALID
        items = parsed if isinstance(parsed, list) else [parsed]
        valid = parsed is not _INVALID and (
            parsed is None
            or (
                (not self.choices or all(str(i) in self.choices for i in items))
                and (self.minimum is None or not _number(parsed) or parsed >= self.minimum)
                and (self.maximum is None or not _number(parsed) or parsed <= self.maximum)
                and not (_number(parsed) and parsed != parsed)
            )
        )
        if not valid:
            raise OptionError(f"bad value {value!r} for {plugin}.{self.name}: expected {self.expectation()}")
        return parsed


_INVALID = object()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def option(
    default: Any = None,
    help: str = "",
    *,
    choices: Sequence[str] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    kind: str | None = None,
) -> Any:
    """A field of a plugin's settings dataclass: its default, help, allowed values and bounds. The type
    comes from the annotation (bool, int, float, str, Path, list[str], Callable, Literal[...]); `kind`
    overrides it. The core turns the class into the option table and hands the plugin an instance."""
    meta = {
        "edgeplug": {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "kind": kind}
    }
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: copy.copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def declared_options(settings: type) -> list[Option]:
    """The Option table of a settings dataclass declared with `option(...)` fields."""
    hints = typing.get_type_hints(settings)
    table = []
    for f in dataclasses.fields(settings):
        meta = f.metadata.get("edgeplug", {})
        kind, literal = _kind_of(hints.get(f.name, str))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        choices = meta.get("choices") or literal
        table.append(
            Option(
                f.name,
                meta.get("kind") or kind,
                default,
                meta.get("help", ""),
                tuple(choices) if choices else None,
                meta.get("minimum"),
                meta.get("maximum"),
            )
        )
    return table


def _kind_of(annotation: Any) -> tuple[str, tuple[str, ...] | None]:
    """The option type of an annotation, and the values of a Literal."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind_of(args[0])
    if origin is typing.Literal:
        return "str", tuple(str(a) for a in typing.get_args(annotation))
    if annotation is bool:
        return "bool", None
    if annotation is int:
        return "int", None
    if annotation is float:
        return "float", None
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, os.PathLike)):
        return "path", None
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        return "list", None
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        return "callable", None
    return "str", None


def settings_instance(settings: type, values: Mapping[str, Any]) -> Any:
    """An instance of a settings dataclass from parsed option values (tolerance keys are not its fields)."""
    names = {f.name for f in dataclasses.fields(settings)}
    return settings(**{k: v for k, v in values.items() if k in names})


def _convert(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if kind == "list":
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        return [part.strip() for part in str(value).split(",") if part.strip()]
    if kind == "path":
        return Path(str(value)).expanduser()
    if kind == "callable":
        if callable(value) or isinstance(value, str):
            return value
        raise TypeError(value)
    return str(value)


def parse_duration(value: Any, what: str = "duration") -> float:
    """`90s`, `30m`, `2h`, `1h30m` or plain seconds (a number) into seconds; OptionError otherwise."""
    if isinstance(value, bool):
        raise OptionError(f"bad {what} {value!r}: write seconds (90), or 90s, 30m, 2h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
        if not text or parts is None or not any(parts.groups()):
            raise OptionError(f"bad {what} {value!r}: write seconds (90), or 90s, 30m, 2h")
        hours, minutes, secs = (float(g) if g else 0.0 for g in parts.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not seconds > 0 or seconds == float("inf"):
        raise OptionError(f"bad {what} {value!r}: expected a positive duration")
    return seconds


def parse_budgets(pairs: Iterable[str]) -> dict[str, float]:
    """`--budget top1=0.99` items into {"top1": 0.99}."""
    budgets: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if name.startswith("min_") and len(name) > 4:
            name = name[4:]
        try:
            if not sep or not name:
                raise ValueError(pair)
            budgets[name] = float(value)
        except ValueError:
            raise OptionError(f"bad --budget {pair!r}: write METRIC=VALUE, e.g. --budget top1=0.99") from None
        if budgets[name] != budgets[name]:
            raise OptionError(f"bad --budget {pair!r}: the value is not a number")
    return budgets


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean x?)' or a list of the known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return f"did you mean {' or '.join(close)}?"
    return f"known: {', '.join(known) or 'none'}"


def parse_input_shapes(text: str | None) -> dict[str, list[int]]:
    """`input:1x3x224x224,mask:1x128` (--input-shapes, trt's profile shapes) into {name: dims}."""
    shapes: dict[str, list[int]] = {}
    if not text:
        return shapes
    for item in text.split(","):
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name.strip()] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise OptionError(f"bad --input-shapes item {item!r}: write NAME:1x3x224x224") from None
    return shapes


def parse_assignments(pairs: Iterable[str]) -> dict[str, dict[str, str]]:
    """`quant.mode=static` strings into {plugin: {key: raw value}}."""
    result: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        plugin, dot, name = key.strip().partition(".")
        if not sep or not dot or not plugin or not name:
            raise OptionError(f"bad option {pair!r}: write it as PLUGIN.KEY=VALUE, e.g. quant.mode=static")
        result.setdefault(plugin, {})[name.strip()] = value.strip()
    return result


def read_config(path: Path) -> dict[str, dict[str, Any]]:
    """A TOML file whose tables are plugin names: `[quant]\\nmode = "static"`."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise OptionError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise OptionError(f"--config {path} is a folder, not a TOML file") from None
    except OSError as exc:
        raise OptionError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OptionError(f"config file {path} is not valid TOML: {exc}") from None
    for plugin, table in data.items():
        if not isinstance(table, dict):
            raise OptionError(f"config file {path}: {plugin!r} must be a table like [{plugin}]")
    return data


def resolve(
    schemas: Mapping[str, Mapping[str, Option]],
    selected: Iterable[str],
    given: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    """Validate user values against the schemas; returns parsed values per plugin and the keys set."""
    selected = list(selected)
    for plugin in given:
        if plugin not in schemas:
            raise OptionError(f"options given for unknown plugin {plugin!r}: {suggest(plugin, schemas)}")
    values: dict[str, dict[str, Any]] = {}
    user: dict[str, set[str]] = {}
    for plugin in set(selected) | set(given):
        schema = schemas[plugin]
        raw = given.get(plugin, {})
        for key in raw:
            if key not in schema:
                raise OptionError(f"unknown option {plugin}.{key}: {suggest(key, schema)}")
        values[plugin] = {
            name: opt.parse(raw[name], plugin) if name in raw else opt.default for name, opt in schema.items()
        }
        user[plugin] = set(raw)
    return values, user


# Before the plugin API module, plugins imported these from here; they live in tolerance.py now.
from .tolerance import TOLERANCE_KEYS as TOLERANCE_KEYS  # noqa: E402
from .tolerance import TOLERANCE_OPTIONS as TOLERANCE_OPTIONS  # noqa: E402
from .tolerance import Tolerance as Tolerance  # noqa: E402
from .tolerance import check_tolerance_values as check_tolerance_values  # noqa: E402
from .tolerance import split_tolerance as split_tolerance  # noqa: E402
