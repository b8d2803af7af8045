"""report.html for a passing and a failing run, `edgeplug report`, and a render in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from edgeplug.cli import main

from ..conftest import registered
from .test_metrics import Noisy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_a_passing_run_writes_the_page_with_steps_metrics_and_profile(
    example_model, example_test_data, tmp_path
):
    out = tmp_path / "ok"
    with registered((Noisy(), "noisy")):
        code, output = run(
            "run", example_model, "--plugins", "fuse,noisy", "-o", "noisy.noise=0.02", "--data", example_test_data,
            "--metric", "accuracy", "--output-dir", out,
        )  # fmt: skip
    assert code == 0, output
    page = (out / "report.html").read_text()
    assert "1. fuse" in page and "2. noisy" in page and "accuracy against the original" in page
    assert "Layer-wise error profile" in page  # the most lossy step's profile
    report = json.loads((out / "report.json").read_text())
    assert report["profile"]["index"] == 2 and report["profile"]["rows"]
    # the summary on stdout: every metric and ratios against the original
    assert "accuracy" in output and "x smaller" in output.split("1. fuse")[1].splitlines()[0]


def test_a_failing_run_names_the_diverging_node_in_the_page(example_model, example_test_data, tmp_path):
    out = tmp_path / "bad"
    with registered((Noisy(), "noisy")):
        code, output = run(
            "run", example_model, "--plugins", "noisy", "-o", "noisy.noise=0.3", "--data", example_test_data,
            "--budget", "top1=0.999", "--output-dir", out,
        )  # fmt: skip
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    node = report["steps"][0]["verification"]["divergence"]["node"]
    page = (out / "report.html").read_text()
    assert f"first diverging node: <code>{node}</code>" in page
    assert "top1" in page and "failed" in page
    assert "2. noisy" not in output and "1. noisy" in output  # the table up to the failing step
    (out / "report.html").unlink()
    code, output = run("report", out)
    assert code == 0 and (out / "report.html").read_text() == page
    code, output = run("report", tmp_path / "missing")
    assert code == 2 and "does not exist" in output


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_page_renders_in_headless_chromium_without_console_errors(
    example_model, example_test_data, tmp_path
):
    out = tmp_path / "ok"
    code, output = run(
        "run", example_model, "--plugins", "fuse", "--data", example_test_data, "--bench", "--output-dir", out,
        "--quiet",
    )  # fmt: skip
    assert code == 0, output
    shot = tmp_path / "page.png"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1200,1400",
    ]  # fmt: skip
    result = subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", (out / "report.html").resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    low, high = pixels.getextrema()
    assert high - low > 100  # not blank: text and bars drawn
    histogram = pixels.histogram()
    assert sum(histogram[:128]) > 2000  # a real amount of dark ink (text, bars), not an empty page
