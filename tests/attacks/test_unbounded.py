"""Issue 15, item 7: no command runs unbounded: --threads is positive and bounded by the CPU count,
declared sizes (a dimension of 2**31, 6 GiB of external data in a 144-byte model) are checked against the
memory available before anything is allocated, and a killed `edgeplug bench` takes its measuring child
with it.

The memory attacks run the real command in a child process under RLIMIT_AS, so a regression fails the
test with a MemoryError instead of taking the machine's memory."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import psutil
import pytest
from click.testing import CliRunner
from edgeplug.api import THREADS_HARD_CAP, cpu_count
from edgeplug.cli import main
from onnx import TensorProto, helper

from ..conftest import conv_net

LIMIT = 4 * 2**30  # address space of the child running an attack: far below what the attack declares


def edgeplug(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def refusal(*args: object) -> str:
    code, output = edgeplug(*args)
    lines = [line for line in output.splitlines() if line.startswith("edgeplug: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def limited(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`edgeplug ARGS` in a child process whose address space is limited to LIMIT bytes."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    return subprocess.run(
        [sys.executable, "-m", "edgeplug", *map(str, args)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(conv_net(), path)
    return path


# -- threads ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "infer", "bench"])
@pytest.mark.parametrize("threads", ["-1", "0"])
def test_threads_must_be_positive(model, tmp_path, command, threads):
    args = {
        "run": ["run", model, "--plugins", "fuse", "--output-dir", tmp_path / "out"],
        "infer": ["infer", model, "--input", tmp_path / "x.npz"],
        "bench": ["bench", model],
    }[command]
    line = refusal(*args, "--threads", threads)
    assert f"--threads must be at least 1 (got {threads})" in line
    assert not (tmp_path / "out").exists()


def test_threads_far_above_the_cpu_count_are_refused(model, tmp_path):
    line = refusal("run", model, "--plugins", "fuse", "--output-dir", tmp_path / "out", "--threads", "10000")
    cores = cpu_count()
    assert f"--threads 10000 is far above this machine's {cores} CPUs" in line
    assert f"at most {THREADS_HARD_CAP * cores} accepted" in line


def test_threads_above_the_cpu_count_run_with_a_warning(model, tmp_path):
    threads = cpu_count() + 1
    code, output = edgeplug(
        "run", model, "--plugins", "fuse", "--output-dir", tmp_path / "out", "--threads", threads
    )
    assert code == 0, output
    assert f"edgeplug: warning: --threads {threads} is above this machine's {cpu_count()} CPUs" in output


# -- declared sizes against the memory available ---------------------------------------------------------
def test_a_dimension_of_2_31_does_not_allocate_the_generated_inputs(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2**31])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2**31])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "wide.onnx")
    done = limited("run", "wide.onnx", "--plugins", "fuse", "--output-dir", "out", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "edgeplug: error: generated inputs would take 128.0 GiB (16 samples of x 1x2147483648"
    )
    assert "--input-shapes" in line and "--data" in line


def external_model(folder: Path, declared: int, file_bytes: int) -> Path:
    """A model of a few bytes whose one weight declares `declared` bytes in w.bin (sparse, `file_bytes`)."""
    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[declared // 4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(declared))):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [declared // 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [declared // 4])],
        [weight],
    )
    path = folder / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with open(folder / "w.bin", "wb") as fh:
        fh.truncate(file_bytes)  # sparse: costs no disk
    return path


def test_external_data_larger_than_memory_is_refused_before_loading(tmp_path):
    six_gib = 6 * 2**30
    path = external_model(tmp_path, six_gib, six_gib)
    assert path.stat().st_size < 200
    done = limited("run", path.name, "--plugins", "fuse", "--output-dir", "out", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert f"big.onnx declares {six_gib:,} bytes of external data" in line
    assert "needs more memory than this machine has available (6.0 GiB needed" in line
    assert not (tmp_path / "out" / "big.onnx").exists()


def test_external_data_declaring_more_than_its_file_holds_is_refused(tmp_path):
    path = external_model(tmp_path, 2**36, 100)
    line = refusal("inspect", path)
    assert f"declares {2**36:,} bytes at offset 0 of w.bin, which holds 100 bytes" in line


# -- a killed bench ----------------------------------------------------------------------------------------
def never_ending(path: Path) -> Path:
    """A Loop of 2**62 iterations: runs at 100% CPU for ever."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "c", "x"], ["y"], body=body)],
        "forever",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [
            helper.make_tensor("M", TensorProto.INT64, [], [2**62]),
            helper.make_tensor("c", TensorProto.BOOL, [], [True]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def start_bench(model: Path) -> tuple[subprocess.Popen[str], psutil.Process]:
    """`edgeplug bench MODEL` as a process, and its measuring child once that runs."""
    parent = subprocess.Popen(
        [sys.executable, "-m", "edgeplug", "bench", str(model), "--runs", "1", "--warmup", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        children = psutil.Process(parent.pid).children(recursive=True)
        if children and "edgeplug.bench" in " ".join(children[0].cmdline()):
            return parent, children[0]
        assert parent.poll() is None, parent.stderr.read()
        time.sleep(0.1)
    parent.kill()
    raise AssertionError("the measuring child did not start")


def gone(process: psutil.Process, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_bench_stops_its_measuring_child(tmp_path, sig):
    parent, child = start_bench(never_ending(tmp_path / "forever.onnx"))
    try:
        time.sleep(1.0)
        assert child.cpu_percent(interval=0.5) > 20  # it really is measuring
        os.kill(parent.pid, sig)
        stderr = parent.communicate(timeout=60)[1]
        assert gone(child), "the measuring child outlived edgeplug bench"
        if sig == signal.SIGTERM:
            assert parent.returncode == 128 + signal.SIGTERM and stderr.strip() == "edgeplug: terminated"
    finally:
        for process in (parent,):
            if process.poll() is None:
                process.kill()
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def test_bench_timeout_stops_a_model_that_never_ends(tmp_path):
    model = never_ending(tmp_path / "forever.onnx")
    start = time.monotonic()
    line = refusal("bench", model, "--runs", "1", "--warmup", "0", "--timeout", "2")
    assert "did not finish within 2 s" in line
    assert time.monotonic() - start < 60
    assert not [
        p for p in psutil.Process().children(recursive=True) if "edgeplug.bench" in " ".join(p.cmdline())
    ]
