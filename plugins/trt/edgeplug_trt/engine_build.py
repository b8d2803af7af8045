"""Build a serialized TensorRT engine from an ONNX file with the TensorRT 10 Python API.

trt.Builder -> create_network (explicit batch is the only mode in TensorRT 10; STRONGLY_TYPED for Q/DQ
models) -> trt.OnnxParser.parse_from_file -> BuilderConfig (workspace pool, FP16 flag, TF32 off unless
asked, optimization profile, timing cache) -> build_serialized_network. `tensorrt` is imported here only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeplug import PluginError

from .profiles import Profile


@dataclass
class BuildSettings:
    precision: str
    workspace_mb: int
    profile: Profile
    timing_cache: Path
    tf32: bool = False
    optimization_level: int = 3

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "workspace_mb": self.workspace_mb,
            "profile": self.profile.as_dict(),
            "timing_cache": str(self.timing_cache),
            "tf32": self.tf32,
            "builder_optimization_level": self.optimization_level,
        }


@dataclass
class BuildResult:
    engine: Path
    seconds: float
    tensorrt_version: str
    network_flags: list[str]
    builder_flags: list[str]
    timing_cache_reused: bool
    log: list[str] = field(default_factory=list)


def _logger(trt: Any, lines: list[str]) -> Any:
    """A trt.ILogger keeping every message (INFO and above) for the build log."""
    names = {
        trt.Logger.INTERNAL_ERROR: "INTERNAL_ERROR",
        trt.Logger.ERROR: "ERROR",
        trt.Logger.WARNING: "WARNING",
        trt.Logger.INFO: "INFO",
        trt.Logger.VERBOSE: "VERBOSE",
    }

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity != trt.Logger.VERBOSE:
                lines.append(f"[{names.get(severity, severity)}] {msg}")

    return CollectingLogger()


def _parser_error(error: Any) -> str:
    """One parser error with its node, as TensorRT 10's ParserError exposes it."""
    parts = []
    for attr in ("node_name", "node_operator"):
        getter = getattr(error, attr, None)
        if callable(getter) and getter():
            parts.append(str(getter()))
    desc = error.desc() if callable(getattr(error, "desc", None)) else str(error)
    where = f" (node {' '.join(parts)})" if parts else ""
    return f"{desc}{where}"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_engine(onnx_path: Path, settings: BuildSettings, engine_path: Path) -> BuildResult:
    """Parse, configure and build; PluginError with the parser's or builder's own words on failure."""
    import tensorrt as trt

    lines: list[str] = []
    logger = _logger(trt, lines)
    builder = trt.Builder(logger)
    network_flags: list[str] = []
    flags = 0
    strongly_typed = settings.precision == "int8" and hasattr(
        trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"
    )
    if strongly_typed:
        # Explicit quantization: the Q/DQ nodes decide where INT8 runs; no precision builder flags.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network_flags.append("STRONGLY_TYPED")
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(str(onnx_path))
    if not parsed or parser.num_errors:
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errors[0] if errors else "no error reported"
        raise BuildFailure(
            f"trt: TensorRT's ONNX parser rejected the model: {first}"
            + (f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""),
            lines + errors,
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb * (1 << 20))
    config.builder_optimization_level = settings.optimization_level
    builder_flags: list[str] = []
    if settings.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        builder_flags.append("FP16")
    elif settings.precision == "int8" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)  # weakly typed Q/DQ network on an older TensorRT
        builder_flags.append("INT8")
    if settings.tf32:
        builder_flags.append("TF32")
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # keep FP32 layers in FP32 (TF32 is on by default)

    if settings.profile.dynamic:
        profile = builder.create_optimization_profile()
        for name, (mn, op, mx) in settings.profile.shapes.items():
            profile.set_shape(name, mn, op, mx)
        if config.add_optimization_profile(profile) < 0:
            raise BuildFailure(
                f"trt: TensorRT refused the optimization profile {settings.profile.as_dict()['inputs']}",
                lines,
            )

    cache_bytes = settings.timing_cache.read_bytes() if settings.timing_cache.is_file() else b""
    reused = False
    if cache_bytes:
        try:
            cache = config.create_timing_cache(cache_bytes)
            reused = bool(config.set_timing_cache(cache, ignore_mismatch=False))
        except (RuntimeError, TypeError, ValueError):
            reused = False
    if cache_bytes and not reused:
        lines.append(
            f"[edgeplug] timing cache {settings.timing_cache} does not match this device/TensorRT; "
            "starting a new one"
        )
    if not reused:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        errors = [line for line in lines if line.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]
        raise BuildFailure(
            "trt: TensorRT could not build the engine: "
            + (errors[-1] if errors else "build_serialized_network returned None"),
            lines,
        )
    _write(engine_path, bytes(serialized))
    settings.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    _write(settings.timing_cache, bytes(config.get_timing_cache().serialize()))
    return BuildResult(engine_path, seconds, trt.__version__, network_flags, builder_flags, reused, lines)


class BuildFailure(PluginError):
    """A parse or build failure; `log` holds TensorRT's messages for the build log."""

    def __init__(self, message: str, log: list[str]) -> None:
        super().__init__(message)
        self.log = log
