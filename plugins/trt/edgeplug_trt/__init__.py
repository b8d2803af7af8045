"""edgeplug-trt: the `trt` plugin (TensorRT engines from ONNX: preparation, FP32/FP16/INT8 builds, profiles).

The hooks live in `edgeplug_trt.plugin`; `tensorrt` and `cuda-python` are imported only when an engine is
built or run.
"""

from __future__ import annotations

__version__ = "0.1.0"
