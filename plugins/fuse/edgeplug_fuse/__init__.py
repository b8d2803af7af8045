"""edgeplug-fuse: exact graph fusions for edgeplug (BatchNorm folding, activation fusion, clean-ups,
onnxruntime transformer fusions), built on onnx-graphsurgeon. The hooks live in `edgeplug_fuse.plugin`."""

from __future__ import annotations

__version__ = "0.1.0"
