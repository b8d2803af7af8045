"""edgeplug plugin `quant`: INT8 (static QDQ and dynamic) and FP16 through onnxruntime.quantization,
CPU-fitted types, accuracy-budgeted mixed precision, and quantization-aware training of tf_keras models."""

from __future__ import annotations

__version__ = "0.1.0"
