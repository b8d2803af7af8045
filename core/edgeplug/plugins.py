"""The plugin manager: entry-point group `edgeplug`, loaded lazily and once.

`EDGEPLUG_PLUGINS=fuse,quant` restricts which installed plugins load (the core's default plugin
always loads). A plugin whose import fails is recorded in `broken()` and breaks nothing else.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .capabilities import FORMS, Capabilities
from .errors import OptionError, PluginError
from .options import Option, declared_options, suggest
from .tolerance import schema_for

CORE = "core"  # the core's built-in plugin, and the `-o core.*` / `[core]` options of a run
DEFAULT_PLUGINS = {CORE: "edgeplug.default_plugin"}
ENV_VAR = "EDGEPLUG_PLUGINS"

_pm: pluggy.PluginManager | None = None
_broken: dict[str, str] = {}
_dists: dict[str, tuple[str, str]] = {}


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    options: dict[str, Option]


def load_plugins(refresh: bool = False) -> pluggy.PluginManager:
    """The plugin manager with the default plugin and every installed `edgeplug` entry point."""
    global _pm
    if _pm is not None and not refresh:
        return _pm
    import importlib

    pm = pluggy.PluginManager("edgeplug")
    pm.add_hookspecs(hookspecs)
    _broken.clear()
    _dists.clear()
    for name, module in DEFAULT_PLUGINS.items():
        pm.register(importlib.import_module(module), name=name)
        _dists[name] = ("edgeplug", _version("edgeplug"))
    allowed = _allowed()
    for ep in md.entry_points(group="edgeplug"):
        if ep.name in DEFAULT_PLUGINS or pm.has_plugin(ep.name):
            continue
        if allowed is not None and ep.name not in allowed:
            continue
        dist = getattr(ep, "dist", None)
        _dists[ep.name] = (dist.metadata["Name"], dist.version) if dist else ("?", "?")
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            _broken[ep.name] = f"Error importing plugin {ep.name!r}: {type(exc).__name__}: {exc}"
            continue
        try:
            pm.check_pending()  # a misspelt hook name fails loudly, as in pytest
        except pluggy.PluginValidationError as exc:
            pm.unregister(name=ep.name)
            _broken[ep.name] = f"Invalid plugin {ep.name!r}: {exc}"
    _pm = pm
    return pm


def _allowed() -> set[str] | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


def distribution_of(name: str) -> tuple[str, str]:
    """(distribution, version) of a loaded plugin."""
    load_plugins()
    return _dists.get(name, ("?", "?"))


def broken() -> dict[str, str]:
    """Plugins that failed to import, with their error."""
    load_plugins()
    return dict(_broken)


def names(pm: pluggy.PluginManager) -> list[str]:
    """Registered plugin names a user can select (the core's default plugin excluded)."""
    return sorted(n for n, _ in pm.list_name_plugin() if n and n not in DEFAULT_PLUGINS)


def call_one(pm: pluggy.PluginManager, hook: str, plugin: str, **kwargs: Any) -> Any:
    """Call `hook` on one plugin only (pluggy's subset_hook_caller), or None if it lacks the hook."""
    target = pm.get_plugin(plugin)
    others = [p for n, p in pm.list_name_plugin() if n != plugin]
    caller = pm.subset_hook_caller(hook, remove_plugins=others)
    impls = [i for i in caller.get_hookimpls() if i.plugin is target]
    if not impls:
        return None
    return caller(**kwargs)


def has_hook(pm: pluggy.PluginManager, hook: str, plugin: str) -> bool:
    target = pm.get_plugin(plugin)
    return any(i.plugin is target for i in getattr(pm.hook, hook).get_hookimpls())


def options_schema(pm: pluggy.PluginManager, plugin: str, metrics: Iterable[str] = ()) -> dict[str, Option]:
    """The options of one plugin, the core's tolerance options included (and `min_<name>` for the user
    metrics in `metrics`)."""
    flat: list[Option] = []
    for item in _declared(pm, plugin):
        flat.extend(declared_options(item) if isinstance(item, type) else [item])
    return schema_for(flat, metrics)


def _declared(pm: pluggy.PluginManager, plugin: str) -> list[Any]:
    """What `plugin_options` returned: a settings dataclass, or Option objects (flattened)."""
    declared = call_one(pm, "plugin_options", plugin) or []
    if isinstance(declared, type):
        return [declared]
    items: list[Any] = []
    for item in declared:
        items.extend(item if isinstance(item, list) else [item])
    return items


def settings_class(pm: pluggy.PluginManager, plugin: str) -> type | None:
    """The plugin's settings dataclass when it declares its options as one (else None)."""
    found = [
        item for item in _declared(pm, plugin) if isinstance(item, type) and dataclasses.is_dataclass(item)
    ]
    return found[0] if found else None


def schemas_for(
    pm: pluggy.PluginManager, selected: list[str], given: dict[str, Any], metrics: Iterable[str] = ()
) -> dict[str, dict[str, Option]]:
    """Option tables of the selected plugins and of those the user gave options for (only those: a
    plugin the run does not touch cannot break it); options for an unknown plugin are refused."""
    known = names(pm)
    for plugin in given:
        if plugin not in known:
            raise OptionError(f"options given for unknown plugin {plugin!r}: {suggest(plugin, known)}")
    metrics = list(metrics)
    return {name: options_schema(pm, name, metrics) for name in dict.fromkeys([*selected, *given])}


def capabilities_of(
    pm: pluggy.PluginManager, plugin: str, options: dict[str, Any], downstream: frozenset[str] = FORMS
) -> Capabilities:
    """The plugin's declared capabilities for these option values and what later plugins consume (the
    defaults when it declares none)."""
    declared = call_one(pm, "plugin_capabilities", plugin, options=options, downstream=downstream)
    if declared is None:
        return Capabilities()
    if not isinstance(declared, Capabilities):
        raise PluginError(f"plugin {plugin!r}: plugin_capabilities returned {type(declared).__name__}")
    return declared


def removers(pm: pluggy.PluginManager) -> dict[str, list[str]]:
    """Form -> the installed plugins that remove it (with their default options), for refusal hints."""
    found: dict[str, list[str]] = {}
    for name in names(pm):
        try:
            defaults = {k: o.default for k, o in options_schema(pm, name).items()}
            caps = capabilities_of(pm, name, defaults)
        except Exception:  # a broken plugin must not break another's refusal message
            continue
        for form in caps.removes:
            found.setdefault(form, []).append(name)
    return found


def chain_capabilities(
    pm: pluggy.PluginManager, chain: tuple[str, ...], options: dict[str, dict[str, Any]]
) -> dict[str, Capabilities]:
    """Every plugin's capabilities, last first: each is told what every plugin after it consumes."""
    caps: dict[str, Capabilities] = {}
    downstream = FORMS
    for name in reversed(chain):
        caps[name] = capabilities_of(pm, name, options.get(name, {}), frozenset(downstream))
        downstream = downstream & caps[name].consumes
    return {name: caps[name] for name in chain}


def check_selection(pm: pluggy.PluginManager, selected: list[str]) -> None:
    """Unknown or broken names are refused with the closest known names."""
    known = names(pm)
    seen: set[str] = set()
    for name in selected:
        if name in _broken:
            raise PluginError(f"plugin {name!r} is installed but failed to load: {_broken[name]}")
        if name not in known:
            raise OptionError(f"unknown plugin {name!r}: {suggest(name, known)}")
        if name in seen:
            raise OptionError(f"plugin {name!r} is selected twice")
        seen.add(name)


def describe(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Name, distribution, version, hooks and options of every loaded plugin."""
    infos = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda np_: np_[0] or ""):
        if plugin is None:
            continue
        hooks = tuple(sorted(c.name for c in pm.get_hookcallers(plugin) or []))
        dist, version = _dists.get(name, ("?", "?"))
        try:
            options = {} if name in DEFAULT_PLUGINS else options_schema(pm, name)
        except Exception as exc:  # a buggy plugin_options must not take `edgeplug plugins` down
            _broken[name] = f"plugin {name!r} failed to list its options: {type(exc).__name__}: {exc}"
            options = {}
        infos.append(PluginInfo(name, dist, version, hooks, options))
    return infos
