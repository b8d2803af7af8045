"""Plugin discovery from real distribution metadata, broken plugins, EDGEPLUG_PLUGINS, `edgeplug plugins`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from edgeplug import plugins

ROOT = Path(__file__).resolve().parents[2]


def readme_plugin_example() -> str:
    """The README's third-party plugin, exactly as a reader copies it (the block after `# edgeplug_stamp.py`)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("# edgeplug_stamp.py\n")
    return text[start : text.index("```", start)]


THIRD_PARTY = readme_plugin_example()


def install_fake_distribution(
    site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """Write modules and a real `*.dist-info` (METADATA + entry_points.txt) into `site`."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[edgeplug]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)


@pytest.fixture
def site(tmp_path, monkeypatch, fresh_plugins):
    site = tmp_path / "site"
    site.mkdir()
    install_fake_distribution(
        site, "edgeplug_stamp", {"stamp": "edgeplug_stamp_plugin"}, {"edgeplug_stamp_plugin": THIRD_PARTY}
    )
    install_fake_distribution(
        site,
        "edgeplug_broken",
        {"broken": "edgeplug_broken_plugin"},
        {"edgeplug_broken_plugin": "raise ImportError('needs libfoo 2.0')\n"},
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def cli(site: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edgeplug", *map(str, args)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


def test_third_party_plugin_is_discovered_and_runs(site, tiny_model, tmp_path):
    pm = plugins.load_plugins(refresh=True)
    assert pm.has_plugin("stamp")
    assert plugins.describe(pm)  # metadata is readable
    info = {i.name: i for i in plugins.describe(pm)}["stamp"]
    assert info.distribution == "edgeplug_stamp" and info.version == "1.0"
    assert "transform_graph" in info.hooks and "stamp" in info.options

    result = cli(
        site,
        "run",
        tiny_model,
        "--plugins",
        "stamp",
        "-o",
        "stamp.stamp=from-cli",
        "--output-dir",
        tmp_path / "out",
    )
    assert result.returncode == 0, result.stderr
    import onnx
    from edgeplug.model import get_metadata

    assert get_metadata(onnx.load(tmp_path / "out" / "tiny.onnx"), "stamp") == "from-cli"


def test_broken_plugin_is_listed_and_the_others_work(site, tiny_model, tmp_path):
    plugins.load_plugins(refresh=True)
    assert "needs libfoo 2.0" in plugins.broken()["broken"]
    listing = cli(site, "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert "broken" in data["broken"]
    assert "stamp" in [p["name"] for p in data["plugins"]]
    text = cli(site, "plugins")
    assert "broken  BROKEN: Error importing plugin 'broken'" in text.stdout
    selected = cli(site, "run", tiny_model, "--plugins", "broken", "--output-dir", tmp_path / "o")
    assert selected.returncode == 2
    assert selected.stderr.strip().startswith(
        "edgeplug: error: plugin 'broken' is installed but failed to load"
    )


def test_environment_variable_restricts_loading(site, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(plugins.ENV_VAR, "stamp")
    pm = plugins.load_plugins(refresh=True)
    assert pm.has_plugin("stamp") and not plugins.broken()
    assert "broken" not in plugins.names(pm)
    result = cli(site, "plugins", "--json", env={plugins.ENV_VAR: "broken"})
    names = [p["name"] for p in json.loads(result.stdout)["plugins"]]
    assert "stamp" not in names and "core" in names


def test_loading_is_lazy_and_idempotent(site):
    first = plugins.load_plugins(refresh=True)
    assert plugins.load_plugins() is first


def test_a_misspelt_hook_fails_loudly(tmp_path, monkeypatch, fresh_plugins):
    site = tmp_path / "site2"
    site.mkdir()
    install_fake_distribution(
        site,
        "edgeplug_typo",
        {"typo": "edgeplug_typo_plugin"},
        {
            "edgeplug_typo_plugin": "from edgeplug import hookimpl\n\n@hookimpl\ndef transform_grpah(model, ctx):\n    return None\n"
        },
    )
    monkeypatch.syspath_prepend(str(site))
    plugins.load_plugins(refresh=True)
    assert "transform_grpah" in plugins.broken()["typo"]
    sys.path.remove(str(site))
