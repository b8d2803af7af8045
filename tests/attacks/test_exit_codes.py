"""Issue 15, item 8: every error a user causes exits 2 with one line `edgeplug: error: ...` (never 3, never
a traceback), and the Python API raises edgeplug's own errors for every misuse (never a raw ValueError,
OSError, TypeError or AttributeError)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug import DataError, OptionError, hookimpl
from edgeplug.cli import main
from edgeplug.errors import OutputError

from ..conftest import conv_net, registered
from ..core.plugins_for_tests import Tag

Image = pytest.importorskip("PIL.Image")


def refusal(*args: object) -> str:
    """The one `edgeplug: error:` line of a command that must exit 2."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = [line for line in result.output.splitlines() if line.startswith("edgeplug: error:")]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output
    return lines[0]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(conv_net(), path)
    return path


@pytest.fixture
def tag():
    with registered((Tag("a"), "tag_a")):
        yield


def run(model: Path, out: Path, *extra: object) -> str:
    return refusal("run", model, "--plugins", "tag_a", "--output-dir", out, *extra)


# -- the output folder --------------------------------------------------------------------------------------
def test_output_folder_that_is_a_file(model, tmp_path, tag):
    (tmp_path / "taken").write_text("a file")
    assert f"--output-dir {tmp_path / 'taken'} is a file, not a folder" in run(model, tmp_path / "taken")


def test_output_folder_under_a_file(model, tmp_path, tag):
    (tmp_path / "taken").write_text("a file")
    line = run(model, tmp_path / "taken" / "out")
    assert f"lies under the file {tmp_path / 'taken'}" in line


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in: chmod 555 for a normal user; root ignores modes, so for root
    a path in the read-only /sys."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "out"
    sys_root = Path("/sys")
    if not sys_root.is_dir() or (os.access(sys_root, os.W_OK) and _writable(sys_root)):
        pytest.skip("running as root without a read-only file system to write to")
    return sys_root / "edgeplug-attack-out"


def _writable(folder: Path) -> bool:
    try:
        (folder / "edgeplug-probe").mkdir()
    except OSError:
        return False
    (folder / "edgeplug-probe").rmdir()
    return True


def test_read_only_output_folder(model, tmp_path, tag):
    out = read_only_folder(tmp_path)
    line = run(model, out)
    assert f"cannot write to the output folder {out}" in line


def test_full_disk_in_a_plugin_is_a_sentence(model, tmp_path):
    class Writes:
        @hookimpl
        def pre_optimize(self, model, ctx):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ctx.workdir / "cache.bin"))

    with registered((Writes(), "writes")):
        line = refusal("run", model, "--plugins", "writes", "--output-dir", tmp_path / "out")
    assert f"cannot write {tmp_path / 'out' / 'cache.bin'}: the disk is full" in line


def test_running_out_of_memory_is_a_sentence(model, tmp_path):
    class Hungry:
        @hookimpl
        def pre_optimize(self, model, ctx):
            raise MemoryError()

    with registered((Hungry(), "hungry")):
        line = refusal("run", model, "--plugins", "hungry", "--output-dir", tmp_path / "out")
    assert "ran out of memory" in line


# -- data ------------------------------------------------------------------------------------------------------
@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (60 * i, 100, 20)).save(folder / label / f"{i}.jpg")
    return folder


def test_truncated_jpeg(model, tmp_path, images, tag):
    victim = images / "a" / "0.jpg"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    line = run(model, tmp_path / "out", "--data", images)
    assert f"{victim} is corrupt or truncated" in line


def test_corrupt_jpeg(model, tmp_path, images, tag):
    victim = images / "b" / "1.jpg"
    victim.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    line = run(model, tmp_path / "out", "--data", images)
    assert str(victim) in line and ("corrupt" in line or "not an image" in line)


def test_decompression_bomb(model, tmp_path, images, tag):
    bomb = images / "a" / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 million pixels in a few KB
    assert bomb.stat().st_size < 100_000
    line = run(model, tmp_path / "out", "--data", images, "--preprocess", "resize=8x8")
    assert f"{bomb} is too large to decode safely" in line and "decompression bomb" in line


def test_decompression_bomb_warning_is_an_error_too(model, tmp_path, images, tag, monkeypatch):
    """Between Pillow's limit and twice it Pillow only warns; the image is refused all the same."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 8x8 = 64 pixels: over the limit, under twice it
    line = run(model, tmp_path / "out", "--data", images)
    assert "too large to decode safely" in line


def test_images_of_different_sizes_without_resize(model, tmp_path, images, tag):
    Image.new("RGB", (9, 7)).save(images / "a" / "odd.jpg")
    assert "different sizes" in run(model, tmp_path / "out", "--data", images)


@pytest.mark.parametrize("item", ["resize=0x0", "resize=-2x8", "std=0/1/1", "mean=nan"])
def test_bad_preprocess_values(model, tmp_path, images, tag, item):
    line = run(model, tmp_path / "out", "--data", images, "--preprocess", item)
    assert f"bad --preprocess item {item!r}" in line


def test_two_dimensional_labels(model, tmp_path, tag):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 3, 8, 8), np.float32), labels=np.eye(4, 5))
    line = run(model, tmp_path / "out", "--data", data)
    assert "labels have shape [4, 5]" in line and "argmax" in line


# -- options -------------------------------------------------------------------------------------------------
def test_config_naming_a_folder(model, tmp_path, tag):
    assert f"--config {tmp_path} is a folder" in run(model, tmp_path / "out", "--config", tmp_path)


def test_negative_seed(model, tmp_path, tag):
    assert "--seed must be a whole number from 0" in run(model, tmp_path / "out", "--seed", "-1")


def test_infer_output_in_a_missing_folder(model, tmp_path):
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.zeros((1, 3, 8, 8), np.float32))
    line = refusal("infer", model, "--input", inputs, "--output", tmp_path / "missing_dir" / "x.npz")
    assert f"the folder {tmp_path / 'missing_dir'} does not exist" in line


# -- the Python API ----------------------------------------------------------------------------------------------
def test_optimize_takes_a_string_as_a_comma_list(model, tmp_path, tag):
    result = edgeplug.optimize(model, "tag_a", output_dir=tmp_path / "out")
    assert [s["plugin"] for s in result.report["steps"]] == ["tag_a"]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"on_fail": "explode"}, OptionError, "on_fail must be one of fail, skip"),
        ({"colour": "red"}, OptionError, "unknown setting 'colour'"),
        ({"options": [("tag_a", {})]}, OptionError, "options must map plugin names"),
        ({"options": {"quant": {"mode": "static"}}}, OptionError, "'quant', which is not selected"),
        ({"threads": -1}, OptionError, "threads must be at least 1"),
        ({"threads": 2.5}, OptionError, "threads must be a whole number"),
        ({"seed": -1}, OptionError, "seed must be a whole number"),
        ({"data": 5}, OptionError, "data must be a path"),
        ({"plugins": ["tag_a", 3]}, OptionError, "plugins must be a list of plugin names"),
        ({"plugins": []}, OptionError, "no plugins selected"),
        ({"quiet": "yes"}, OptionError, "quiet must be True or False"),
        ({"bench_runs": 0}, OptionError, "bench_runs must be a positive"),
    ],
)
def test_optimize_misuse_raises_edgeplug_errors(model, tmp_path, tag, kwargs, error, words):
    kwargs = {"plugins": ["tag_a"], "output_dir": tmp_path / "out", **kwargs}
    with pytest.raises(error, match=words):
        edgeplug.optimize(model, **kwargs)


def test_optimize_model_of_the_wrong_type(tag):
    with pytest.raises(OptionError, match="model must be a path, not int"):
        edgeplug.optimize(3, ["tag_a"])


def test_optimize_into_a_file(model, tmp_path, tag):
    (tmp_path / "taken").write_text("")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        edgeplug.optimize(model, ["tag_a"], output_dir=tmp_path / "taken")


class Marks:
    """A guard that marks the result, so a test sees it ran."""

    @hookimpl(wrapper=True)
    def guard_inference(self, request):
        result = yield
        result.flags["marked"] = True
        return result


@pytest.fixture
def marks():
    with registered((Marks(), "marks")):
        yield


X = {"x": np.zeros((1, 3, 8, 8), np.float32)}


def test_infer_takes_a_string_of_guards_as_a_comma_list(model, marks):
    assert edgeplug.infer(model, X, guards="marks").flags == {"marked": True}


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"inputs": 5}, DataError, "inputs must be a dict of arrays"),
        ({"options": {"marks": 1}}, OptionError, "options must map plugin names"),
        ({"options": {"security": {"isolate": False}}}, OptionError, "'security', which is not selected"),
        ({"threads": 0}, OptionError, "threads must be at least 1"),
        ({"guards": 7}, OptionError, "guards must be a list of plugin names"),
        ({"model": None}, OptionError, "needs a model path"),
        ({"artifact": "yes"}, OptionError, "artifact must be True or False"),
    ],
)
def test_infer_misuse_raises_edgeplug_errors(model, tmp_path, marks, kwargs, error, words):
    kwargs = {"model": model, "inputs": X, **kwargs}
    with pytest.raises(error, match=words):
        edgeplug.infer(**kwargs)


def test_infer_config_naming_a_folder(model, tmp_path, marks):
    with pytest.raises(OptionError, match="is a folder, not a TOML file"):
        edgeplug.infer(model, X, guards=["marks"], config=tmp_path)
