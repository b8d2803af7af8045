"""Narrow int64 initializers to int32 where the values fit and the ONNX operator schemas allow it.

TensorRT up to 8.6 has no INT64 tensors: its ONNX parser casts every INT64 weight to INT32, clamping
values that do not fit (with one warning, "Your ONNX model has been generated with INT64 weights...").
TensorRT 10 handles INT64 natively, but index-like constants are still best stored as int32. This pass
makes that cast explicit and exact in the ONNX model, and lists the values that would not fit.

Which initializers are narrowed (decided per consumer input from `onnx.defs` schemas):
* narrowed: the consumer's input is typed by a type variable that allows tensor(int32) (Gather/
  GatherElements/ScatterElements indices, Slice starts/ends/axes/steps, CumSum axis, ...), every other
  input bound to the same variable is also a narrowable initializer, and no output is bound to it;
* kept int64: inputs the schema fixes to tensor(int64) (shape tensors: Reshape/Expand/Tile/
  ConstantOfShape shapes, Squeeze/Unsqueeze/Reduce axes, Pad pads, Resize sizes, TopK K, Split split);
  operands sharing a type with a computed tensor or an output (int64 arithmetic on shapes); graph inputs,
  graph outputs, initializers read inside subgraphs, and inputs of ops without a schema (custom domains);
* out of range: any int64 initializer with a value outside int32 (e.g. Slice ends = INT64_MAX) is kept
  and listed, since TensorRT's INT64->INT32 cast would clamp it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

INT32_MIN, INT32_MAX = np.iinfo(np.int32).min, np.iinfo(np.int32).max


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()

    def visit(g: onnx.GraphProto) -> None:
        for node in g.node:
            names.update(node.input)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                visit(attr.g)
            for sub in attr.graphs:
                visit(sub)
    return names


def _schema(node: onnx.NodeProto, opsets: dict[str, int]) -> Any:
    domain = node.domain or ""
    version = opsets.get(domain, opsets.get("ai.onnx" if domain == "" else domain, 0))
    try:
        return onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


def _formal(schema: Any, index: int, outputs: bool = False) -> Any:
    params = schema.outputs if outputs else schema.inputs
    if not params:
        return None
    if index < len(params):
        return params[index]
    last = params[-1]
    return last if last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else None


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append((node, index))
    return uses


def _blocking_reasons(
    node: onnx.NodeProto, schema: Any, candidates: set[str], int64_inits: Iterable[str]
) -> dict[str, str]:
    """For one node: the int64 initializers among its inputs that cannot be narrowed, with why."""
    int64_inits = set(int64_inits)
    blocked: dict[str, str] = {}
    mine = [(i, n) for i, n in enumerate(node.input) if n in int64_inits]
    if not mine:
        return blocked
    if schema is None:
        for _, name in mine:
            blocked[name] = f"input of {node.op_type} ({node.domain or 'ai.onnx'}), which has no ONNX schema"
        return blocked
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for index, name in mine:
        param = _formal(schema, index)
        if param is None:
            blocked[name] = f"input {index} of {node.op_type} is not in its schema"
            continue
        type_str = param.type_str
        where = f"{node.op_type}.{param.name}"
        if type_str not in constraints:
            blocked[name] = f"{where} requires {type_str}"
            continue
        if "tensor(int32)" not in constraints[type_str]:
            blocked[name] = f"{where} ({type_str}) does not accept int32"
            continue
        if not getattr(param, "is_homogeneous", True):
            blocked[name] = f"{where} is a heterogeneous variadic input"
            continue
        outputs_bound = any(
            (p := _formal(schema, k, outputs=True)) is not None and p.type_str == type_str
            for k in range(len(node.output))
        )
        if outputs_bound:
            blocked[name] = f"{where} shares type {type_str} with the output of {node.op_type}"
            continue
        partners = [
            other
            for k, other in enumerate(node.input)
            if other and k != index and (p := _formal(schema, k)) is not None and p.type_str == type_str
        ]
        stuck = [p for p in partners if p not in candidates]
        if stuck:
            blocked[name] = f"{where} shares type {type_str} with {stuck[0]!r}, which stays int64"
    return blocked


def narrow_int64(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A copy of `proto` with narrowable int64 initializers stored as int32, and the record of the decisions."""
    graph = proto.graph
    opsets = {i.domain: i.version for i in proto.opset_import}
    protected = {i.name for i in graph.input} | {o.name for o in graph.output} | _subgraph_reads(graph)
    int64: dict[str, np.ndarray] = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == TensorProto.INT64
    }
    uses = _consumers(graph)
    out_of_range = []
    reasons: dict[str, str] = {}
    for name, array in int64.items():
        if array.size and (array.min() < INT32_MIN or array.max() > INT32_MAX):
            out_of_range.append(
                {
                    "name": name,
                    "min": int(array.min()),
                    "max": int(array.max()),
                    "consumers": sorted({n.op_type for n, _ in uses.get(name, [])}),
                }
            )
            reasons[name] = "values outside the int32 range"
        elif name in protected:
            reasons[name] = "graph input/output or read inside a subgraph"
        elif name not in uses:
            reasons[name] = "unused"
    candidates = {n for n in int64 if n not in reasons}
    changed = True
    while changed:  # blocking one initializer can block its partners in other nodes
        changed = False
        for node in graph.node:
            blocked = _blocking_reasons(node, _schema(node, opsets), candidates, int64)
            for name, why in blocked.items():
                if name in candidates:
                    candidates.discard(name)
                    reasons[name] = why
                    changed = True
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    for index, tensor in enumerate(new.graph.initializer):
        if tensor.name in candidates:
            new.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(int64[tensor.name].astype(np.int32), tensor.name)
            )
    for info in new.graph.value_info:
        if info.name in candidates:
            info.type.tensor_type.elem_type = TensorProto.INT32
    record = {
        "int64_initializers": len(int64),
        "narrowed_to_int32": [
            {"name": n, "consumers": sorted({f"{node.op_type}" for node, _ in uses.get(n, [])})}
            for n in sorted(candidates)
        ],
        "kept_int64": [{"name": n, "reason": why} for n, why in sorted(reasons.items())],
        "out_of_int32_range": out_of_range,
    }
    return new, record
