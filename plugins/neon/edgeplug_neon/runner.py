"""Run the generated C: the host library through ctypes, the aarch64 driver under qemu."""

from __future__ import annotations

import ctypes
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import toolchain


class HostLibrary:
    """ctypes binding of `edgeplug_model_run_v` in a host shared library; one scratch buffer per instance."""

    def __init__(self, path: Path, io: dict[str, Any]) -> None:
        self.lib = ctypes.CDLL(str(Path(path).resolve()))
        self.fn = self.lib.edgeplug_model_run_v
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self.io = io
        self.scratch = np.zeros(int(io["scratch_bytes"]) + 64, np.uint8)
        offset = (-self.scratch.ctypes.data) % 64
        self.scratch_ptr = self.scratch.ctypes.data + offset

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ins = [
            np.ascontiguousarray(inputs[t["name"]], dtype=np.float32).reshape(t["shape"])
            for t in self.io["inputs"]
        ]
        outs = [np.empty(t["shape"], np.float32) for t in self.io["outputs"]]
        in_ptrs = (ctypes.c_void_p * len(ins))(*[a.ctypes.data for a in ins])
        out_ptrs = (ctypes.c_void_p * len(outs))(*[a.ctypes.data for a in outs])
        rc = self.fn(in_ptrs, out_ptrs, ctypes.c_void_p(self.scratch_ptr))
        if rc != 0:
            raise RuntimeError(f"edgeplug_model_run returned {rc}")
        return {t["name"]: a for t, a in zip(self.io["outputs"], outs)}


def run_host(
    path: Path, io: dict[str, Any], samples: Sequence[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Every sample through the host library, outputs concatenated along the batch axis."""
    lib = HostLibrary(path, io)
    collected: dict[str, list[np.ndarray]] = {t["name"]: [] for t in io["outputs"]}
    for sample in samples:
        for name, value in lib(sample).items():
            collected[name].append(value)
    return {k: np.concatenate(v, axis=0) for k, v in collected.items()}


def run_qemu(
    tc: toolchain.Toolchain, driver: Path, io: dict[str, Any], samples: Sequence[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """All samples through the aarch64 driver in one qemu process (binary files in, binary files out)."""
    with tempfile.TemporaryDirectory(prefix="edgeplug-neon-") as tmp:
        src, dst = Path(tmp) / "inputs.bin", Path(tmp) / "outputs.bin"
        with open(src, "wb") as fh:
            for sample in samples:
                for t in io["inputs"]:
                    fh.write(np.ascontiguousarray(sample[t["name"]], dtype=np.float32).tobytes())
        toolchain.run_qemu(tc, driver, src, dst)
        flat = np.fromfile(dst, dtype=np.float32)
    sizes = [int(np.prod(t["shape"])) for t in io["outputs"]]
    per = sum(sizes)
    if flat.size != per * len(samples):
        raise RuntimeError(f"the aarch64 driver wrote {flat.size} floats, expected {per * len(samples)}")
    flat = flat.reshape(len(samples), per)
    result, start = {}, 0
    for t, size in zip(io["outputs"], sizes):
        block = flat[:, start : start + size].reshape(len(samples), *t["shape"])
        result[t["name"]] = np.concatenate(list(block), axis=0)
        start += size
    return result
