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


def _float_source(
    quantized: onnx.ModelProto,
    q: onnx.NodeProto,
    consumer: str,
    made: dict[str, onnx.NodeProto],
    before: dict[str, onnx.NodeProto],
    have: set[str],
    float_inits: dict[str, onnx.TensorProto],
) -> tuple[str, onnx.NodeProto | None]:
    """The float tensor in front of the quantizer `q`, for the node `consumer`; when the quantizer had folded a
    Relu/Clip of the float model (the QuantizeLinear clamps instead), that activation redone in float (the
    node to insert is returned with it)."""
    source = q.input[0]
    act = before.get(source)  # the float model's producer of this tensor
    now = made.get(source)
    if (
        act is None
        or act.op_type not in FOLDED_ACTIVATIONS
        or (now is not None and now.op_type == act.op_type)
    ):
        return source, None
    redo = onnx.NodeProto()
    redo.CopyFrom(act)
    redo.name = f"{act.name}_float_for_{consumer}"
    redo.input[0] = source
    del redo.output[:]
    redo.output.append(f"{source}_float_for_{consumer}")
    for extra in list(redo.input)[1:]:
        if extra and extra not in have and extra in float_inits:
            quantized.graph.initializer.append(float_inits[extra])
            have.add(extra)
    return redo.output[0], redo


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
                source, redo = _float_source(quantized, q, node.name, made, before, have, float_inits)
                if redo is not None:
                    out_nodes.append(redo)
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
    of the activation's QuantizeLinear, with a Relu/Clip the quantizer folded redone in float; the original
    weight and bias initializers), and the quantizers left without a consumer are dropped. The sensitivity
    search of a recipe whose every build is expensive (NNCF's bias correction: ~15 s per MobileNetV2 build;
    GPTQ's rounding) ranks and keeps nodes this way; the other layers keep their calibration, as they would
    not if the model were quantized again with the node excluded."""
    result = onnx.ModelProto()
    result.CopyFrom(quantized)
    graph = result.graph
    wanted = set(nodes)
    made = {out: n for n in graph.node for out in n.output}
    before = {n.name: n for n in original.graph.node if n.name}
    before_out = {out: n for n in original.graph.node for out in n.output}
    inits = {t.name for t in graph.initializer}
    have = inits | {i.name for i in graph.input} | set(made)
    float_inits = {t.name: t for t in original.graph.initializer}
    out_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        source = before.get(node.name)
        if node.name not in wanted or source is None or len(source.input) != len(node.input):
            out_nodes.append(node)
            continue
        for index, name in enumerate(node.input):
            dq = made.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = made.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":  # an activation
                node.input[index], redo = _float_source(
                    result, q, node.name, made, before_out, have, float_inits
                )
                if redo is not None:
                    out_nodes.append(redo)
            elif source.input[index] in float_inits:  # a weight or bias: the float model's initializer
                original_name = source.input[index]
                # onnxruntime names a bias's DequantizeLinear output after the float bias: another name then
                target = f"{original_name}_float" if original_name in made else original_name
                if target not in inits:
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(float_inits[original_name])
                    tensor.name = target
                    graph.initializer.append(tensor)
                    inits.add(target)
                node.input[index] = target
        out_nodes.append(node)
    del graph.node[:]
    graph.node.extend(out_nodes)
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
