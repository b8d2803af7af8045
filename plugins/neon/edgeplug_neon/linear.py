"""Conv, Gemm and MatMul lowering: float kernels, or int8 kernels for DQ->Conv/Gemm/MatMul with
symmetric s8 inputs and int8 weights (zero point 0, per-channel or per-tensor scales)."""

from __future__ import annotations

from typing import Any

import numpy as np
from edgeplug import PluginError

from .program import Op, QuantWeight
from .window import hw, spatial


def lower_conv(
    name: str,
    ins: list[str],
    out: str,
    attrs: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    consts: dict[str, np.ndarray],
    qweights: dict[str, QuantWeight],
    producers: dict[str, Op],
) -> Op:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 and ins[2] else None
    if w not in consts or (b is not None and b not in consts):
        raise PluginError(
            f"neon: Conv {name} has a non-constant weight or bias; only constant weights compile"
        )
    xs, os_ = shapes[x], shapes[out]
    if len(xs) not in (3, 4):
        raise PluginError(f"neon: Conv {name} is {len(xs) - 2}-D; only 1-D and 2-D convolutions compile")
    if xs[0] != 1:
        raise PluginError(
            f"neon: Conv {name} has batch {xs[0]}; the generated C runs batch 1 "
            "(pin it with --input-shapes NAME:1x...)"
        )
    weight = consts[w]
    G = int(attrs.get("group", 1))
    kernel = tuple(weight.shape[2:])
    H, W = hw(xs)
    OH, OW = hw(os_)
    geo = spatial(attrs, (H, W) if len(xs) == 4 else (W,), (OH, OW) if len(os_) == 4 else (OW,), kernel)
    C, OC = xs[1], os_[1]
    a = {
        "C": C,
        "H": H,
        "W": W,
        "OC": OC,
        "G": G,
        "OH": OH,
        "OW": OW,
        **geo,
        "act": 0,
        "p0": 0.0,
        "p1": 0.0,
        "bias": b,
    }
    src = producers.get(x)
    qw = qweights.get(w)
    if (
        qw is not None
        and src is not None
        and src.kind == "fakequant"
        and _symmetric_s8(src.attrs)
        and qw.values.dtype == np.int8
        and not np.any(qw.zero_point)
        and qw.axis == 0
    ):
        scale = np.broadcast_to(qw.scale.reshape(-1), (OC,)).astype(np.float32)
        a.update(
            in_scale=src.attrs["scale"],
            w_scale=scale,
            qweight=qw.values.reshape(OC, -1),
            out_scale=0.0,
            qmin=-128,
            qmax=127,
        )
        return Op("qconv", [src.inputs[0]], [out], a, name)
    a["weight"] = w
    kind = "dwconv" if G == C and weight.shape[1] == 1 else "conv"
    return Op(kind, [x], [out], a, name)


def _symmetric_s8(q: dict[str, Any]) -> bool:
    return q["zp"] == 0 and q["qmin"] == -128 and q["qmax"] == 127


def lower_gemm(
    op_type: str,
    name: str,
    ins: list[str],
    out: str,
    attrs: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    consts: dict[str, np.ndarray],
    qweights: dict[str, QuantWeight],
    producers: dict[str, Op],
) -> list[Op]:
    a_name, b_name = ins[0], ins[1]
    a_shape = tuple(consts[a_name].shape) if a_name in consts else shapes[a_name]
    b_shape = tuple(consts[b_name].shape) if b_name in consts else shapes[b_name]
    ops: list[Op] = []
    if op_type == "Gemm":
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        ta, tb = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
        M, K = (a_shape[1], a_shape[0]) if ta else a_shape
        N = b_shape[0] if tb else b_shape[1]
        c_name = ins[2] if len(ins) > 2 and ins[2] else None
        if ta:
            if a_name in consts:
                consts[a_name + "__T"] = np.ascontiguousarray(consts[a_name].T)
            else:
                shapes[a_name + "__T"] = (M, K)
                ops.append(Op("transpose", [a_name], [a_name + "__T"], {"rows": K, "cols": M}, name))
            a_name = a_name + "__T"
        bias = None
        if c_name is not None and c_name in consts:
            full = np.broadcast_to(beta * consts[c_name].astype(np.float32), (M, N))
            bias = (full[0].copy(), "col") if np.all(full == full[0]) else (full.copy(), "full")
        src = producers.get(ins[0])
        qw = qweights.get(b_name)
        quantized = (
            not ta
            and qw is not None
            and src is not None
            and src.kind == "fakequant"
            and _symmetric_s8(src.attrs)
            and qw.values.dtype == np.int8
            and not np.any(qw.zero_point)
            and (qw.scale.size == 1 or qw.axis == (0 if tb else 1))
            and (c_name is None or (bias is not None and bias[1] == "col"))
        )
        if quantized:
            wt = qw.values if tb else qw.values.T  # [N][K]
            scale = np.broadcast_to(qw.scale.reshape(-1), (N,)).astype(np.float32) * alpha
            return [*ops, _qgemm(name, src.inputs[0], out, M, N, K, wt, scale, src.attrs["scale"], bias)]
        if b_name in consts:
            wk = consts[b_name].astype(np.float32)
            wk = (wk.T if tb else wk) * np.float32(alpha)
            bk = f"{b_name}__KN"
            consts[bk] = np.ascontiguousarray(wk)
            b_name = bk
        else:
            if alpha != 1.0:
                raise PluginError(f"neon: Gemm {name} with alpha != 1 needs a constant B")
            if tb:
                shapes[b_name + "__T"] = (K, N)
                ops.append(Op("transpose", [b_name], [b_name + "__T"], {"rows": N, "cols": K}, name))
                b_name = b_name + "__T"
        a = {
            "M": M,
            "N": N,
            "K": K,
            "batch": 1,
            "sa": 0,
            "sb": 0,
            "act": 0,
            "p0": 0.0,
            "p1": 0.0,
            "bias": None,
            "bias_mode": "none",
        }
        if bias is not None:
            key = f"{out}__bias"
            consts[key] = np.ascontiguousarray(bias[0], dtype=np.float32)
            a.update(bias=key, bias_mode=bias[1])
        ops.append(Op("gemm", [a_name, b_name], [out], a, name))
        if c_name is not None and bias is None:
            if beta != 1.0:
                raise PluginError(f"neon: Gemm {name} with beta != 1 needs a constant C")
            tmp = out + "__noC"
            shapes[tmp] = (M, N)
            ops[-1].outputs = [tmp]
            ops.append(
                Op(
                    "binary",
                    [tmp, c_name],
                    [out],
                    {"op": "Add", "a_shape": (M, N), "b_shape": shapes.get(c_name, ())},
                    name,
                )
            )
        return ops
    # MatMul with numpy semantics
    a_s = (1, *a_shape) if len(a_shape) == 1 else a_shape
    b_s = (*b_shape, 1) if len(b_shape) == 1 else b_shape
    M, K, N = a_s[-2], a_s[-1], b_s[-1]
    src = producers.get(a_name)
    qw = qweights.get(b_name)
    if (
        len(b_shape) == 2
        and qw is not None
        and src is not None
        and src.kind == "fakequant"
        and _symmetric_s8(src.attrs)
        and qw.values.dtype == np.int8
        and not np.any(qw.zero_point)
        and (qw.scale.size == 1 or qw.axis == 1)
    ):
        rows = int(np.prod(a_s[:-1]))
        scale = np.broadcast_to(qw.scale.reshape(-1), (N,)).astype(np.float32)
        return [_qgemm(name, src.inputs[0], out, rows, N, K, qw.values.T, scale, src.attrs["scale"], None)]
    a_batch, b_batch = a_s[:-2], b_s[:-2]
    if len(b_s) == 2:
        rows = int(np.prod(a_s[:-1]))
        attrs_ = {"M": rows, "N": N, "K": K, "batch": 1, "sa": 0, "sb": 0}
    else:
        out_batch = np.broadcast_shapes(a_batch, b_batch)
        nb = int(np.prod(out_batch))
        pa, pb = int(np.prod(a_batch)), int(np.prod(b_batch))
        if pa not in (1, nb) or pb not in (1, nb):
            raise PluginError(f"neon: MatMul {name} broadcasts batch dimensions partially; not supported")
        attrs_ = {
            "M": M,
            "N": N,
            "K": K,
            "batch": nb,
            "sa": M * K if pa == nb else 0,
            "sb": K * N if pb == nb else 0,
        }
    if b_name in consts:
        consts[b_name] = np.ascontiguousarray(consts[b_name], dtype=np.float32)
    attrs_.update(act=0, p0=0.0, p1=0.0, bias=None, bias_mode="none")
    return [Op("gemm", [a_name, b_name], [out], attrs_, name)]


def _qgemm(
    name: str,
    x: str,
    out: str,
    M: int,
    N: int,
    K: int,
    wt: np.ndarray,
    w_scale: np.ndarray,
    in_scale: float,
    bias: tuple[np.ndarray, str] | None,
) -> Op:
    if bias is not None and bias[1] != "col":
        raise PluginError(f"neon: int8 Gemm {name} has a bias that is not per output column")
    return Op(
        "qgemm",
        [x],
        [out],
        {
            "M": M,
            "N": N,
            "K": K,
            "qweight": np.ascontiguousarray(wt, np.int8),
            "w_scale": w_scale,
            "in_scale": in_scale,
            "bias_values": None if bias is None else bias[0].astype(np.float32),
            "act": 0,
            "p0": 0.0,
            "p1": 0.0,
            "out_scale": 0.0,
            "qmin": -128,
            "qmax": 127,
        },
        name,
    )
