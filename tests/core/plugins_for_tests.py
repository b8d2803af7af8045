"""Small real plugins used by the core tests: they edit the graph through the public contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
from edgeplug import Artifact, Model, Option, PluginError, RunContext, hookimpl
from edgeplug.context import Runner
from edgeplug.model import get_metadata, set_metadata
from onnx import numpy_helper


class Tag:
    """Appends its name to the `order` metadata entry: shows the order steps ran in."""

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def transform_graph(self, model: Model, ctx: RunContext) -> Model:
        proto = model.copy_proto()
        before = get_metadata(proto, "order")
        set_metadata(proto, "order", f"{before},{self.name}" if before else self.name)
        return model.replace(proto)


class ScaleWeights:
    """Multiplies every float initializer by `factor`: a transform that changes the outputs when factor != 1."""

    @hookimpl
    def plugin_options(self) -> list[Option]:
        return [Option("factor", "float", 1.0, "multiply float weights by this")]

    @hookimpl
    def transform_graph(self, model: Model, ctx: RunContext) -> Model:
        proto = model.copy_proto()
        for tensor in proto.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.dtype == np.float32:
                tensor.CopyFrom(
                    numpy_helper.from_array(array * np.float32(ctx.options["factor"]), tensor.name)
                )
        return model.replace(proto)


class NotApplicable:
    @hookimpl
    def transform_graph(self, model: Model, ctx: RunContext) -> None:
        return None


class Mutator:
    """Breaks the contract by editing the model it was given."""

    @hookimpl
    def transform_graph(self, model: Model, ctx: RunContext) -> Model:
        model.proto.doc_string = "mutated"
        return model.replace(model.copy_proto())


class Crasher:
    @hookimpl
    def transform_graph(self, model: Model, ctx: RunContext) -> Model:
        raise RuntimeError("boom")


class Refuse:
    """pre_optimize refuses models without a Conv."""

    @hookimpl
    def pre_optimize(self, model: Model, ctx: RunContext) -> None:
        if "Conv" not in model.op_histogram():
            raise PluginError("refuse: this plugin needs a model with a Conv node")


class TextFormat:
    """load_model for ONNX's textual syntax (`.onnxtxt`, parsed with onnx.parser)."""

    @hookimpl
    def load_model(self, path: Path, ctx: RunContext) -> Model | None:
        if path.suffix != ".onnxtxt":
            return None
        proto = onnx.parser.parse_model(path.read_text())
        return Model(proto, source=path).infer_shapes()


class ExternalData:
    """compile writes the model with its weights in a separate file; make_runner runs that artifact.
    With `offset` != 0 its runner adds a bias to every output, which verification must catch."""

    @hookimpl
    def plugin_options(self) -> list[Option]:
        return [Option("offset", "float", 0.0, "added to outputs by the runner (tests)")]

    @hookimpl
    def compile(self, model: Model, ctx: RunContext) -> Artifact:
        target = ctx.workdir / "external" / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(
            model.copy_proto(), target, save_as_external_data=True, location="weights.bin", size_threshold=0
        )
        return Artifact.of(
            "onnx-external", [target, target.with_name("weights.bin")], offset=ctx.options["offset"]
        )

    @hookimpl
    def make_runner(self, artifact: Artifact, options: dict) -> Runner | None:
        if artifact.kind != "onnx-external":
            return None
        from edgeplug.runtime import run_all, session

        sess = session(artifact.main)
        offset = np.float32(artifact.info["offset"])
        return lambda inputs: {k: v + offset for k, v in run_all(sess, [inputs]).items()}
