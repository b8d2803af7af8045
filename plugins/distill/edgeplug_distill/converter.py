"""ONNX to PyTorch with onnx2torch: lazy loading, the operators it lacks, and a module that returns every
graph output (plus the feature tensors asked for) as one tuple in graph order."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from edgeplug import MissingDependencyError, PluginError
from onnx import helper, numpy_helper

from .torchvision_shim import NEEDS_TORCHVISION, standing_in

ONNX2TORCH = "onnx2torch==1.5.15"
INSTALL_ONNX2TORCH = f"pip install --no-deps {ONNX2TORCH}"
INSTALL_TORCH = (
    "pip install torch (CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
)
SUFFIX_PRE = "::distill_pre"
SUFFIX_FEATURE = "::distill_feature"


def require_torch() -> Any:
    """The torch module, or MissingDependencyError saying what to install."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(f"distill needs PyTorch: {INSTALL_TORCH}") from None
    return torch


def load_onnx2torch() -> Any:
    """onnx2torch, imported once; its torchvision imports are met by stand-ins when torchvision is absent."""
    require_torch()
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    if importlib.util.find_spec("onnx2torch") is None:
        raise MissingDependencyError(
            f"distill converts models with onnx2torch: {INSTALL_ONNX2TORCH} "
            "(--no-deps: its metadata pulls torchvision, whose wheel breaks transformers here)"
        )
    try:
        if importlib.util.find_spec("torchvision") is None:
            with standing_in():
                import onnx2torch
        else:
            import onnx2torch
    except ImportError as exc:
        raise MissingDependencyError(
            f"onnx2torch does not import ({exc}); an installed torchvision that does not match torch breaks "
            f"it: pip uninstall torchvision, or install the torchvision built for torch "
            f"{sys.modules['torch'].__version__}"
        ) from None
    from . import extra_converters

    extra_converters.register(onnx2torch)
    return onnx2torch


def torchvision_missing() -> bool:
    return importlib.util.find_spec("torchvision") is None


def unsupported_operators(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """Operators of `proto` onnx2torch has no converter for: 'Op (opset N)' -> node names."""
    onnx2torch = load_onnx2torch()
    get_converter = onnx2torch.node_converters.get_converter
    opsets = {(imp.domain if imp.domain != "ai.onnx" else ""): imp.version for imp in proto.opset_import}
    missing: dict[str, list[str]] = {}
    for node in proto.graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        label = node.op_type if not domain else f"{domain}.{node.op_type}"
        version = opsets.get(domain)
        if version is None:
            missing.setdefault(f"{label} (no opset import for domain {domain!r})", []).append(node.name)
            continue
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            missing.setdefault(f"{label} (opset {version})", []).append(node.name)
            continue
        if node.op_type in NEEDS_TORCHVISION and not domain and torchvision_missing():
            missing.setdefault(f"{label} (needs torchvision, not installed)", []).append(node.name)
    return missing


def refuse_unsupported(proto: onnx.ModelProto) -> None:
    """PluginError naming every operator the converter cannot take, before any training."""
    missing = unsupported_operators(proto)
    if missing:
        parts = [f"{op} at node {nodes[0] or '(unnamed)'}" for op, nodes in sorted(missing.items())]
        raise PluginError(
            f"distill: the ONNX-to-PyTorch converter ({ONNX2TORCH}) has no converter for "
            f"{'; '.join(parts)}; distill cannot train this model (put distill before the step that "
            "introduced the operator, or export the model without it)"
        )


@dataclass
class Converted:
    """A torch module computing the model: positional inputs in `inputs` order, a tuple of `outputs`
    followed by `features` (tensors exposed for feature matching)."""

    module: Any
    inputs: list[str]
    outputs: list[str]
    features: list[str]

    def __call__(self, *args: Any) -> tuple[Any, ...]:
        result = self.module(*args)
        return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def prepared(proto: onnx.ModelProto, features: list[str]) -> onnx.ModelProto:
    """A copy onnx2torch converts faithfully: every graph output and feature produced by its own Identity
    node, so the module returns exactly one value per output, in order (onnx2torch merges the outputs of
    one node into one value), and Flatten at axis 0 or at the input's rank written as the Reshape it is
    (onnx2torch 1.5.15 computes those two cases wrongly: it flattens to 1-D, then fails)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    _flatten_edges_as_reshape(model)
    graph = model.graph
    for node in graph.node:
        if node.domain == "ai.onnx":
            node.domain = ""
    graph_inputs = {i.name for i in graph.input}
    renames = {}
    for out in graph.output:
        if out.name not in graph_inputs:
            renames[out.name] = out.name + SUFFIX_PRE
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for out in graph.output:
        source = renames.get(out.name, out.name)
        graph.node.append(helper.make_node("Identity", [source], [out.name], name=f"distill_out/{out.name}"))
    for name in features:
        source = renames.get(name, name)
        feature = name + SUFFIX_FEATURE
        graph.node.append(helper.make_node("Identity", [source], [feature], name=f"distill_feature/{name}"))
        graph.output.append(helper.make_empty_tensor_value_info(feature))
    return model


def _flatten_edges_as_reshape(model: onnx.ModelProto) -> None:
    graph = model.graph
    ranks = _ranks(model)
    for index, node in enumerate(graph.node):
        if node.op_type != "Flatten" or node.domain not in ("", "ai.onnx"):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        rank = ranks.get(node.input[0])
        if rank is not None and axis < 0:
            axis += rank
        if axis == 0:
            shape = [1, -1]
        elif rank is not None and axis == rank:
            shape = [-1, 1]
        else:
            continue
        target = f"{node.output[0]}::distill_shape"
        graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), target))
        reshape = helper.make_node("Reshape", [node.input[0], target], list(node.output), name=node.name)
        graph.node.remove(node)
        graph.node.insert(index, reshape)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a help here, not a requirement
        inferred = model
    graph = inferred.graph
    return {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*graph.value_info, *graph.input, *graph.output]
        if v.type.tensor_type.HasField("shape")
    }


def to_torch(proto: onnx.ModelProto, features: list[str] | None = None) -> Converted:
    """Convert `proto` (never modified) to a trainable torch module with onnx2torch."""
    onnx2torch = load_onnx2torch()
    refuse_unsupported(proto)
    features = list(features or [])
    prepared_proto = prepared(proto, features)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    try:
        module = onnx2torch.convert(prepared_proto)
    except NotImplementedError as exc:  # an operator variant the registry check could not see
        raise PluginError(f"distill: the converter ({ONNX2TORCH}) cannot take this model: {exc}") from None
    except Exception as exc:
        raise PluginError(
            f"distill: the converter ({ONNX2TORCH}) failed on this model: {type(exc).__name__}: {exc}"
        ) from None
    module.eval()  # converted BatchNorm starts in training mode
    return Converted(module, inputs, [o.name for o in proto.graph.output], features)
