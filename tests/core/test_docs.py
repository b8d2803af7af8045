"""Every hook has a test and a README entry; every option of every installed plugin is documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from edgeplug import hookspecs, plugins

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
HOOKS = [
    name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "edgeplug_spec")
]


def test_hooks_found():
    assert set(HOOKS) == {
        "plugin_options",
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


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    sources = [p for p in (ROOT / "tests").rglob("*.py") if p.name != "test_docs.py"]
    tests = [p for p in sources if f"def {hook}(" in p.read_text() or f"hook.{hook}(" in p.read_text()]
    assert tests, f"no test implements or calls {hook}"


def test_every_plugin_option_is_documented():
    pm = plugins.load_plugins()
    missing = []
    for info in plugins.describe(pm):
        if info.name == "core" or info.distribution in ("?", "edgeplug"):
            continue
        for key in info.options:
            if f"{info.name}.{key}" not in README and f"`{key}`" not in README:
                missing.append(f"{info.name}.{key}")
    assert not missing, f"options missing from README: {missing}"
