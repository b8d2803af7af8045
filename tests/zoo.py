"""A zoo of real architectures exported to ONNX, with random (seeded) weights.

For tests and benchmarks.  Every builder has the signature::

    builder(path: Path | None = None, *, opset: int = 17, **options) -> onnx.ModelProto

and also writes the model to ``path`` when one is given.  Builders are deterministic for
given arguments (seeded weights; BatchNorm statistics calibrated on seeded random data so
activations stay well scaled and the BN folding is non-trivial).

Builders
--------
``resnet_style``     small ResNet: conv-bn-relu stem, 3 BasicBlocks (two with a strided
                     1x1 conv-bn projection shortcut), GAP, FC.  Input ``input`` 1x3x32x32,
                     output ``logits`` 1x10.
``mobilenet_style``  small MobileNetV2: 5 inverted-residual blocks (1x1 expand, depthwise
                     3x3, 1x1 project, BN, ReLU6; two with residual Add), GAP, FC.
                     Input ``input`` 1x3x32x32, output ``logits`` 1x10.
``resnet50``         the ResNet-50 (v1.5) architecture: Bottleneck blocks [3, 4, 6, 3],
                     input 1x3x224x224, output ``logits`` 1x1000 (~25.6M params).
``mobilenet_v2``     the MobileNetV2 architecture (width 1.0), input 1x3x224x224,
                     output ``logits`` 1x1000 (~3.5M params).
``yolov5s``          YOLOv5s (v6 layout, depth 0.33 / width 0.50): Conv(=Conv2d+BN+SiLU),
                     C3, SPPF, PANet neck (nearest Upsample + Concat), Detect 1x1 convs.
                     Input ``images`` 1x3x640x640; outputs the raw detection maps ``p3``
                     1x255x80x80, ``p4`` 1x255x40x40, ``p5`` 1x255x20x20 (no decoding/NMS).
``bert_encoder``     ``transformers.BertModel`` with the config given as keyword arguments
                     (default tiny: hidden 64, 2 layers, 4 heads, intermediate 128, vocab
                     1000, sequence 16).  Inputs ``input_ids``, ``attention_mask``,
                     ``token_type_ids`` int64 [batch, sequence] (symbolic dims by default,
                     traced at 1x16); outputs ``last_hidden_state`` [batch, sequence,
                     hidden] and ``pooler_output`` [batch, hidden].
``bert_base``        ``bert_encoder`` with the BERT-base config (hidden 768, 12 layers, 12
                     heads, intermediate 3072, vocab 30522) at sequence length 128.

Export settings
---------------
All models are exported in eval mode with the legacy TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``; deprecated since torch 2.9 but still present):

* CNNs use ``training=torch.onnx.TrainingMode.PRESERVE`` (module already in ``eval()``):
  this skips the exporter's eval-mode Conv+BatchNorm fusion, so every BN stays a
  ``BatchNormalization`` node (``training_mode=0``, running statistics) -- a later
  ``fuse`` pass is expected to fold them itself.  (The default ``TrainingMode.EVAL`` and
  the dynamo exporter with its default ``optimize=True`` both fold BN into the Conv.)
* BERT uses ``training=TrainingMode.EVAL``, ``attn_implementation="eager"`` and, by
  default, dynamic ``batch``/``sequence`` axes.  ``onnxruntime.transformers.optimizer.
  optimize_model(path, model_type="bert", num_heads=..., hidden_size=...)`` (onnxruntime
  1.32, checked at opsets 11, 13, 14, 17, default ``opt_level``) then fuses 1
  ``EmbedLayerNormalization`` plus, per encoder layer, 1 ``Attention``, 2
  ``SkipLayerNormalization`` and 1 ``BiasGelu`` (tiny model, opset 17: 236 nodes -> 21),
  at ``opt_level`` None (=1), 0 and 99 alike.
  Caveats found while checking: with ``dynamic_axes=False`` (static shapes) the default
  ``opt_level=1`` lets onnxruntime rewrite MatMul+Add into Gemm first and *no* Attention
  is fused -- pass ``opt_level=0`` there (then Attention/SkipLayerNorm/BiasGelu fuse, but
  not EmbedLayerNormalization); ``attn_implementation="sdpa"`` or a pre-built 4D additive
  mask also defeat the Attention fusion.  The trace uses an attention mask with padding,
  otherwise transformers may skip the mask and ``attention_mask`` would be unused.

Caching: ``cached(name, builder=None, cache_dir=None, **kwargs) -> Path`` builds once into
``cache_dir`` (default: ``$EDGEPLUG_ZOO_CACHE`` or ``<repo>/.cache/zoo``), keyed by the
name and keyword arguments.

Helpers: ``build_torch(name, **kwargs)`` returns the eval-mode torch module and the
numpy feeds used for the export (for comparing against onnxruntime), and
``example_inputs(model)`` makes seeded feeds for an exported model.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

__all__ = [
    "BUILDERS",
    "DEFAULT_CACHE_DIR",
    "ZOO_VERSION",
    "bert_base",
    "bert_encoder",
    "build_torch",
    "cached",
    "example_inputs",
    "mobilenet_style",
    "mobilenet_v2",
    "resnet50",
    "resnet_style",
    "resolve_cache_dir",
    "yolov5s",
]

#: Bump when a builder changes so stale cache entries are not reused.
ZOO_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "zoo"


# --------------------------------------------------------------------------------------
# export plumbing
# --------------------------------------------------------------------------------------


@dataclass
class _Spec:
    """A torch module ready for export plus its example inputs and I/O names."""

    module: Any  # torch.nn.Module (eval mode)
    args: tuple[Any, ...]  # example torch tensors, in input order
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] | None = None
    keep_bn: bool = True  # export with TrainingMode.PRESERVE so BN is not folded
    metadata: dict[str, str] = field(default_factory=dict)

    def feeds(self) -> dict[str, np.ndarray]:
        return {n: a.detach().cpu().numpy() for n, a in zip(self.input_names, self.args)}


def _export(spec: _Spec, path: str | os.PathLike[str] | None, *, opset: int, name: str) -> onnx.ModelProto:
    import torch

    spec.module.eval()
    training = torch.onnx.TrainingMode.PRESERVE if spec.keep_bn else torch.onnx.TrainingMode.EVAL
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Legacy-exporter deprecation notices; they say nothing about this model.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*[Cc]onverting a tensor to a Python.*")
        # Constant folding only touches constant subgraphs (e.g. Resize scales); with the
        # module in eval() it is safe under PRESERVE, whatever this warning says.
        warnings.filterwarnings("ignore", message=".*recommended that constant folding be turned off.*")
        # From transformers' padding-mask indexing (arange indices, never negative).
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        with torch.no_grad():
            torch.onnx.export(
                spec.module,
                spec.args,
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes,
                training=training,
                do_constant_folding=True,
            )
    model = onnx.load_from_string(buf.getvalue())
    meta = {"edgeplug.zoo.builder": name, **spec.metadata}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
    return model


def _dynamic_batch_axes(names: list[str], enabled: bool) -> dict[str, dict[int, str]] | None:
    return {n: {0: "batch"} for n in names} if enabled else None


def _calibrate_bn(module: Any, sample: Any, seed: int) -> None:
    """Give every BatchNorm random affine params and running stats measured on ``sample``.

    Random gamma/beta make BN folding non-trivial; measuring the running statistics on a
    (random) batch keeps eval-mode activations well scaled through deep networks.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = []
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.1)
            bn.reset_running_stats()
            momenta.append(bn.momentum)
            bn.momentum = None  # cumulative average over the calibration pass
        module.train()
        module(sample)
        module.eval()
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum


def _image_inputs(seed: int, batch: int, size: int, calib_batch: int = 2) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(batch, 3, size, size, generator=gen)
    calib = torch.randn(calib_batch, 3, size, size, generator=gen)
    return x, calib


# --------------------------------------------------------------------------------------
# torch architectures (defined lazily so importing this module does not import torch)
# --------------------------------------------------------------------------------------


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@functools.cache
def _nets() -> Any:
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
            super().__init__()
            out = planes * self.expansion
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or inplanes != out:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(
            self,
            block: type[nn.Module],
            layers: list[int],
            widths: list[int],
            num_classes: int,
            imagenet_stem: bool,
        ) -> None:
            super().__init__()
            if imagenet_stem:
                self.inplanes = 64
                self.stem = nn.Sequential(
                    nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                    nn.BatchNorm2d(64),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, 2, 1),
                )
            else:
                self.inplanes = widths[0]
                self.stem = nn.Sequential(
                    nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                    nn.BatchNorm2d(widths[0]),
                    nn.ReLU(inplace=True),
                )
            stages = []
            for i, (n, width) in enumerate(zip(layers, widths)):
                blocks = []
                for j in range(n):
                    stride = 2 if (i > 0 and j == 0) else 1
                    blocks.append(block(self.inplanes, width, stride))
                    self.inplanes = width * block.expansion
                stages.append(nn.Sequential(*blocks))
            self.layers = nn.Sequential(*stages)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.inplanes, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class ConvBNReLU6(nn.Sequential):
        def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
            super().__init__(
                nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                nn.BatchNorm2d(oup),
                nn.ReLU6(inplace=True),
            )

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
            super().__init__()
            hidden = round(inp * expand_ratio)
            self.use_res_connect = stride == 1 and inp == oup
            layers: list[nn.Module] = []
            if expand_ratio != 1:
                layers.append(ConvBNReLU6(inp, hidden, kernel=1))
            layers += [
                ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise 3x3
                nn.Conv2d(hidden, oup, 1, bias=False),  # linear bottleneck
                nn.BatchNorm2d(oup),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(
            self,
            settings: list[list[int]],
            num_classes: int,
            width_mult: float = 1.0,
            first_channels: int = 32,
            last_channels: int = 1280,
            first_stride: int = 2,
            dropout: float = 0.2,
        ) -> None:
            super().__init__()
            inp = _make_divisible(first_channels * width_mult)
            last = _make_divisible(last_channels * max(1.0, width_mult))
            features: list[nn.Module] = [ConvBNReLU6(3, inp, stride=first_stride)]
            for t, c, n, s in settings:
                oup = _make_divisible(c * width_mult)
                for i in range(n):
                    features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t))
                    inp = oup
            features.append(ConvBNReLU6(inp, last, kernel=1))
            self.features = nn.Sequential(*features)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    # ---- YOLOv5 (ultralytics v6.x layout) ----

    class Conv(nn.Module):
        def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
            self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
            self.act = nn.SiLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    class YoloBottleneck(nn.Module):
        def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0) -> None:
            super().__init__()
            c_ = int(c2 * e)
            self.cv1 = Conv(c1, c_, 1, 1)
            self.cv2 = Conv(c_, c2, 3, 1)
            self.add = shortcut and c1 == c2

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C3(nn.Module):
        def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5) -> None:
            super().__init__()
            c_ = int(c2 * e)
            self.cv1 = Conv(c1, c_, 1, 1)
            self.cv2 = Conv(c1, c_, 1, 1)
            self.cv3 = Conv(2 * c_, c2, 1)
            self.m = nn.Sequential(*(YoloBottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))

    class SPPF(nn.Module):
        def __init__(self, c1: int, c2: int, k: int = 5) -> None:
            super().__init__()
            c_ = c1 // 2
            self.cv1 = Conv(c1, c_, 1, 1)
            self.cv2 = Conv(c_ * 4, c2, 1, 1)
            self.m = nn.MaxPool2d(k, 1, k // 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))

    class YOLOv5(nn.Module):
        def __init__(
            self, num_classes: int = 80, depth: float = 0.33, width: float = 0.50, na: int = 3
        ) -> None:
            super().__init__()

            def ch(c: int) -> int:
                return _make_divisible(c * width, 8)

            def n(k: int) -> int:
                return max(round(k * depth), 1)

            # backbone
            self.b0 = Conv(3, ch(64), 6, 2, 2)  # P1/2
            self.b1 = Conv(ch(64), ch(128), 3, 2)  # P2/4
            self.b2 = C3(ch(128), ch(128), n(3))
            self.b3 = Conv(ch(128), ch(256), 3, 2)  # P3/8
            self.b4 = C3(ch(256), ch(256), n(6))
            self.b5 = Conv(ch(256), ch(512), 3, 2)  # P4/16
            self.b6 = C3(ch(512), ch(512), n(9))
            self.b7 = Conv(ch(512), ch(1024), 3, 2)  # P5/32
            self.b8 = C3(ch(1024), ch(1024), n(3))
            self.b9 = SPPF(ch(1024), ch(1024), 5)
            # PANet head
            self.h10 = Conv(ch(1024), ch(512), 1, 1)
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.h13 = C3(ch(512) * 2, ch(512), n(3), shortcut=False)
            self.h14 = Conv(ch(512), ch(256), 1, 1)
            self.h17 = C3(ch(256) * 2, ch(256), n(3), shortcut=False)  # P3/8 out
            self.h18 = Conv(ch(256), ch(256), 3, 2)
            self.h20 = C3(ch(256) * 2, ch(512), n(3), shortcut=False)  # P4/16 out
            self.h21 = Conv(ch(512), ch(512), 3, 2)
            self.h23 = C3(ch(512) * 2, ch(1024), n(3), shortcut=False)  # P5/32 out
            # Detect: raw 1x1 conv outputs, na * (nc + 5) channels each
            no = na * (num_classes + 5)
            self.detect = nn.ModuleList(nn.Conv2d(c, no, 1) for c in (ch(256), ch(512), ch(1024)))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = self.b2(self.b1(self.b0(x)))
            p3 = self.b4(self.b3(x))
            p4 = self.b6(self.b5(p3))
            p5 = self.b9(self.b8(self.b7(p4)))
            h10 = self.h10(p5)
            h13 = self.h13(torch.cat((self.up(h10), p4), 1))
            h14 = self.h14(h13)
            out3 = self.h17(torch.cat((self.up(h14), p3), 1))
            out4 = self.h20(torch.cat((self.h18(out3), h14), 1))
            out5 = self.h23(torch.cat((self.h21(out4), h10), 1))
            return (self.detect[0](out3), self.detect[1](out4), self.detect[2](out5))

    class BertWrapper(nn.Module):
        """Return a plain tuple instead of a ModelOutput dataclass."""

        def __init__(self, bert: nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    class Nets:
        pass

    nets = Nets()
    for obj in (BasicBlock, Bottleneck, ResNet, MobileNetV2, YOLOv5, BertWrapper):
        setattr(nets, obj.__name__, obj)
    return nets


# --------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------

_MOBILENET_V2_SETTINGS = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
_MOBILENET_SMALL_SETTINGS = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 2, 2],
]


def _image_spec(
    module: Any,
    *,
    seed: int,
    batch: int,
    image_size: int,
    dynamic_batch: bool,
    input_name: str = "input",
    output_names: tuple[str, ...] = ("logits",),
) -> _Spec:
    x, calib = _image_inputs(seed, batch, image_size)
    _calibrate_bn(module, calib, seed)
    names = [input_name, *output_names]
    return _Spec(
        module=module,
        args=(x,),
        input_names=[input_name],
        output_names=list(output_names),
        dynamic_axes=_dynamic_batch_axes(names, dynamic_batch),
    )


def _resnet_style_spec(
    *,
    num_classes: int = 10,
    image_size: int = 32,
    widths: tuple[int, ...] = (16, 32, 64),
    batch: int = 1,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> _Spec:
    import torch

    torch.manual_seed(seed)
    nets = _nets()
    module = nets.ResNet(nets.BasicBlock, [1] * len(widths), list(widths), num_classes, imagenet_stem=False)
    return _image_spec(module, seed=seed, batch=batch, image_size=image_size, dynamic_batch=dynamic_batch)


def _mobilenet_style_spec(
    *, num_classes: int = 10, image_size: int = 32, batch: int = 1, dynamic_batch: bool = False, seed: int = 0
) -> _Spec:
    import torch

    torch.manual_seed(seed)
    module = _nets().MobileNetV2(
        _MOBILENET_SMALL_SETTINGS, num_classes, first_channels=16, last_channels=128, first_stride=1
    )
    return _image_spec(module, seed=seed, batch=batch, image_size=image_size, dynamic_batch=dynamic_batch)


def _resnet50_spec(
    *,
    num_classes: int = 1000,
    image_size: int = 224,
    batch: int = 1,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> _Spec:
    import torch

    torch.manual_seed(seed)
    nets = _nets()
    module = nets.ResNet(nets.Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, imagenet_stem=True)
    return _image_spec(module, seed=seed, batch=batch, image_size=image_size, dynamic_batch=dynamic_batch)


def _mobilenet_v2_spec(
    *,
    num_classes: int = 1000,
    image_size: int = 224,
    width_mult: float = 1.0,
    batch: int = 1,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> _Spec:
    import torch

    torch.manual_seed(seed)
    module = _nets().MobileNetV2(_MOBILENET_V2_SETTINGS, num_classes, width_mult=width_mult)
    return _image_spec(module, seed=seed, batch=batch, image_size=image_size, dynamic_batch=dynamic_batch)


def _yolov5s_spec(
    *,
    num_classes: int = 80,
    image_size: int = 640,
    depth_multiple: float = 0.33,
    width_multiple: float = 0.50,
    batch: int = 1,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> _Spec:
    import torch

    torch.manual_seed(seed)
    module = _nets().YOLOv5(num_classes, depth_multiple, width_multiple)
    return _image_spec(
        module,
        seed=seed,
        batch=batch,
        image_size=image_size,
        dynamic_batch=dynamic_batch,
        input_name="images",
        output_names=("p3", "p4", "p5"),
    )


_BERT_TINY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000
)
_BERT_BASE = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=30522
)


def _bert_encoder_spec(
    *, seq_len: int = 16, batch: int = 1, dynamic_axes: bool = True, seed: int = 0, **config: Any
) -> _Spec:
    import torch
    from transformers import BertConfig, BertModel

    cfg_kwargs = {**_BERT_TINY, **config}
    cfg_kwargs.setdefault("max_position_embeddings", max(512, seq_len))
    cfg_kwargs.setdefault("attn_implementation", "eager")  # the pattern ORT's fusion knows
    cfg = BertConfig(**cfg_kwargs)
    torch.manual_seed(seed)
    bert = BertModel(cfg, add_pooling_layer=True).eval()
    # HF init leaves every LayerNorm at (1, 0) and every Linear bias at 0; the exporter then
    # de-duplicates those identical initializers into Identity nodes.  Perturb them so the
    # graph looks like a trained model's (one initializer per parameter, no Identity).
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in bert.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.add_(torch.randn(mod.weight.shape, generator=gen) * 0.05)
                mod.bias.add_(torch.randn(mod.bias.shape, generator=gen) * 0.05)
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.add_(torch.randn(mod.bias.shape, generator=gen) * 0.02)
    module = _nets().BertWrapper(bert).eval()

    gen = torch.Generator().manual_seed(seed + 2)
    input_ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=gen, dtype=torch.int64)
    attention_mask = torch.ones(batch, seq_len, dtype=torch.int64)
    # Padding in the traced mask keeps the mask path in the graph (an all-ones mask may be
    # skipped by transformers' mask utilities at trace time).
    attention_mask[:, seq_len - max(1, seq_len // 8) :] = 0
    token_type_ids = torch.zeros(batch, seq_len, dtype=torch.int64)
    token_type_ids[:, seq_len // 2 :] = 1

    inputs = ["input_ids", "attention_mask", "token_type_ids"]
    outputs = ["last_hidden_state", "pooler_output"]
    axes = None
    if dynamic_axes:
        axes = {n: {0: "batch", 1: "sequence"} for n in inputs}
        axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
        axes["pooler_output"] = {0: "batch"}
    return _Spec(
        module=module,
        args=(input_ids, attention_mask, token_type_ids),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=axes,
        keep_bn=False,
        metadata={
            "edgeplug.zoo.num_heads": str(cfg.num_attention_heads),
            "edgeplug.zoo.hidden_size": str(cfg.hidden_size),
            "edgeplug.zoo.vocab_size": str(cfg.vocab_size),
            "edgeplug.zoo.seq_len": str(seq_len),
        },
    )


def _bert_base_spec(
    *, seq_len: int = 128, batch: int = 1, dynamic_axes: bool = True, seed: int = 0, **config: Any
) -> _Spec:
    return _bert_encoder_spec(
        seq_len=seq_len, batch=batch, dynamic_axes=dynamic_axes, seed=seed, **{**_BERT_BASE, **config}
    )


_SPECS: dict[str, Callable[..., _Spec]] = {
    "resnet_style": _resnet_style_spec,
    "mobilenet_style": _mobilenet_style_spec,
    "resnet50": _resnet50_spec,
    "mobilenet_v2": _mobilenet_v2_spec,
    "yolov5s": _yolov5s_spec,
    "bert_encoder": _bert_encoder_spec,
    "bert_base": _bert_base_spec,
}


# --------------------------------------------------------------------------------------
# public builders
# --------------------------------------------------------------------------------------


def resnet_style(
    path: Path | None = None,
    *,
    opset: int = 17,
    num_classes: int = 10,
    image_size: int = 32,
    widths: tuple[int, ...] = (16, 32, 64),
    batch: int = 1,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """Small ResNet (stem + one BasicBlock per width, projection shortcuts), input 1x3x32x32."""
    spec = _resnet_style_spec(
        num_classes=num_classes,
        image_size=image_size,
        widths=tuple(widths),
        batch=batch,
        dynamic_batch=dynamic_batch,
        seed=seed,
    )
    return _export(spec, path, opset=opset, name="resnet_style")


def mobilenet_style(
    path: Path | None = None,
    *,
    opset: int = 17,
    num_classes: int = 10,
    image_size: int = 32,
    batch: int = 1,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """Small MobileNetV2 (5 inverted residual blocks, depthwise 3x3, ReLU6), input 1x3x32x32."""
    spec = _mobilenet_style_spec(
        num_classes=num_classes, image_size=image_size, batch=batch, dynamic_batch=dynamic_batch, seed=seed
    )
    return _export(spec, path, opset=opset, name="mobilenet_style")


def resnet50(
    path: Path | None = None,
    *,
    opset: int = 17,
    num_classes: int = 1000,
    image_size: int = 224,
    batch: int = 1,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """ResNet-50 v1.5 (Bottleneck [3, 4, 6, 3]), input 1x3x224x224, 1000 logits."""
    spec = _resnet50_spec(
        num_classes=num_classes, image_size=image_size, batch=batch, dynamic_batch=dynamic_batch, seed=seed
    )
    return _export(spec, path, opset=opset, name="resnet50")


def mobilenet_v2(
    path: Path | None = None,
    *,
    opset: int = 17,
    num_classes: int = 1000,
    image_size: int = 224,
    width_mult: float = 1.0,
    batch: int = 1,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """MobileNetV2 (torchvision layout), input 1x3x224x224, 1000 logits."""
    spec = _mobilenet_v2_spec(
        num_classes=num_classes,
        image_size=image_size,
        width_mult=width_mult,
        batch=batch,
        dynamic_batch=dynamic_batch,
        seed=seed,
    )
    return _export(spec, path, opset=opset, name="mobilenet_v2")


def yolov5s(
    path: Path | None = None,
    *,
    opset: int = 17,
    num_classes: int = 80,
    image_size: int = 640,
    depth_multiple: float = 0.33,
    width_multiple: float = 0.50,
    batch: int = 1,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """YOLOv5s (v6 layout) at 1x3x640x640; outputs raw detection maps p3/p4/p5 (no decode, no NMS)."""
    spec = _yolov5s_spec(
        num_classes=num_classes,
        image_size=image_size,
        depth_multiple=depth_multiple,
        width_multiple=width_multiple,
        batch=batch,
        dynamic_batch=dynamic_batch,
        seed=seed,
    )
    return _export(spec, path, opset=opset, name="yolov5s")


def bert_encoder(
    path: Path | None = None,
    *,
    opset: int = 17,
    seq_len: int = 16,
    batch: int = 1,
    dynamic_axes: bool = True,
    seed: int = 0,
    **config: Any,
) -> onnx.ModelProto:
    """``transformers.BertModel`` encoder; ``config`` kwargs go to ``BertConfig`` (default tiny).

    Inputs ``input_ids``/``attention_mask``/``token_type_ids`` int64, outputs
    ``last_hidden_state`` and ``pooler_output``; traced at ``[batch, seq_len]`` with symbolic
    ``batch``/``sequence`` axes unless ``dynamic_axes=False``.
    ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert", num_heads=...,
    hidden_size=...)`` fuses 1 EmbedLayerNormalization and, per layer, 1 Attention +
    2 SkipLayerNormalization + 1 BiasGelu (onnxruntime 1.32, opsets 11-17).  For a static
    export (``dynamic_axes=False``) use ``opt_level=0`` or Attention is not fused (see the
    module docstring).  ``num_heads``/``hidden_size``/``vocab_size``/``seq_len`` are stored
    in the model's metadata_props (``edgeplug.zoo.num_heads`` etc.).
    """
    spec = _bert_encoder_spec(seq_len=seq_len, batch=batch, dynamic_axes=dynamic_axes, seed=seed, **config)
    return _export(spec, path, opset=opset, name="bert_encoder")


def bert_base(
    path: Path | None = None,
    *,
    opset: int = 17,
    seq_len: int = 128,
    batch: int = 1,
    dynamic_axes: bool = True,
    seed: int = 0,
    **config: Any,
) -> onnx.ModelProto:
    """BERT-base encoder (hidden 768, 12 layers, 12 heads, ffn 3072, vocab 30522), sequence 128.

    Same export and onnxruntime-fusion behaviour as :func:`bert_encoder`: ``optimize_model``
    fuses 1 EmbedLayerNormalization, 12 Attention, 24 SkipLayerNormalization and 12 BiasGelu
    (946 nodes -> 91).  The file is ~440 MB; prefer :func:`cached`.
    """
    spec = _bert_base_spec(seq_len=seq_len, batch=batch, dynamic_axes=dynamic_axes, seed=seed, **config)
    return _export(spec, path, opset=opset, name="bert_base")


BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet_style": resnet_style,
    "mobilenet_style": mobilenet_style,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "yolov5s": yolov5s,
    "bert_encoder": bert_encoder,
    "bert_base": bert_base,
}


def build_torch(name: str, **kwargs: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """The eval-mode torch module behind builder ``name`` and the numpy feeds used to export it.

    ``kwargs`` are the builder's options (not ``path``/``opset``).  Calling the module on the
    feeds (as torch tensors, in order) gives the reference outputs for onnxruntime.
    """
    spec = _SPECS[name](**kwargs)
    spec.module.eval()
    return spec.module, spec.feeds()


# --------------------------------------------------------------------------------------
# caching and inputs
# --------------------------------------------------------------------------------------


def resolve_cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The zoo cache folder: ``path``, else ``$EDGEPLUG_ZOO_CACHE``, else ``<repo>/.cache/zoo``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("EDGEPLUG_ZOO_CACHE")
    return Path(env) if env else DEFAULT_CACHE_DIR


def cached(
    name: str,
    builder: Callable[..., onnx.ModelProto] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Path:
    """Path of model ``name`` built with ``kwargs``, building it into the cache on first use.

    ``builder`` defaults to ``BUILDERS[name]``.  The file name is ``<name>-<hash>.onnx``
    where the hash covers the name, the kwargs (JSON, sorted keys) and ``ZOO_VERSION``.
    Writes go to a temporary file renamed into place, so concurrent test workers are safe.
    """
    builder = builder if builder is not None else BUILDERS[name]
    folder = resolve_cache_dir(cache_dir)
    key = json.dumps(
        {"name": name, "kwargs": kwargs, "zoo_version": ZOO_VERSION}, sort_keys=True, default=repr
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = folder / f"{name}-{digest}.onnx"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.onnx"
    try:
        builder(tmp, **kwargs)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def example_inputs(
    model: onnx.ModelProto, *, seed: int = 0, batch: int = 1, seq_len: int | None = None
) -> dict[str, np.ndarray]:
    """Seeded feeds for ``model``'s graph inputs.

    Symbolic dims become ``batch`` (first axis) or ``seq_len`` (other axes; default: the
    sequence length the model was built with, from its metadata, else 16).  Floats ~ N(0, 1);
    ``*ids`` ints in [0, vocab); ``*mask*`` all ones; ``*type*`` inputs zeros.
    """
    rng = np.random.default_rng(seed)
    meta = {p.key: p.value for p in model.metadata_props}
    vocab = int(meta.get("edgeplug.zoo.vocab_size", "100"))
    if seq_len is None:
        seq_len = int(meta.get("edgeplug.zoo.seq_len", "16"))
    initializers = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        tt = inp.type.tensor_type
        shape = [
            d.dim_value if d.HasField("dim_value") else (batch if i == 0 else seq_len)
            for i, d in enumerate(tt.shape.dim)
        ]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in inp.name:
            feeds[inp.name] = np.ones(shape, dtype=dtype)
        elif "type" in inp.name:
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
        else:
            feeds[inp.name] = rng.integers(0, vocab, size=shape).astype(dtype)
    return feeds
