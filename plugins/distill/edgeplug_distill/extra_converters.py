"""Operators onnx2torch 1.5.15 lacks, registered through its own `add_converter` (no fork).

GreaterOrEqual and LessOrEqual have converters for opset 12 only; opset 16 changed nothing but the allowed
types (bfloat16), so every model exported at opset 16 or later (transformers' attention masks, MiniLM)
was refused. The opset-12 module computes them.
"""

from __future__ import annotations

from typing import Any

# (operator, opset version) -> the onnx2torch converter of the same operator at an older version that
# computes it unchanged (the schema change only added types)
SAME_AS = {
    ("GreaterOrEqual", 16): ("GreaterOrEqual", 12),
    ("LessOrEqual", 16): ("LessOrEqual", 12),
}


def register(onnx2torch: Any) -> None:
    """Register each missing converter once (idempotent: a later onnx2torch that has them wins)."""
    registry = onnx2torch.node_converters.registry
    for (op, version), (older_op, older) in SAME_AS.items():
        key = registry.OperationDescription(domain="", operation_type=op, version=version)
        source = registry.OperationDescription(domain="", operation_type=older_op, version=older)
        if key in registry._CONVERTER_REGISTRY or source not in registry._CONVERTER_REGISTRY:
            continue
        registry.add_converter(operation_type=op, version=version)(registry._CONVERTER_REGISTRY[source])
