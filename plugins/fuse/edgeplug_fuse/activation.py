"""Conv + activation -> onnxruntime's com.microsoft FusedConv (target=onnxruntime only).

onnxruntime's CPU FusedConv (contrib_ops/cpu/fused_activation.cc) accepts `activation` Relu, Tanh and
Sigmoid without parameters, LeakyRelu with activation_params [alpha], Clip with [min, max] and
HardSigmoid with [alpha, beta]; its kernel is float32 only.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from .patterns import constant, is_omitted, is_rewritable, move_output, nodes_of, sole_consumer

DOMAIN = "com.microsoft"
ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid", "Clip")
FLOAT_MAX = float(np.finfo(np.float32).max)


def activation_params(node: gs.Node) -> list[float] | None:
    """FusedConv's activation_params for `node`, [] for parameterless ones, None when it cannot fuse."""
    if node.op in ("Relu", "Tanh", "Sigmoid"):
        return []
    if node.op == "LeakyRelu":
        return [float(node.attrs.get("alpha", 0.01))]
    if node.op == "HardSigmoid":
        return [float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))]
    if node.op == "Clip":
        if "min" in node.attrs or "max" in node.attrs:  # opset < 11: attributes
            return [float(node.attrs.get("min", -FLOAT_MAX)), float(node.attrs.get("max", FLOAT_MAX))]
        bounds = []
        for index, default in ((1, -FLOAT_MAX), (2, FLOAT_MAX)):
            if len(node.inputs) <= index or is_omitted(node.inputs[index]):
                bounds.append(default)
                continue
            value = constant(node.inputs[index])
            if value is None or value.size != 1:
                return None
            bounds.append(float(value.reshape(-1)[0]))
        return bounds
    return None


def fuse_conv_activations(graph: gs.Graph) -> Counter[str]:
    """Replace Conv -> activation pairs by one FusedConv writing the activation's output; counts per op."""
    fused: Counter[str] = Counter()
    for conv in nodes_of(graph, "Conv"):
        weights = constant(conv.inputs[1])
        if weights is None or weights.dtype != np.float32:
            continue
        act = sole_consumer(graph, conv.outputs[0])
        if act is None or not is_rewritable(graph, act, *ACTIVATIONS) or act.inputs[0] is not conv.outputs[0]:
            continue
        params = activation_params(act)
        if params is None:
            continue
        attrs = dict(conv.attrs)
        attrs["activation"] = act.op
        if params:
            attrs["activation_params"] = params
        node = gs.Node(
            "FusedConv", name=conv.name, domain=DOMAIN, attrs=attrs, inputs=list(conv.inputs), outputs=[]
        )
        graph.nodes.append(node)
        conv.inputs.clear()
        conv.outputs.clear()
        act.inputs.clear()
        move_output(act, node)
        fused[act.op] += 1
    return fused
