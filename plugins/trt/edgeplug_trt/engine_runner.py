"""Run a serialized TensorRT engine on numpy inputs: TensorRT 10's name-based tensor API
(num_io_tensors, get_tensor_name/mode, set_input_shape, set_tensor_address, execute_async_v3) with
device memory and a stream from cuda-python's runtime (cudaMalloc / cudaMemcpyAsync)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
from edgeplug import DataError, MissingDependencyError, PluginError

from . import availability


def _check(result: Any) -> Any:
    """cuda-python returns (err, *values); raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise PluginError(f"trt: CUDA runtime call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


class EngineRunner:
    """One engine, one execution context, one stream; device buffers grow as inputs need."""

    def __init__(self, engine_path: Path) -> None:
        problem = availability.missing()
        if problem:
            raise MissingDependencyError(problem)
        import tensorrt as trt

        self.trt = trt
        self.cudart = availability.cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise PluginError(
                f"trt: {engine_path} could not be deserialized (built by another TensorRT version or GPU?)"
            )
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _device(self, name: str, nbytes: int) -> int:
        pointer, capacity = self.buffers.get(name, (0, 0))
        if nbytes > capacity:
            if pointer:
                _check(self.cudart.cudaFree(pointer))
            pointer = int(_check(self.cudart.cudaMalloc(max(nbytes, 1))))
            self.buffers[name] = (pointer, nbytes)
        return pointer

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, rt = self.trt, self.cudart
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise DataError(f"trt: the engine needs inputs {', '.join(missing)}")
        hosts = {}
        for name in self.inputs:
            array = np.ascontiguousarray(feed[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            if not self.context.set_input_shape(name, tuple(array.shape)):
                mn, _, mx = self.engine.get_tensor_profile_shape(name, 0)
                raise DataError(
                    f"trt: input {name!r} of shape {list(array.shape)} is outside the engine's "
                    f"profile (min {list(mn)}, max {list(mx)})"
                )
            hosts[name] = array
            pointer = self._device(name, array.nbytes)
            _check(
                rt.cudaMemcpyAsync(
                    pointer,
                    array.ctypes.data,
                    array.nbytes,
                    rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    self.stream,
                )
            )
            self.context.set_tensor_address(name, pointer)
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise PluginError(
                    f"trt: output {name!r} has a data-dependent shape {list(shape)}, which this "
                    "runner does not support"
                )
            out = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, self._device(name, out.nbytes))
            results[name] = out
        if not self.context.execute_async_v3(int(self.stream)):
            raise PluginError("trt: execute_async_v3 failed; see TensorRT's log above")
        for name, out in results.items():
            _check(
                rt.cudaMemcpyAsync(
                    out.ctypes.data,
                    self.buffers[name][0],
                    out.nbytes,
                    rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                    self.stream,
                )
            )
        _check(rt.cudaStreamSynchronize(self.stream))
        return results

    def close(self) -> None:
        for pointer, _ in self.buffers.values():
            self.cudart.cudaFree(pointer)
        self.buffers.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have unloaded cuda-python
            self.close()
