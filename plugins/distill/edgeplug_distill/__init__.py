"""edgeplug-distill: knowledge distillation from the chain's original model into the current one."""

from __future__ import annotations

__version__ = "0.1.0"
