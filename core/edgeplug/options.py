"""Typed plugin options: declaration, parsing from `-o plugin.key=value` and TOML, validation."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Mapping
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
    callable from the API, or a 'module:function' string from the command line that the plugin imports)."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"option {self.name!r}: type must be one of {', '.join(TYPES)}")

    def parse(self, value: Any, plugin: str) -> Any:
        """Convert a CLI string (or a TOML value) to this option's type, or raise OptionError."""
        where = f"{plugin}.{self.name}"
        try:
            parsed = _convert(self.type, value)
        except (TypeError, ValueError):
            expect = f"one of {', '.join(self.choices)}" if self.choices else f"a {self.type}"
            if self.type == "callable":
                expect = "a Python callable or 'module:function'"
            raise OptionError(f"bad value {value!r} for {where}: expected {expect}") from None
        if self.choices and parsed is not None:
            items = parsed if isinstance(parsed, list) else [parsed]
            for item in items:
                if str(item) not in self.choices:
                    raise OptionError(
                        f"bad value {item!r} for {where}: expected one of {', '.join(self.choices)}"
                    )
        return parsed


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


# Tolerance options every step has; the core handles them (DESIGN.md, "Verification").
TOLERANCE_OPTIONS = (
    Option("min_cosine", "float", None, "smallest cosine similarity allowed between outputs"),
    Option("min_top1", "float", None, "smallest top-1 agreement allowed on logits outputs (0..1)"),
    Option("max_abs_error", "float", None, "largest absolute output difference allowed"),
    Option("rtol", "float", None, "relative tolerance of the elementwise check |d| <= atol + rtol*|ref|"),
    Option("atol", "float", None, "absolute tolerance of the elementwise check"),
)
TOLERANCE_KEYS = tuple(o.name for o in TOLERANCE_OPTIONS)
EXACT = {"rtol": 1e-4, "atol": 1e-5}


@dataclass(frozen=True)
class Tolerance:
    """A step's verification budget. Unset criteria are not checked; `user_set` names what the user gave."""

    min_cosine: float | None = None
    min_top1: float | None = None
    max_abs_error: float | None = None
    rtol: float | None = None
    atol: float | None = None
    user_set: frozenset[str] = field(default_factory=frozenset)

    @property
    def elementwise(self) -> bool:
        return self.rtol is not None or self.atol is not None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: getattr(self, k) for k in TOLERANCE_KEYS if getattr(self, k) is not None}
        data["user_set"] = sorted(self.user_set)
        return data


def schema_for(declared: Iterable[Option]) -> dict[str, Option]:
    """The full option table of a plugin: its own options plus the core's tolerance options."""
    table = {o.name: o for o in TOLERANCE_OPTIONS}
    for opt in declared:
        table[opt.name] = opt
    return table


BOUNDS = {
    "min_cosine": (-1.0, 1.0),
    "min_top1": (0.0, 1.0),
    "max_abs_error": (0.0, None),
    "rtol": (0.0, None),
    "atol": (0.0, None),
}


def check_tolerance_values(plugin: str, values: Mapping[str, Any]) -> None:
    """Tolerances outside their meaningful range are refused before any work is done."""
    for key, (low, high) in BOUNDS.items():
        value = values.get(key)
        if value is None:
            continue
        if value != value or value < low or (high is not None and value > high):
            span = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise OptionError(f"bad value {value!r} for {plugin}.{key}: expected a number {span}")


def split_tolerance(values: Mapping[str, Any], user_keys: Iterable[str]) -> tuple[dict[str, Any], Tolerance]:
    """Separate tolerance keys from a plugin's option values; default to exact when none is declared."""
    tol = {k: values.get(k) for k in TOLERANCE_KEYS}
    if all(v is None for v in tol.values()):
        tol.update(EXACT)
    rest = {k: v for k, v in values.items() if k not in TOLERANCE_KEYS}
    user = frozenset(k for k in user_keys if k in TOLERANCE_KEYS)
    return rest, Tolerance(**tol, user_set=user)


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean x?)' or a list of the known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return f"did you mean {' or '.join(close)}?"
    return f"known: {', '.join(known) or 'none'}"


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
