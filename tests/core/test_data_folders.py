"""`--data` folders: image folders with `--preprocess` (resize, mean/std, layout NCHW/NHWC, gray, labels from
sub-folder names) and folders of `.npy` arrays, through the CLI and the Python API.

A recording plugin keeps `ctx.data` as its `pre_optimize` saw it, so every sample can be compared with the
tensor the preprocessing must produce from its file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug import Dataset, Model, RunContext, hookimpl
from edgeplug.cli import main
from onnx import TensorProto, helper, numpy_helper

from ..conftest import registered

Image = pytest.importorskip("PIL.Image")

# a_dark < b_bright in sorted order: label 0 and label 1
DARK = [(10, 40, 90), (60, 20, 5), (0, 0, 0), (90, 90, 30)]
BRIGHT = [(200, 180, 250), (255, 255, 255), (170, 230, 190), (240, 160, 220)]
SOURCE_SIZES = [(5, 7), (9, 11), (12, 3), (6, 4)]  # (height, width) of the files: resize must change them
HEIGHT, WIDTH = 6, 4
MEAN, STD = (0.5, 0.25, 0.125), (0.5, 0.25, 0.2)


class Recorder:
    """Keeps the Dataset each run hands its plugins; the step itself does not apply."""

    def __init__(self) -> None:
        self.seen: list[Dataset] = []

    @hookimpl
    def pre_optimize(self, model: Model, ctx: RunContext) -> None:
        self.seen.append(ctx.data)

    @hookimpl
    def transform_graph(self, model: Model, ctx: RunContext) -> None:
        return None


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    plugin = Recorder()
    with registered((plugin, "recorder")):
        yield plugin


def brightness_classifier(path: Path, shape: list[int | str], channel_axis: int) -> Path:
    """Mean over the pixels of each channel, then logits [-sum, +sum]: class 1 when the normalized image
    is bright. A real 2-class classifier, so a run with labels reports accuracy."""
    spatial = [a for a in (1, 2, 3) if a != channel_axis]
    channels = shape[channel_axis]
    weights = np.tile(np.array([[-1.0, 1.0]], np.float32), (channels, 1))
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=spatial, keepdims=0),
            helper.make_node("MatMul", ["m", "W"], ["logits"]),
        ],
        "brightness",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(weights, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def write_images(root: Path) -> dict[Path, tuple[tuple[int, int, int], int]]:
    """Uniform-colour PNGs of several sizes in a_dark/ and b_bright/: file -> (colour, label)."""
    files = {}
    for label, (folder, colours) in enumerate((("a_dark", DARK), ("b_bright", BRIGHT))):
        (root / folder).mkdir(parents=True)
        for i, (colour, (h, w)) in enumerate(zip(colours, SOURCE_SIZES)):
            path = root / folder / f"img{i}.png"
            Image.new("RGB", (w, h), colour).save(path)
            files[path] = (colour, label)
    return files


def expected_rgb(colour: tuple[int, int, int], layout: str) -> np.ndarray:
    pixel = (np.array(colour, np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    image = np.broadcast_to(pixel, (HEIGHT, WIDTH, 3))
    return image.transpose(2, 0, 1) if layout == "NCHW" else image


def samples_and_labels(data: Dataset) -> list[tuple[np.ndarray, int | None]]:
    pairs = []
    for samples, labels in (
        (data.calibration, data.calibration_labels),
        (data.validation, data.validation_labels),
    ):
        for i, sample in enumerate(samples):
            assert list(sample) == ["x"] and sample["x"].shape[0] == 1 and sample["x"].dtype == np.float32
            pairs.append((sample["x"][0], None if labels is None else int(labels[i])))
    return pairs


def assert_matches(data: Dataset, expected: list[tuple[np.ndarray, int | None]]) -> None:
    """Every expected (tensor, label) is exactly one recorded sample, and nothing else was recorded."""
    got = samples_and_labels(data)
    assert len(got) == len(expected)
    unmatched = list(range(len(got)))
    for tensor, label in expected:
        hits = [i for i in unmatched if np.allclose(got[i][0], tensor, atol=1e-5) and got[i][1] == label]
        assert hits, f"no sample equals the expected tensor with label {label}"
        unmatched.remove(hits[0])


def run_cli(model: Path, data: Path, out: Path, *extra: str):
    return CliRunner().invoke(
        main,
        ["run", str(model), "--plugins", "recorder", "--data", str(data), "--output-dir", str(out), *extra],
    )


PREPROCESS = f"resize={HEIGHT}x{WIDTH},mean={'/'.join(map(str, MEAN))},std={'/'.join(map(str, STD))}"


def test_image_folder_through_the_cli_nchw(tmp_path, recorder):
    files = write_images(tmp_path / "images")
    model = brightness_classifier(tmp_path / "m.onnx", ["N", 3, HEIGHT, WIDTH], 1)
    result = run_cli(
        model, tmp_path / "images", tmp_path / "out", "--preprocess", f"{PREPROCESS},layout=NCHW"
    )
    assert result.exit_code == 0, result.output
    (data,) = recorder.seen
    assert data.source == "file" and len(data.calibration) == len(data.validation) == 4
    assert_matches(data, [(expected_rgb(colour, "NCHW"), label) for colour, label in files.values()])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["labels"] is True and report["data"]["validation_samples"] == 4
    # labels follow the folder names: the brightness classifier gets every validation image right
    assert report["original"]["metrics"]["accuracy"] == 1.0


def test_image_folder_through_the_api_nhwc(tmp_path, recorder):
    files = write_images(tmp_path / "images")
    model = brightness_classifier(tmp_path / "m.onnx", ["N", HEIGHT, WIDTH, 3], 3)
    result = edgeplug.optimize(
        model,
        ["recorder"],
        data=tmp_path / "images",
        output_dir=tmp_path / "out",
        preprocess=f"{PREPROCESS},layout=NHWC",
    )
    (data,) = recorder.seen
    assert_matches(data, [(expected_rgb(colour, "NHWC"), label) for colour, label in files.values()])
    assert result.report["original"]["metrics"]["accuracy"] == 1.0


def test_default_preprocess_scales_to_0_1_channels_first(tmp_path, recorder):
    files = write_images(tmp_path / "images")
    model = brightness_classifier(tmp_path / "m.onnx", ["N", 3, HEIGHT, WIDTH], 1)
    for path in files:  # no resize asked: the files must already have the model's size
        with Image.open(path) as img:
            img.resize((WIDTH, HEIGHT)).save(path)
    edgeplug.optimize(model, ["recorder"], data=tmp_path / "images", output_dir=tmp_path / "out")
    (data,) = recorder.seen
    expected = [
        (np.broadcast_to(np.array(c, np.float32)[:, None, None] / 255.0, (3, HEIGHT, WIDTH)), label)
        for c, label in files.values()
    ]
    assert_matches(data, expected)


def test_gray_images(tmp_path, recorder):
    files = write_images(tmp_path / "images")
    model = brightness_classifier(tmp_path / "m.onnx", ["N", 1, HEIGHT, WIDTH], 1)
    result = run_cli(
        model, tmp_path / "images", tmp_path / "out", "--preprocess", f"resize={HEIGHT}x{WIDTH},gray=true"
    )
    assert result.exit_code == 0, result.output
    (data,) = recorder.seen
    expected = []
    for (r, g, b), label in files.values():
        luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16  # ITU-R 601-2, as Pillow's "L" rounds it
        expected.append((np.full((1, HEIGHT, WIDTH), luma / 255.0, np.float32), label))
    assert_matches(data, expected)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_resize_keeps_rows_and_columns_apart(tmp_path, recorder, layout):
    """A file twice the target size, dark on top and bright on the left: after resize=6x4 the top rows are
    darker than the bottom ones and the left columns brighter than the right ones (a transposed or
    width/height-swapped resize would break one of the two)."""
    folder = tmp_path / "one"
    folder.mkdir()
    pixels = np.zeros((2 * HEIGHT, 2 * WIDTH, 3), np.uint8)
    pixels[HEIGHT:, :, 0] = 255  # red: bottom half
    pixels[:, :WIDTH, 1] = 255  # green: left half
    for name in ("a.png", "b.png"):
        Image.fromarray(pixels).save(folder / name)
    shape: list[int | str] = ["N", 3, HEIGHT, WIDTH] if layout == "NCHW" else ["N", HEIGHT, WIDTH, 3]
    model = brightness_classifier(tmp_path / "m.onnx", shape, 1 if layout == "NCHW" else 3)
    edgeplug.optimize(
        model,
        ["recorder"],
        data=folder,
        output_dir=tmp_path / "out",
        preprocess=f"resize={HEIGHT}x{WIDTH},layout={layout}",
    )
    (data,) = recorder.seen
    image = data.validation[0]["x"][0]
    hwc = image.transpose(1, 2, 0) if layout == "NCHW" else image
    assert hwc.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_allclose(hwc[0, :, 0], 0.0, atol=1e-6)  # top row: no red
    np.testing.assert_allclose(hwc[-1, :, 0], 1.0, atol=1e-6)  # bottom row: full red
    np.testing.assert_allclose(hwc[:, 0, 1], 1.0, atol=1e-6)  # left column: full green
    np.testing.assert_allclose(hwc[:, -1, 1], 0.0, atol=1e-6)  # right column: no green
    np.testing.assert_allclose(hwc[..., 2], 0.0)  # no blue anywhere
    # one folder, no sub-folders: no labels
    assert data.validation_labels is None and data.calibration_labels is None


def test_npy_folder_through_the_cli_and_the_api(tmp_path, recorder):
    x = np.random.default_rng(0).random((6, 3, HEIGHT, WIDTH), dtype=np.float32)
    labels = np.array([0, 1, 1, 0, 1, 0])
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "labels.npy", labels)
    model = brightness_classifier(tmp_path / "m.onnx", ["N", 3, HEIGHT, WIDTH], 1)
    result = run_cli(model, folder, tmp_path / "cli")
    assert result.exit_code == 0, result.output
    edgeplug.optimize(model, ["recorder"], data=folder, output_dir=tmp_path / "api")
    for data in recorder.seen:
        assert_matches(data, [(x[i], int(labels[i])) for i in range(len(x))])
    assert len(recorder.seen) == 2


def test_npy_folder_without_labels_and_as_calibration_data(tmp_path, recorder):
    rng = np.random.default_rng(1)
    validation, calibration = tmp_path / "val", tmp_path / "cal"
    for folder, count in ((validation, 3), (calibration, 5)):
        folder.mkdir()
        np.save(folder / "x.npy", rng.random((count, 3, HEIGHT, WIDTH), dtype=np.float32))
    model = brightness_classifier(tmp_path / "m.onnx", ["N", 3, HEIGHT, WIDTH], 1)
    result = run_cli(model, validation, tmp_path / "out", "--calibration-data", str(calibration))
    assert result.exit_code == 0, result.output
    (data,) = recorder.seen
    assert len(data.validation) == 3 and len(data.calibration) == 5
    assert data.validation_labels is None and data.calibration_labels is None
    np.testing.assert_array_equal(
        np.concatenate([s["x"] for s in data.validation]), np.load(validation / "x.npy")
    )
    np.testing.assert_array_equal(
        np.concatenate([s["x"] for s in data.calibration]), np.load(calibration / "x.npy")
    )


def refused(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("edgeplug: error: "), result.output
    return lines[0]


def test_folder_refusals(tmp_path, recorder):
    model = brightness_classifier(tmp_path / "m.onnx", ["N", 3, HEIGHT, WIDTH], 1)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    np.save(wrong / "image.npy", np.zeros((2, 3, HEIGHT, WIDTH), np.float32))
    assert "missing x; unknown image" in refused(run_cli(model, wrong, tmp_path / "o1"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no .npy files and no images" in refused(run_cli(model, empty, tmp_path / "o2"))
    write_images(tmp_path / "images")
    bad = refused(run_cli(model, tmp_path / "images", tmp_path / "o3", "--preprocess", "resize=6by4"))
    assert "bad --preprocess item 'resize=6by4'" in bad
    assert recorder.seen == []  # refused before any plugin ran


def test_images_of_several_sizes_without_resize_are_refused(tmp_path, recorder):
    model = brightness_classifier(tmp_path / "m.onnx", ["N", 3, HEIGHT, WIDTH], 1)
    write_images(tmp_path / "images")  # files of several sizes, and no resize asked
    line = refused(run_cli(model, tmp_path / "images", tmp_path / "out"))
    assert "the images have different sizes" in line and "resize=" in line
    assert recorder.seen == []
