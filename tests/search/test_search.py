"""edgeplug search on the trained digits CNN: a budget met, a Pareto front, the step cache, resuming a killed
search, the Ray executor, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from edgeplug.cli import main

from ..conftest import EXAMPLES

MODEL = EXAMPLES / "digits_cnn.onnx"
DATA = EXAMPLES / "digits_test.npz"
CALIBRATION = EXAMPLES / "digits_train.npz"
SPACE = """
chains = ["fuse", "fuse,quant", "fuse,prune,quant"]
[prune]
mode = ["structured"]
sparsity = [0.25, 0.5]
"""


def search(*args, cache: Path) -> tuple[int, str]:
    base = ["search", MODEL, "--data", DATA, "--calibration-data", CALIBRATION, "--cache", cache]
    result = CliRunner().invoke(main, [str(a) for a in [*base, *args]])
    return result.exit_code, result.output


def space_file(tmp_path: Path, text: str = SPACE) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def test_a_search_meets_its_budget_draws_a_front_and_reuses_cached_steps(tmp_path):
    space = space_file(tmp_path)
    code, output = search(
        "--budget", "top1=0.98", "--space", space, "--output-dir", tmp_path / "a", "--quiet", cache=tmp_path / "c"
    )  # fmt: skip
    assert code == 0, output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    section = report["search"]
    assert len(section["trials"]) == 4
    best = next(t for t in section["trials"] if t["id"] == section["best"]["trial"])
    assert best["passed"] and best["metric"] >= 0.98
    assert section["held_out"]["passed"] and section["held_out"]["metrics"]["top1"] >= 0.98
    (front,) = section["front"].values()
    assert front  # its size depends on the CPU's speed: check what a front is, not how many points it has
    objective = "latency"
    measured = [
        t
        for t in section["trials"]
        if t.get(objective) is not None and t.get("metric") is not None and t.get("origin") != "probe"
    ]
    on_front = {p["trial"] for p in front}

    def beats(a: dict, b: dict) -> bool:
        better = a[objective] < b[objective] or a["metric"] > b["metric"]
        return a[objective] <= b[objective] and a["metric"] >= b["metric"] and better

    for t in measured:
        assert (t["id"] in on_front) != any(beats(o, t) for o in measured), t
    assert (tmp_path / "a" / "digits_cnn.onnx").exists() and (
        tmp_path / "a" / "digits_cnn.edgeplug.json"
    ).exists()
    assert section["command"].startswith(f"edgeplug run {MODEL} --plugins ")
    # the trials share their fuse step: computed once, then taken from the cache
    assert section["cache"]["hits"] >= 2
    code, output = search(
        "--budget", "top1=0.98", "--space", space, "--output-dir", tmp_path / "b", "--quiet", cache=tmp_path / "c"
    )  # fmt: skip
    assert code == 0, output
    again = json.loads((tmp_path / "b" / "report.json").read_text())["search"]
    steps = sum(len(t["steps"]) for t in again["trials"])
    assert again["cache"]["hits"] == steps  # every step of the second search came from the cache


def test_a_killed_search_resumes_without_redoing_finished_trials(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-c", "from edgeplug.cli import main; main()", "search", str(MODEL), "--data", str(DATA),
        "--calibration-data", str(CALIBRATION), "--budget", "top1=0.98", "--space", str(space_file(tmp_path)),
        "--output-dir", str(out), "--cache", str(tmp_path / "cache"), "--quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = out / "search" / "trials.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if trials.exists() and len(trials.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [json.loads(line)["id"] for line in trials.read_text().splitlines() if line.strip()]
    assert 2 <= len(finished) < 4
    result = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in trials.read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 4  # the finished ones were not run again
    assert ids[: len(finished)] == finished


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    cache = tmp_path / "c"
    empty = space_file(tmp_path, "chains = []\n")
    code, output = search(
        "--budget", "top1=0.9", "--space", empty, "--output-dir", tmp_path / "a", cache=cache
    )
    assert code == 2 and "the search space is empty" in output
    code, output = search("--budget", "topp1=0.9", "--output-dir", tmp_path / "b", cache=cache)
    assert code == 2 and "unknown metric 'topp1'" in output
    code, output = search(
        "--budget", "top1=0.9", "--executor", "ray", "--address", "127.0.0.1:9", "--output-dir", tmp_path / "c",
        cache=cache,
    )  # fmt: skip
    assert code == 2 and "no Ray cluster answers there" in output
    assert output.count("\n") == 1 and output.startswith("edgeplug: error: ")


@pytest.mark.slow
def test_ray_executor_finds_the_same_best_chain_as_local(tmp_path):
    pytest.importorskip("ray")
    space = space_file(tmp_path)
    args = ["--budget", "top1=0.98", "--space", space, "--quiet", "--objective", "size"]
    code, output = search(*args, "--output-dir", tmp_path / "local", cache=tmp_path / "c")
    assert code == 0, output
    code, output = search(
        *args, "--executor", "ray", "--workers", "2", "--output-dir", tmp_path / "ray", cache=tmp_path / "c2"
    )
    assert code == 0, output
    local = json.loads((tmp_path / "local" / "report.json").read_text())["search"]["best"]["label"]
    remote = json.loads((tmp_path / "ray" / "report.json").read_text())["search"]["best"]["label"]
    assert local == remote
