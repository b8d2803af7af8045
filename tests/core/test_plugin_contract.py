"""The plugin contract, checked for every plugin of this repository (issue 18):

(a) a plugin imports only `edgeplug` and `edgeplug.plugin_api` (the published plugin API) of the core;
(b) no plugin names another: no other plugin's CLI or distribution name in its strings, no comparison of
    plugin names with `ctx.chain`/`ctx.following`, no message built from them (capabilities say what a
    plugin needs to know of the others);
(c) the core checks every declared option's type and bounds, refusing a bad value through `edgeplug run`
    with one message format, `bad value X for PLUGIN.KEY: expected ...`;
(d) every declared default satisfies its own declaration;
(e) a chain whose input holds a form a compile plugin does not consume is refused before any step runs,
    naming both what it would receive and what it consumes.

(a) and (b) read the sources with `ast`; a plugin is found from `plugins/<dir>/pyproject.toml` (its
entry point: CLI name and package) so that a plugin that fails to import is still checked."""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import edgeplug
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug import Option, plugins
from edgeplug.cli import main
from edgeplug.options import declared_options
from onnx import TensorProto, helper, numpy_helper

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits_cnn.onnx"
ALLOWED_MODULES = ("edgeplug", "edgeplug.plugin_api")
CHAIN_ATTRIBUTES = ("chain", "following")


@dataclass(frozen=True)
class PluginSource:
    """A plugin of this repository as its pyproject declares it."""

    name: str  # the CLI name (entry point)
    distribution: str  # edgeplug-quantize
    package: str  # edgeplug_quantize
    folder: Path  # plugins/quantize/edgeplug_quantize

    def files(self) -> list[Path]:
        return sorted(self.folder.rglob("*.py"))


def repository_plugins() -> dict[str, PluginSource]:
    found: dict[str, PluginSource] = {}
    for pyproject in sorted(ROOT.glob("plugins/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        for name, target in project.get("entry-points", {}).get("edgeplug", {}).items():
            package = target.split(":")[0].split(".")[0]
            found[name] = PluginSource(name, project["name"], package, pyproject.parent / package)
    return found


PLUGINS = repository_plugins()


def test_every_plugin_folder_is_found() -> None:
    """The checks below see every plugin (a folder without an entry point would escape them)."""
    folders = {p.parent for p in ROOT.glob("plugins/*/edgeplug_*/__init__.py")}
    assert folders and folders == {p.folder for p in PLUGINS.values()}
    assert {"trt", "neon", "prune", "security"} <= set(PLUGINS)


# -- (a) the import rule -------------------------------------------------------------------------------


def import_violations(source: str, filename: str = "<source>") -> list[str]:
    """Imports of the core other than `edgeplug` and `edgeplug.plugin_api` (and names `from edgeplug
    import X` takes that edgeplug does not export)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "edgeplug":
                modules += [f"edgeplug.{a.name}" for a in node.names if a.name not in edgeplug.__all__]
        else:
            continue
        for module in modules:
            if (module == "edgeplug" or module.startswith("edgeplug.")) and module not in ALLOWED_MODULES:
                found.append(f"{filename}:{node.lineno}: imports {module}")
    return found


def test_import_check_catches_private_modules() -> None:
    source = (
        "import edgeplug\n"
        "from edgeplug import Model, plugin_api\n"
        "from edgeplug.plugin_api import outputs_of\n"
        "from edgeplug.verify import outputs_of\n"
        "import edgeplug.model\n"
        "from edgeplug import pipeline\n"
        "from . import helpers\n"
    )
    assert import_violations(source) == [
        "<source>:4: imports edgeplug.verify",
        "<source>:5: imports edgeplug.model",
        "<source>:6: imports edgeplug.pipeline",
    ]


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_plugins_import_only_the_plugin_api(plugin: str) -> None:
    found = []
    for path in PLUGINS[plugin].files():
        found += import_violations(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, f"{plugin} imports private core modules (use edgeplug.plugin_api): {found}"


# -- (b) no plugin names another ----------------------------------------------------------------------


def _names_chain(node: ast.AST) -> bool:
    """`ctx.chain`, `ctx.following` or an item of them."""
    if isinstance(node, ast.Subscript):
        node = node.value
    return isinstance(node, ast.Attribute) and node.attr in CHAIN_ATTRIBUTES


def _mentions(text: str, other: PluginSource) -> bool:
    word = rf"(?<![\w-]){re.escape(other.name)}(?![\w-])"
    return bool(re.search(word, text)) or other.distribution in text or other.package in text


def peer_names(source: str, own: str, filename: str = "<source>") -> list[str]:
    """Where a plugin's source names another plugin: string literals (docstrings and f-string parts
    included) holding another plugin's CLI name as a word or its distribution/package name; comparisons
    with ctx.chain/ctx.following (only plugin names could be compared with them); text built from them;
    imports of another plugin's package. In line order."""
    others = [p for name, p in PLUGINS.items() if name != own]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for other in others:
                if _mentions(node.value, other):
                    found.append((line, f"names {other.name!r}: {' '.join(node.value.split())[:90]!r}"))
        elif isinstance(node, ast.Compare) and any(_names_chain(n) for n in (node.left, *node.comparators)):
            found.append((line, "compares plugin names with ctx.chain/ctx.following"))
        elif (isinstance(node, ast.FormattedValue) and _names_chain(node.value)) or (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "join"
            and any(_names_chain(sub) for sub in ast.walk(node))
        ):
            found.append((line, "puts the plugin names of ctx.chain/ctx.following into text"))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for other in others:
                if any(m.split(".")[0] == other.package for m in modules):
                    found.append((line, f"imports {other.package}"))
    ordered = sorted(dict.fromkeys(found), key=lambda item: item[0])
    return [f"{filename}:{line}: {message}" for line, message in ordered]


def test_peer_name_check_catches_names_and_chain_comparisons() -> None:
    source = (
        '"""Quantization; works with quant before it."""\n'
        "QUANTIZED = 'qdq-int8'\n"
        "STANDARD_ONLY = ('neon', 'trt')\n"
        "def f(ctx):\n"
        "    if 'quant' in ctx.following:\n"
        "        ctx.log(f\"{', '.join(ctx.following)} run after me\")\n"
        "    if ctx.following and len(ctx.chain) > 1:\n"
        "        ctx.log('put prune last; edgeplug-fuse and -o fuse.target=onnx; fused, fuses, pruned')\n"
        "    import edgeplug_quantize.options\n"
    )
    found = peer_names(source, "prune")
    assert [line.split(": ", 1)[1].split(":")[0] for line in found] == [
        "names 'quant'",  # the docstring
        "names 'neon'",
        "names 'trt'",
        "compares plugin names with ctx.chain/ctx.following",
        "names 'quant'",  # the compared literal
        "puts the plugin names of ctx.chain/ctx.following into text",
        "names 'fuse'",  # edgeplug-fuse and fuse.target, one literal
        "imports edgeplug_quantize",
    ], found
    assert peer_names("'prune only: put prune last (edgeplug-prune)'", "prune") == []  # its own name


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_no_plugin_names_another(plugin: str) -> None:
    found = []
    for path in PLUGINS[plugin].files():
        found += peer_names(path.read_text(), plugin, str(path.relative_to(ROOT)))
    assert not found, f"{plugin} names other plugins (say it with capabilities): {found}"


# -- (c), (d) options: declared once, checked by the core ---------------------------------------------


def declared(plugin: str) -> dict[str, Option]:
    """The options the plugin declares, as the core checks them (a tolerance option keeps the core's type
    and bounds, with the plugin's default)."""
    pm = plugins.load_plugins()
    result = plugins.call_one(pm, "plugin_options", plugin) or []
    items = [result] if isinstance(result, type) else result
    names: list[str] = []
    for item in items:
        if isinstance(item, type):
            names += [o.name for o in declared_options(item)]
        else:
            names += [o.name for o in (item if isinstance(item, list) else [item])]
    schema = plugins.options_schema(pm, plugin)
    return {name: schema[name] for name in names}


def installed() -> list[str]:
    """The plugins this checkout installs (entry points of the group `edgeplug`)."""
    pm = plugins.load_plugins()
    return sorted(name for name in PLUGINS if pm.has_plugin(name) or name in plugins.broken())


def bad_values(opt: Option) -> list[tuple[str, str]]:
    """(value, why) pairs the declaration refuses: a value of the wrong type, one outside each bound."""
    values = []
    wrong_type = {"int": "1.5", "float": "many", "bool": "maybe"}.get(opt.type)
    if wrong_type is not None:
        values.append((wrong_type, "type"))
    if opt.choices:
        values.append(("no-such-choice", "choices"))
    if opt.type in ("int", "float"):
        kind = int if opt.type == "int" else float
        step = kind(1 if opt.type == "int" else 0.5)
        if opt.minimum is not None:
            values.append((str(kind(opt.minimum) - step), "minimum"))
        if opt.maximum is not None:
            values.append((str(kind(opt.maximum) + step), "maximum"))
    return values


CASES = [
    pytest.param(plugin, key, value, id=f"{plugin}.{key}={value} ({why})")
    for plugin in installed()
    for key, opt in declared(plugin).items()
    for value, why in bad_values(opt)
]


def test_every_plugin_declares_checkable_options() -> None:
    """The parametrisation below is not empty for any plugin that has options to get wrong."""
    checked = {case.values[0] for case in CASES}
    assert {"trt", "neon", "prune", "security"} <= checked


@pytest.mark.parametrize(("plugin", "key", "value"), CASES)
def test_the_core_refuses_a_bad_value_in_one_format(
    plugin: str, key: str, value: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [
        "run",
        str(EXAMPLE),
        "--plugins",
        plugin,
        "-o",
        f"{plugin}.{key}={value}",
        "--output-dir",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        rf"edgeplug: error: bad value {re.escape(repr(value))} for {plugin}\.{key}: expected .+", lines[0]
    ), result.stderr
    assert not out.exists() or not list(out.rglob("*.onnx"))  # refused before any work


@pytest.mark.parametrize("plugin", installed())
def test_declared_defaults_satisfy_their_declaration(plugin: str) -> None:
    for key, opt in declared(plugin).items():
        if opt.default is None:  # "not set": the plugin or the core decides
            continue
        assert opt.parse(opt.default, plugin) == opt.default, f"{plugin}.{key}: default {opt.default!r}"


def test_the_option_checks_can_fail() -> None:
    """The checks themselves: a default outside its bounds and a value the declaration lets through fail."""
    bounded = Option("level", "int", 9, "", minimum=0, maximum=5)
    with pytest.raises(
        edgeplug.OptionError, match=r"bad value 9 for demo\.level: expected an integer from 0 to 5"
    ):
        bounded.parse(bounded.default, "demo")
    assert bad_values(bounded) == [("1.5", "type"), ("-1", "minimum"), ("6", "maximum")]
    assert bad_values(Option("name", "str", "x", "")) == []  # nothing to get wrong


# -- (e) capabilities refuse a chain before any step runs ---------------------------------------------


def contrib_model() -> onnx.ModelProto:
    """MatMul -> com.microsoft Gelu: a model holding an onnxruntime contrib op."""
    weight = numpy_helper.from_array(np.full((4, 6), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
            helper.make_node("Gelu", ["h"], ["y"], name="ms_gelu", domain="com.microsoft"),
        ],
        "contrib",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [weight],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("compiler", ["trt", "neon"])
def test_contrib_ops_into_a_standard_onnx_compiler_are_refused_before_any_step(
    compiler: str, tmp_path: Path
) -> None:
    if compiler not in installed():
        pytest.skip(f"the {compiler} plugin is not installed")
    model = tmp_path / "contrib.onnx"
    onnx.save(contrib_model(), model)
    out = tmp_path / "out"
    args = ["run", str(model), "--plugins", compiler, "--output-dir", str(out), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    received = "it would receive onnxruntime contrib ops (com.microsoft) (the input model holds them)"
    assert line.startswith(f"edgeplug: error: plugin {compiler!r} cannot take this model: {received}"), line
    consumed = re.search(rf"and {compiler} consumes only (standard ONNX[^;]*)", line)
    assert consumed and "contrib" not in consumed.group(1), line  # what it does consume, named too
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["steps"] == []
    assert "original" not in report and "compile" not in report  # no reference pass, no step, no build
