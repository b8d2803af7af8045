"""The core's built-in behaviour, registered as the plugin `core` through the same hooks as any other:
loading .onnx files, writing the .onnx as the default artifact, the onnxruntime runner, and the
innermost `guard_inference` that runs the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .context import Artifact, InferenceRequest, InferenceResult, RunContext, Runner
from .errors import ModelError
from .hookspecs import hookimpl
from .model import Model, is_keras_path
from .runtime import run_all, session


@hookimpl(trylast=True)
def load_model(path: Path, ctx: RunContext) -> Model | None:
    if is_keras_path(path):
        raise ModelError(
            f"{path} is a Keras model; select a plugin that trains and exports it (quant for QAT, "
            "prune for training-time pruning), e.g. --plugins quant"
        )
    return Model.load(path, ctx.options.get("input_shapes"))


@hookimpl(trylast=True)
def compile(model: Model, ctx: RunContext) -> Artifact:
    target = ctx.workdir / ctx.options.get("filename", "model.onnx")
    model.save(target)
    return Artifact.of("onnx", [target])


@hookimpl(trylast=True)
def make_runner(artifact: Artifact, options: dict[str, Any]) -> Runner | None:
    if artifact.kind != "onnx":
        return None
    sess = session(artifact.main, int(options.get("threads", 1)))
    return lambda inputs: run_all(sess, [inputs])


@hookimpl(trylast=True)
def guard_inference(request: InferenceRequest) -> InferenceResult:
    return InferenceResult(request.run(request.inputs))
