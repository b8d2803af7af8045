"""edgeplug-neon: ONNX CNNs to self-contained C with ARM NEON intrinsics, built for aarch64 and the host."""

from __future__ import annotations

__version__ = "0.1.0"
