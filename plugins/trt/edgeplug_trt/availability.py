"""Whether TensorRT can build and run here: the tensorrt package, an NVIDIA GPU, and cuda-python."""

from __future__ import annotations

import glob
import importlib.util
import shutil
import subprocess
from typing import Any

INSTALL = "pip install tensorrt --extra-index-url https://pypi.nvidia.com"


def has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def cudart() -> Any:
    """cuda-python's runtime module (`cuda.bindings.runtime` in cuda-python >= 12.6, `cuda.cudart` before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # type: ignore[no-redef]
    return runtime


def has_cuda_python() -> bool:
    try:
        cudart()
    except ImportError:
        return False
    return True


def gpu_count() -> int:
    """NVIDIA GPUs visible: cuda-python's cudaGetDeviceCount when installed, else nvidia-smi / /dev/nvidia*."""
    if has_cuda_python():
        err, count = cudart().cudaGetDeviceCount()
        return int(count) if int(err) == 0 else 0
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            out = None
        if out is not None and out.returncode == 0:
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return len([p for p in glob.glob("/dev/nvidia[0-9]*") if p[len("/dev/nvidia") :].isdigit()])


def missing() -> str | None:
    """One sentence saying what is missing for building and running engines, or None when all is there."""
    trt, gpus = has_tensorrt(), gpu_count()
    if not trt and not gpus:
        return (
            "trt: neither the tensorrt package nor an NVIDIA GPU is available here; TensorRT needs an NVIDIA "
            f"GPU with its driver and is installed from NVIDIA's package index: {INSTALL}"
        )
    if not trt:
        return (
            f"trt: the tensorrt package is not installed; install it from NVIDIA's package index: {INSTALL}"
        )
    if not gpus:
        return (
            "trt: no NVIDIA GPU is visible (cudaGetDeviceCount/nvidia-smi/dev/nvidia* find none), and "
            f"TensorRT builds and runs engines only on one; run on a GPU machine with TensorRT ({INSTALL})"
        )
    if not has_cuda_python():
        return (
            "trt: cuda-python, which runs the built engine for verification, is not installed; "
            "install it with: pip install cuda-python"
        )
    return None
