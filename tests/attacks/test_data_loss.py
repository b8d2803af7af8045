"""Issue 15, item 6: no run writes over one of its inputs, a refused run writes nothing, runs into one
folder do not mix their files, and a killed or disk-full run leaves no temporary files behind.

Each test is an attack: the command a careless or hostile user types, the exit code and the sentence it
must get, and the bytes of every input compared before and after."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug import model as model_module
from edgeplug.cli import main
from edgeplug.output_dir import LOCK_NAME, OutputFolder
from onnx import TensorProto, helper, numpy_helper

from ..conftest import conv_net, registered
from ..core.plugins_for_tests import Tag


def edgeplug(*args: object) -> tuple[int, str]:
    """`edgeplug ARGS` in this process: exit code and everything it printed."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def refusal(*args: object) -> str:
    """The one `edgeplug: error:` line of a command that must exit 2."""
    code, output = edgeplug(*args)
    lines = [line for line in output.splitlines() if line.startswith("edgeplug: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tags():
    with registered((Tag("a"), "tag_a"), (Tag("b"), "tag_b")):
        yield


@pytest.fixture
def finished(tmp_path: Path, tags) -> Path:
    """out/ after a good run: m.onnx, its sidecar, report.json and steps/."""
    model = tmp_path / "m.onnx"
    onnx.save(conv_net(), model)
    code, output = edgeplug("run", model, "--plugins", "tag_a", "--output-dir", tmp_path / "out", "--quiet")
    assert code == 0, output
    return tmp_path / "out"


def test_report_json_given_as_the_model_is_refused_and_kept(finished):
    before = snapshot(finished)
    line = refusal("run", finished / "report.json", "--plugins", "tag_a", "--output-dir", finished)
    assert "would replace the input model" in line and "report.json" in line
    assert snapshot(finished) == before


def test_output_folder_holding_the_model_is_refused_without_touching_its_report(finished):
    before = snapshot(finished)
    line = refusal("run", finished / "m.onnx", "--plugins", "tag_a", "--output-dir", finished)
    assert "would replace the input model" in line
    assert snapshot(finished) == before  # report.json included: a refused run writes nothing


@pytest.mark.parametrize(
    ("flag", "name"),
    [("--data", "report.json"), ("--calibration-data", "m.edgeplug.json"), ("--config", "report.html")],
)
def test_an_input_file_that_is_an_output_is_refused(finished, tmp_path, flag, name):
    model = tmp_path / "m.onnx"
    (finished / "report.html").write_text("# an empty TOML file is a valid config\n")
    before = snapshot(finished)
    line = refusal("run", model, "--plugins", "tag_a", "--output-dir", finished, flag, finished / name)
    assert f"would replace {flag} {finished / name}" in line
    assert snapshot(finished) == before


def test_a_hard_link_to_the_model_under_an_output_name_is_refused(tmp_path, tags):
    model = tmp_path / "m.onnx"
    onnx.save(conv_net(), model)
    out = tmp_path / "out"
    out.mkdir()
    os.link(model, out / "report.json")  # same inode, another name: compared by inode
    line = refusal("run", model, "--plugins", "tag_a", "--output-dir", out)
    assert "would replace the input model" in line
    assert onnx.load(str(model)).graph.name == "conv_net"


def test_external_data_of_the_model_is_an_input(tmp_path, tags):
    """The model's weights live in o/report.json (a legal location inside its folder); --output-dir o."""
    folder = tmp_path / "d"
    (folder / "o").mkdir(parents=True)
    proto = conv_net()
    onnx.save_model(
        proto,
        str(folder / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="o/report.json",
        size_threshold=0,
    )
    before = snapshot(folder)
    line = refusal("run", folder / "m.onnx", "--plugins", "tag_a", "--output-dir", folder / "o")
    assert "external data of the input model" in line
    assert snapshot(folder) == before


def test_a_model_inside_the_steps_folder_is_refused(finished):
    before = snapshot(finished)
    step = finished / "steps" / "01-tag_a.onnx"
    assert step.exists()
    line = refusal("run", step, "--plugins", "tag_a", "--output-dir", finished)
    assert "steps" in line and "rewrites" in line
    assert snapshot(finished) == before


def test_the_data_folder_as_the_output_folder_is_refused(tmp_path, tags):
    model = tmp_path / "m.onnx"
    onnx.save(conv_net(), model)
    data = tmp_path / "npy"
    data.mkdir()
    np.save(data / "x.npy", np.zeros((4, 3, 8, 8), np.float32))
    before = snapshot(data)
    line = refusal("run", model, "--plugins", "tag_a", "--data", data, "--output-dir", data)
    assert f"--output-dir {data} is the --data folder" in line
    assert snapshot(data) == before
    # a folder below it is not the data (only .npy files at its top are read): `--data .` keeps working
    assert edgeplug("run", model, "--plugins", "tag_a", "--data", data, "--output-dir", data / "out")[0] == 0


def test_a_second_run_does_not_keep_the_first_runs_step_files(tmp_path, tags):
    model = tmp_path / "m.onnx"
    onnx.save(conv_net(), model)
    out = tmp_path / "out"
    assert edgeplug("run", model, "--plugins", "tag_a,tag_b", "--output-dir", out, "--quiet")[0] == 0
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["01-tag_a.onnx", "02-tag_b.onnx"]
    assert edgeplug("run", model, "--plugins", "tag_b", "--output-dir", out, "--quiet")[0] == 0
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["01-tag_b.onnx"]
    report = json.loads((out / "report.json").read_text())
    assert [s["plugin"] for s in report["steps"]] == ["tag_b"]


def test_a_folder_another_run_holds_is_refused(tmp_path, tags):
    """Another process holds out/.edgeplug.lock (as a running `edgeplug run` does)."""
    model = tmp_path / "m.onnx"
    onnx.save(conv_net(), model)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        line = refusal("run", model, "--plugins", "tag_a", "--output-dir", out)
        assert f"another edgeplug run (process {holder.pid}) is writing to {out}" in line
        assert not (out / "report.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert edgeplug("run", model, "--plugins", "tag_a", "--output-dir", out, "--quiet")[0] == 0
    assert not (out / LOCK_NAME).exists()  # released at the end of the run


def test_two_claims_in_one_process_share_the_lock_only_within_one_thread(tmp_path):
    import threading

    out = tmp_path / "out"
    with OutputFolder.for_run(out, "m"), OutputFolder.for_run(out, "m"):  # the CLI, then the pipeline
        errors: list[BaseException] = []

        def other() -> None:
            try:
                OutputFolder.for_run(out, "m").claim()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert errors and "another run in this process" in str(errors[0])
        assert (out / LOCK_NAME).exists()
    assert not (out / LOCK_NAME).exists()


def test_temporary_files_of_a_killed_run_are_removed_by_the_next(finished, tmp_path):
    stale = [
        finished / ".m.onnx.tmp-99999",
        finished / ".report.json.tmp-4242",
        finished / "steps" / ".x.tmp-7",
    ]
    for path in stale:
        path.write_bytes(b"partial")
    assert (
        edgeplug("run", tmp_path / "m.onnx", "--plugins", "tag_a", "--output-dir", finished, "--quiet")[0]
        == 0
    )
    assert not [p for p in stale if p.exists()]


def test_a_full_disk_is_one_sentence_and_leaves_no_temporary_file(tmp_path, tags, monkeypatch):
    model = tmp_path / "m.onnx"
    onnx.save(conv_net(), model)
    out = tmp_path / "out"

    write = model_module._write_file

    def full_disk(path: Path, data: bytes) -> None:
        if not path.is_relative_to(out):  # only the output folder's disk is full
            return write(path, data)
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(model_module, "_write_file", full_disk)
    line = refusal("run", model, "--plugins", "tag_a", "--output-dir", out)
    assert "the disk is full" in line and str(out) in line
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert json.loads((out / "report.json").read_text())["status"] == "failed"  # the report, as it could


SLOW_RUN = """
import sys, time
from pathlib import Path
import edgeplug
from edgeplug import hookimpl
from edgeplug.cli import main

MARKER = Path(sys.argv[1])


class Slow:
    @hookimpl
    def transform_graph(self, model, ctx):
        MARKER.write_text("started")
        time.sleep(60)

edgeplug.load_plugins().register(Slow(), name="slow")
sys.argv = ["edgeplug", "run", sys.argv[2], "--plugins", "slow", "--output-dir", sys.argv[3], "--quiet"]
main()
"""


def test_a_terminated_run_writes_its_report_and_leaves_no_temporary_file(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(conv_net(), model)
    out, marker = tmp_path / "out", tmp_path / "started"
    script = tmp_path / "slow_run.py"
    script.write_text(textwrap.dedent(SLOW_RUN))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker), str(model), str(out)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        (out / ".m.onnx.tmp-1").write_bytes(b"stale")  # and one left by an earlier killed run
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "edgeplug: terminated"
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "Terminated" in report["error"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or p.name == LOCK_NAME]


def test_an_output_that_is_a_symlink_is_replaced_not_written_through(tmp_path, tags):
    """out/report.json -> /dev/null: the run replaces the link and never writes through it."""
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null")
    model = tmp_path / "m.onnx"
    onnx.save(conv_net(), model)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink("/dev/null", out / "report.json")  # a symlink is replaced, never followed: allowed
    assert edgeplug("run", model, "--plugins", "tag_a", "--output-dir", out, "--quiet")[0] == 0
    assert Path("/dev/null").is_char_device() and (out / "report.json").is_file()


def test_model_save_removes_its_temporary_file_when_the_write_fails(tmp_path, monkeypatch):
    proto = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
            [numpy_helper.from_array(np.ones(2, np.float32), "w")],
        )
    )

    def broken(path: Path, data: bytes) -> None:
        path.write_bytes(data[:3])
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(model_module, "_write_file", broken)
    with pytest.raises(model_module.OutputError, match="read-only file system"):
        model_module.Model(proto).save(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
