"""Sliding-window geometry (strides, dilations, explicit or auto_pad padding) and pool lowering."""

from __future__ import annotations

from typing import Any

from edgeplug import PluginError

from .program import Op


def spatial(
    attrs: dict[str, Any], in_hw: tuple[int, ...], out_hw: tuple[int, ...], kernel: tuple[int, ...]
) -> dict[str, int]:
    """Strides, dilations and begin/end pads of a 1-D or 2-D window op (auto_pad resolved)."""
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(nd):
            total = max((out_hw[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - in_hw[i], 0)
            small = total // 2
            pads[i], pads[i + nd] = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    if nd == 1:  # a 1-D window is a 2-D one with height 1
        return {
            "KH": 1,
            "KW": kernel[0],
            "SH": 1,
            "SW": strides[0],
            "DH": 1,
            "DW": dil[0],
            "PT": 0,
            "PL": pads[0],
            "PB": 0,
            "PR": pads[1],
        }
    return {
        "KH": kernel[0],
        "KW": kernel[1],
        "SH": strides[0],
        "SW": strides[1],
        "DH": dil[0],
        "DW": dil[1],
        "PT": pads[0],
        "PL": pads[1],
        "PB": pads[2],
        "PR": pads[3],
    }


def hw(shape: tuple[int, ...]) -> tuple[int, int]:
    return (1, shape[2]) if len(shape) == 3 else (shape[2], shape[3])


def lower_pool(
    op_type: str,
    name: str,
    ins: list[str],
    out: str,
    attrs: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
) -> Op:
    xs, os_ = shapes[ins[0]], shapes[out]
    if len(xs) not in (3, 4):
        raise PluginError(f"neon: {op_type} {name} is {len(xs) - 2}-D; only 1-D and 2-D pools compile")
    if int(attrs.get("storage_order", 0)) != 0:
        raise PluginError(f"neon: {op_type} {name} uses storage_order=1; not supported")
    if op_type == "AveragePool" and any(d != 1 for d in attrs.get("dilations", [1])):
        raise PluginError(f"neon: AveragePool {name} uses dilations; not supported")
    kernel = tuple(attrs["kernel_shape"])
    H, W = hw(xs)
    OH, OW = hw(os_)
    geo = spatial(attrs, (H, W) if len(xs) == 4 else (W,), (OH, OW) if len(os_) == 4 else (OW,), kernel)
    return Op(
        "pool",
        [ins[0]],
        [out],
        {
            "is_max": int(op_type == "MaxPool"),
            "C": xs[0] * xs[1],
            "H": H,
            "W": W,
            "OH": OH,
            "OW": OW,
            **geo,
            "count_include_pad": int(attrs.get("count_include_pad", 0)),
        },
        name,
    )
