"""The lowered model: kernel calls (`Op`) over named tensors with static shapes, and its constants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

ACT_CODES = {"Relu": 1, "Clip": 2, "Sigmoid": 3, "HardSigmoid": 4, "HardSwish": 5}
ALIAS_OPS = {"Flatten", "Reshape", "Identity", "Dropout", "Squeeze", "Unsqueeze"}
QRANGE = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}


@dataclass
class Op:
    """One kernel call: `kind` names the C kernel family; attrs are compile-time constants."""

    kind: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass
class QuantWeight:
    """A constant int8 tensor behind a DequantizeLinear: values, scale per output channel, zero point."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


@dataclass
class Program:
    """The lowered model: tensors with static shapes, constants, ops in execution order."""

    shapes: dict[str, tuple[int, ...]]
    consts: dict[str, np.ndarray]
    ops: list[Op]
    inputs: list[str]
    outputs: list[str]

    def size(self, name: str) -> int:
        return int(np.prod(self.shapes[name], dtype=np.int64))

    @property
    def is_int8(self) -> bool:
        """Has int8 kernels (symmetric s8 QDQ around Conv/Gemm/MatMul)."""
        return any(op.kind in ("qconv", "qgemm") for op in self.ops)

    @property
    def is_quantized(self) -> bool:
        """Has int8 kernels or fake quantization (any QDQ model): results move by whole quantization steps."""
        return any(op.kind in ("qconv", "qgemm", "fakequant") for op in self.ops)
