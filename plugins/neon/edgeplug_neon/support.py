"""Which ONNX operators the neon code generator supports, and the checks run before any code is made."""

from __future__ import annotations

from edgeplug import Model, PluginError

# ONNX op types that become C kernels (or vanish: aliases, constants, folded shape arithmetic).
KERNEL_OPS = frozenset(
    {
        "Conv",
        "Gemm",
        "MatMul",
        "Add",
        "Mul",
        "Relu",
        "Clip",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Flatten",
        "Reshape",
        "Concat",
        "Softmax",
        "QuantizeLinear",
        "DequantizeLinear",
        "Resize",
    }
)
# Ops that cost nothing at run time: views of their input, or constants folded at code generation.
FREE_OPS = frozenset({"Identity", "Dropout", "Squeeze", "Unsqueeze", "Constant", "Shape"})
SUPPORTED = KERNEL_OPS | FREE_OPS


def _static_tensors(model: Model) -> set[str]:
    graph = model.proto.graph
    static = set()
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            static.add(vi.name)
    return static


def unsupported_nodes(model: Model) -> list[str]:
    """'name (OpType)' for every node the generator cannot compile (BatchNormalization excluded). Nodes
    computed from constants only (shape arithmetic of exporters) are folded at code generation: not listed."""
    bad = []
    constant = {t.name for t in model.proto.graph.initializer}
    static = _static_tensors(model)
    for node in model.proto.graph.node:
        inputs = [i for i in node.input if i]
        folds = (
            node.op_type == "Constant"
            or (node.op_type == "Shape" and inputs[0] in static)
            or (inputs and all(i in constant for i in inputs))
        )
        if folds and node.domain in ("", "ai.onnx"):
            constant.update(node.output)
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED:
            if node.op_type == "BatchNormalization":
                continue
            kind = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            bad.append(f"{node.name or '<unnamed>'} ({kind})")
    return bad


def check_supported(model: Model, allow_batchnorm: bool = False) -> None:
    """Refuse BatchNormalization (`allow_batchnorm`: an earlier step removes it) and list every unsupported
    node."""
    bn = [n.name or "<unnamed>" for n in model.proto.graph.node if n.op_type == "BatchNormalization"]
    if bn and not allow_batchnorm:
        raise PluginError(
            f"neon: the model still holds {len(bn)} BatchNormalization node(s) ({', '.join(bn[:3])}"
            f"{', ...' if len(bn) > 3 else ''}); fold them into the convolutions first (put a plugin that "
            "removes BatchNormalization nodes before neon)"
        )
    bad = unsupported_nodes(model)
    if bad:
        shown = ", ".join(bad[:12]) + (f", ... ({len(bad)} in all)" if len(bad) > 12 else "")
        raise PluginError(
            f"neon cannot compile {len(bad)} node(s) with unsupported operators: {shown}; "
            f"supported: {', '.join(sorted(KERNEL_OPS))}"
        )


def check_static(model: Model) -> None:
    """Refuse dynamic dimensions other than a leading batch dimension (pinned to 1 by the compiler)."""
    for spec in model.inputs:
        if spec.dtype.kind != "f" or spec.dtype.itemsize != 4:
            raise PluginError(
                f"neon: input {spec.name} is {spec.dtype}; the generated C takes float32 inputs only"
            )
        inner = spec.shape[1:] if spec.shape else ()
        if any(not isinstance(d, int) for d in inner):
            dims = "x".join(str(d) if isinstance(d, int) else "?" for d in spec.shape)
            raise PluginError(
                f"neon needs static shapes, but input {spec.name} is [{dims}]; pin it with "
                f"--input-shapes {spec.name}:1x{'x'.join('N' if not isinstance(d, int) else str(d) for d in inner)}"
            )
