"""edgeplug-prune: unstructured, N:M and structured channel pruning of ONNX models, and
training-time pruning of tf_keras models through tensorflow-model-optimization.

The plugin module is `edgeplug_prune.plugin` (entry point `prune` in the group `edgeplug`).
"""

from __future__ import annotations

__version__ = "0.1.0"
