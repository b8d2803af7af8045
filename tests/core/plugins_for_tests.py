"""Small real plugins used by the core tests: they edit the graph through the public contract."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from edgeplug import Model, Option, RunContext, hookimpl
from edgeplug.model import get_metadata, set_metadata


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
                tensor.CopyFrom(numpy_helper.from_array(array * np.float32(ctx.options["factor"]), tensor.name))
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
