"""Keep excluded Conv/Gemm nodes really in float at run time.

onnxruntime (1.20+) runs a graph optimization, WeightBiasQuantization, that quantizes the float weight of any
Conv, ConvTranspose or Gemm whose first input comes from a per-tensor DequantizeLinear, to per-tensor INT8. A
node excluded from quantization in a QDQ model usually has such an input (its producer's output is quantized
for other consumers), so it would be quantized anyway, per tensor, at session load. We feed excluded nodes the
float tensor in front of the QuantizeLinear instead; when the quantizer had folded a Relu/Clip into that
QuantizeLinear, the activation is recomputed in float for the excluded node.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

REQUANTIZED_BY_ORT = ("Conv", "ConvTranspose", "Gemm")
FOLDED_ACTIVATIONS = ("Relu", "Clip")


def detach_from_dequantize(
    quantized: onnx.ModelProto, original: onnx.ModelProto, nodes: Sequence[str]
) -> list[str]:
    """Rewire the first input of the named Conv/Gemm nodes from DQ(Q(x)) to float x (in place on `quantized`).
    Returns the nodes rewired."""
    wanted = set(nodes)
    made = {out: n for n in quantized.graph.node for out in n.output}
    before = {out: n for n in original.graph.node for out in n.output}
    have = {t.name for t in quantized.graph.initializer} | {i.name for i in quantized.graph.input} | set(made)
    float_inits = {t.name: t for t in original.graph.initializer}
    rewired: list[str] = []
    out_nodes: list[onnx.NodeProto] = []
    for node in quantized.graph.node:
        if node.name in wanted and node.op_type in REQUANTIZED_BY_ORT and node.input:
            dq = made.get(node.input[0])
            q = made.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                source = q.input[0]
                act = before.get(source)
                now = made.get(source)
                if (
                    act is not None
                    and act.op_type in FOLDED_ACTIVATIONS
                    and (now is None or now.op_type != act.op_type)
                ):
                    # the quantizer removed this activation (the QuantizeLinear clamps instead): redo it in float
                    redo = onnx.NodeProto()
                    redo.CopyFrom(act)
                    redo.name = f"{act.name}_float_for_{node.name}"
                    redo.input[0] = source
                    del redo.output[:]
                    redo.output.append(f"{source}_float_for_{node.name}")
                    for extra in list(redo.input)[1:]:
                        if extra and extra not in have and extra in float_inits:
                            quantized.graph.initializer.append(float_inits[extra])
                            have.add(extra)
                    out_nodes.append(redo)
                    source = redo.output[0]
                node.input[0] = source
                rewired.append(node.name)
        out_nodes.append(node)
    del quantized.graph.node[:]
    quantized.graph.node.extend(out_nodes)
    return rewired


def float_in_place(
    quantized: onnx.ModelProto, original: onnx.ModelProto, nodes: Sequence[str]
) -> onnx.ModelProto:
    """A copy of `quantized` in which the named nodes compute in float again, without quantizing anew: each
    input that comes from a DequantizeLinear is fed what the float model feeds it (the float tensor in front
    of the activation's QuantizeLinear; the original weight and bias initializers), and the quantizers left
    without a consumer are dropped. The sensitivity search of a recipe whose every build is expensive (NNCF's
    bias correction: ~15 s per MobileNetV2 build) ranks and keeps nodes this way; the other layers keep their
    calibration, as they would not if the model were quantized again with the node excluded."""
    result = onnx.ModelProto()
    result.CopyFrom(quantized)
    graph = result.graph
    wanted = set(nodes)
    made = {out: n for n in graph.node for out in n.output}
    before = {n.name: n for n in original.graph.node if n.name}
    inits = {t.name for t in graph.initializer}
    float_inits = {t.name: t for t in original.graph.initializer}
    for node in graph.node:
        source = before.get(node.name)
        if node.name not in wanted or source is None or len(source.input) != len(node.input):
            continue
        for index, name in enumerate(node.input):
            dq = made.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = made.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]  # an activation: the float tensor before its quantizer
            elif source.input[index] in float_inits:  # a weight or bias: the float model's initializer
                if source.input[index] not in inits:
                    graph.initializer.append(float_inits[source.input[index]])
                    inits.add(source.input[index])
                node.input[index] = source.input[index]
    return drop_unused(result)


def drop_unused(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without nodes whose outputs nothing reads and initializers nothing reads (subgraphs
    included): onnx-graphsurgeon's cleanup."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.cleanup()
    cleaned = gs.export_onnx(graph)
    cleaned.ir_version = model.ir_version
    del cleaned.metadata_props[:]
    cleaned.metadata_props.extend(model.metadata_props)
    return cleaned
