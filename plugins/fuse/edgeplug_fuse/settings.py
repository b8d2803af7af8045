"""The fuse plugin's options, declared once (the core parses, bounds-checks and documents them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from edgeplug import option


@dataclass(frozen=True)
class FuseSettings:
    target: Literal["onnx", "onnxruntime"] = option(
        "onnx",
        "onnx: portable standard ONNX; onnxruntime: also Conv+activation -> com.microsoft FusedConv and "
        "transformer fusions when an encoder is detected",
    )
    transformer: Literal["auto", "off", "bert"] = option(
        "auto",
        "encoder fusions with onnxruntime.transformers (Attention, SkipLayerNormalization, BiasGelu, "
        "EmbedLayerNormalization): auto = when an encoder is detected and target=onnxruntime; bert = always; "
        "off = never",
    )
    num_heads: int = option(
        0, "attention heads for the transformer fusion (0 = read from the graph)", minimum=0
    )
    hidden_size: int = option(
        0, "hidden size for the transformer fusion (0 = read from the graph)", minimum=0
    )

    @property
    def emits_contrib(self) -> bool:
        """Whether these settings emit onnxruntime contrib ops (com.microsoft)."""
        return self.target == "onnxruntime" or self.transformer == "bert"

    @classmethod
    def of(cls, settings: Any, options: Mapping[str, Any]) -> FuseSettings:
        """The core's typed settings, or (a hook called directly from Python) built from an options dict."""
        if isinstance(settings, cls):
            return settings
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names})
