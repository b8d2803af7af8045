"""Every hook has a test and a README entry; every option of every installed plugin is documented where
that plugin's options are (the generated table of its own page, plugins/<name>/README.md, or the README's
Verification section for the core's verification options).

"Has a test" is read from the test sources with `ast`, as datasette's test_docs does for its hooks: a
test function exercises a hook when it calls `<pm>.hook.<name>(...)` or uses, directly or through the
fixtures it requests, a class (or a plugin module kept in a string) that implements `<name>` with
`@hookimpl`. A `def <name>(` in a comment, a string or an unused class does not count."""

from __future__ import annotations

import ast
import inspect
import re
from collections import defaultdict
from pathlib import Path

import pytest
from edgeplug import Option, hookspecs, plugins
from edgeplug.options import TOLERANCE_KEYS, declared_options

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
HOOKS = [
    name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "edgeplug_spec")
]


def test_hooks_found():
    assert set(HOOKS) == {
        "plugin_options",
        "plugin_capabilities",
        "load_model",
        "pre_optimize",
        "transform_graph",
        "compile",
        "make_runner",
        "guard_inference",
    }


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    assert f"| `{hook}(" in README, f"README's hook table lacks {hook}"


# -- every hook has a test -------------------------------------------------------------------------------


def _is_hookimpl(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "hookimpl") or (
        isinstance(target, ast.Attribute) and target.attr == "hookimpl"
    )


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "fixture") or (
        isinstance(target, ast.Attribute) and target.attr == "fixture"
    )


def _implemented(body: list[ast.stmt]) -> set[str]:
    """Names of the @hookimpl functions defined directly in `body` (a class or a module)."""
    return {
        node.name
        for node in body
        if isinstance(node, ast.FunctionDef) and any(_is_hookimpl(d) for d in node.decorator_list)
    }


def _used_names(node: ast.AST) -> set[str]:
    """Names and attribute names read anywhere under `node` (calls, references, imports inside it)."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            names.add(sub.attr)
        elif isinstance(sub, ast.alias):
            names.add(sub.asname or sub.name.rsplit(".", 1)[-1])
    return names


def _parameters(node: ast.FunctionDef) -> set[str]:
    return {a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)}


def _direct_hook_calls(node: ast.AST) -> set[str]:
    """Hooks called as `<anything>.hook.<name>(...)`."""
    return {
        sub.func.attr
        for sub in ast.walk(node)
        if isinstance(sub, ast.Call)
        and isinstance(sub.func, ast.Attribute)
        and isinstance(sub.func.value, ast.Attribute)
        and sub.func.value.attr == "hook"
    }


def hook_tests(tests_root: Path, hooks: list[str] | tuple[str, ...] = tuple(HOOKS)) -> dict[str, list[str]]:
    """For each hook, the test functions (`path::name`) under `tests_root` that exercise it."""
    # class or plugin-source name -> hooks it implements; fixture -> (names it uses, fixtures it requests)
    implementers: dict[str, set[str]] = defaultdict(set)
    fixtures: dict[str, tuple[set[str], set[str]]] = {}
    tests: list[tuple[str, ast.FunctionDef]] = []
    for path in sorted(tests_root.rglob("*.py")):
        if path.name == "test_docs.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                implementers[node.name] |= _implemented(node.body)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                source = node.value.value
                if isinstance(source, str) and "@hookimpl" in source:
                    try:  # a plugin module written out by the test (entry-point discovery)
                        found = _implemented(ast.parse(source).body)
                    except SyntaxError:
                        continue
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            implementers[target.id] |= found
            elif isinstance(node, ast.FunctionDef):
                if any(_is_fixture(d) for d in node.decorator_list):
                    fixtures[node.name] = (_used_names(node), _parameters(node))
                elif node.name.startswith("test_"):
                    tests.append((f"{path.relative_to(tests_root)}::{node.name}", node))
    covered: dict[str, list[str]] = {hook: [] for hook in hooks}
    for test_id, node in tests:
        used, requested, todo = _used_names(node), set(), _parameters(node)
        while todo:  # the fixtures the test requests (parameters), and the fixtures those request
            name = todo.pop()
            if name in fixtures and name not in requested:
                requested.add(name)
                used |= fixtures[name][0]
                todo |= fixtures[name][1]
        exercised = _direct_hook_calls(node) | {h for name in used for h in implementers.get(name, ())}
        for hook in hooks:
            if hook in exercised:
                covered[hook].append(test_id)
    return covered


COVERED = hook_tests(ROOT / "tests")


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    assert COVERED[hook], (
        f"no test implements {hook} in a plugin it registers, or calls pm.hook.{hook}(...): add one"
    )


def test_hook_tests_count_only_what_a_test_exercises(tmp_path):
    """The check itself: a mention, an unused implementation or a plain `def` does not count."""
    (tmp_path / "conftest.py").write_text(
        "import pytest\n"
        "from edgeplug import hookimpl\n\n"
        "class Compiles:\n"
        "    @hookimpl\n"
        "    def compile(self, model, ctx):\n"
        "        return None\n\n"
        "@pytest.fixture\n"
        "def compiling():\n"
        "    return Compiles()\n\n"
        "@pytest.fixture\n"
        "def wrapped(compiling):\n"
        "    return compiling\n"
    )
    (tmp_path / "test_fake.py").write_text(
        "from edgeplug import hookimpl\n\n"
        "SOURCE = '''\n"
        "from edgeplug import hookimpl\n\n"
        "@hookimpl\n"
        "def load_model(path, ctx):\n"
        "    return None\n"
        "'''\n\n"
        "class Unused:\n"
        "    @hookimpl\n"
        "    def transform_graph(self, model, ctx):\n"
        "        return None\n\n"
        "class Undecorated:\n"
        "    def pre_optimize(self, model, ctx):  # no @hookimpl: not a hook implementation\n"
        "        return None\n\n"
        "def test_mentions():\n"
        "    text = 'def make_runner(artifact, options): hook.guard_inference(request)'\n"
        "    assert Undecorated and text  # pm.hook.plugin_options() only in this comment\n\n"
        "def test_through_a_fixture(wrapped):\n"
        "    assert wrapped\n\n"
        "def test_written_plugin(tmp_path):\n"
        "    (tmp_path / 'p.py').write_text(SOURCE)\n\n"
        "def test_calls(pm):\n"
        "    pm.hook.make_runner(artifact=None, options={})\n"
    )
    covered = hook_tests(tmp_path)
    assert {hook: tests for hook, tests in covered.items() if tests} == {
        "compile": ["test_fake.py::test_through_a_fixture"],
        "load_model": ["test_fake.py::test_written_plugin"],
        "make_runner": ["test_fake.py::test_calls"],
    }


# -- every option is documented where its plugin's options are -------------------------------------------


def readme_section(text: str, heading: str) -> str:
    """The README text under `heading` (a line starting with it) up to the next heading of its level or above."""
    lines, fenced, headings = text.splitlines(), False, []
    for number, line in enumerate(lines):
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):  # a `# comment` inside a code block is no heading
            headings.append((number, len(line) - len(line.lstrip("#")), line))
    start = next(((n, level) for n, level, line in headings if line.startswith(heading)), None)
    if start is None:
        return ""
    end = next((n for n, level, _ in headings if n > start[0] and level <= start[1]), len(lines))
    return "\n".join(lines[start[0] : end])


def table_keys(section: str, plugin: str) -> set[str]:
    """Option keys named in the first cell of the section's table rows: `key`, `plugin.key`, `a` / `b`."""
    keys = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for name in re.findall(r"`([^`]+)`", first):
            keys.add(name.removeprefix(f"{plugin}."))
    return keys


def declared_by(plugin: object) -> dict[str, Option]:
    """The options a plugin declares itself (a settings dataclass, or Option objects, flattened); the core
    adds its tolerance options to every plugin's table."""
    declare = getattr(plugin, "plugin_options", None)
    result = declare() if declare else []
    items = [result] if isinstance(result, type) else result
    flat: list[Option] = []
    for item in items:
        if isinstance(item, type):
            flat.extend(declared_options(item))
        else:
            flat.extend(item if isinstance(item, list) else [item])
    return {o.name: o for o in flat}


def plugin_page(distribution: str) -> str:
    """The text of a plugin's own page (plugins/<dir>/README.md of its distribution edgeplug-<dir>)."""
    page = ROOT / "plugins" / distribution.removeprefix("edgeplug-") / "README.md"
    return page.read_text() if page.exists() else ""


def undocumented_options(readme: str, pages: dict[str, str] | None = None) -> list[str]:
    pm = plugins.load_plugins()
    verification = readme_section(readme, "## Verification")
    missing = []
    for info in plugins.describe(pm):
        if info.name == "core" or info.distribution in ("?", "edgeplug"):
            continue  # the core and plugins registered by other tests
        own = declared_by(pm.get_plugin(info.name))
        page = (pages or {}).get(info.name, plugin_page(info.distribution))
        table = table_keys(page, info.name)
        for key in info.options:
            if key in own or key not in TOLERANCE_KEYS:
                documented = key in table
            else:  # a core verification option the plugin leaves to the core
                documented = f"`-o <plugin>.{key}=`" in verification
            if not documented:
                missing.append(f"{info.name}.{key}")
    return missing


def test_every_plugin_option_is_documented():
    missing = undocumented_options(README)
    assert not missing, (
        f"options missing (each in its plugin page's option table, `edgeplug plugins --markdown NAME`; the "
        f"core's verification options as `-o <plugin>.KEY=` under the README's Verification): {missing}"
    )


def test_option_check_needs_the_plugins_own_table():
    """The check itself: an option named only in another plugin's page, or in prose, is not documented."""
    fuse = plugin_page("edgeplug-fuse")
    assert "`fuse.target`" in fuse and "`neon.target`" in plugin_page("edgeplug-neon")
    row = next(line for line in fuse.splitlines() if line.startswith("| `fuse.target`"))
    assert "fuse.target" in undocumented_options(README, {"fuse": fuse.replace(row, "")})
    verification = readme_section(README, "## Verification")
    without_tolerances = README.replace(verification, "## Verification\n\nmin_cosine min_top1 rtol atol")
    assert "fuse.min_cosine" in undocumented_options(without_tolerances)
