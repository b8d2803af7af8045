"""Rewrites of a lowered Program: activation fusion, int8 output-quantization fusion, dead code removal."""

from __future__ import annotations

from edgeplug import PluginError

from .program import ACT_CODES, Op, Program


def _consumers(program: Program) -> dict[str, list[Op]]:
    users: dict[str, list[Op]] = {}
    for op in program.ops:
        if op.kind == "quantize":  # folded into the fake-quant op that follows it
            continue
        for name in op.inputs:
            users.setdefault(name, []).append(op)
    return users


FUSABLE = ("conv", "dwconv", "gemm", "qconv", "qgemm")


def fuse_activations(program: Program) -> None:
    """conv/gemm followed by its only consumer Relu/Clip/HardSwish/... -> one kernel with an epilogue."""
    changed = True
    while changed:
        changed = False
        users = _consumers(program)
        for op in program.ops:
            if op.kind not in FUSABLE or op.attrs.get("act"):
                continue
            out = op.outputs[0]
            nxt = users.get(out, [])
            if len(nxt) != 1 or nxt[0].kind != "act" or out in program.outputs:
                continue
            if op.attrs.get("out_scale") and nxt[0].attrs["act"] != ACT_CODES["Relu"]:
                continue  # only Relu commutes with a symmetric fake quantization: relu(fq(v)) == fq(relu(v))
            act = nxt[0]
            op.attrs.update(act=act.attrs["act"], p0=act.attrs["p0"], p1=act.attrs["p1"])
            op.outputs = list(act.outputs)
            program.ops.remove(act)
            changed = True
            break


def fuse_output_quant(program: Program) -> None:
    """An int8 kernel whose only consumer is a symmetric s8 Q->DQ pair writes the quantized grid itself."""
    users = _consumers(program)
    for op in list(program.ops):
        if op.kind not in ("qconv", "qgemm") or op.outputs[0] in program.outputs:
            continue
        nxt = users.get(op.outputs[0], [])
        if len(nxt) == 1 and nxt[0].kind == "fakequant" and nxt[0].attrs["zp"] == 0:
            fq = nxt[0]
            op.attrs.update(out_scale=fq.attrs["scale"], qmin=fq.attrs["qmin"], qmax=fq.attrs["qmax"])
            op.outputs = list(fq.outputs)
            program.ops.remove(fq)


def drop_dead(program: Program) -> None:
    """Remove ops (quantize, unused fake-quant pairs) whose outputs nothing reads."""
    needed = set(program.outputs)
    keep: list[Op] = []
    for op in reversed(program.ops):
        if op.kind == "quantize":
            if any(o in needed for o in op.outputs):
                raise PluginError(
                    f"neon: the int8 output of QuantizeLinear {op.name} is used without a "
                    "DequantizeLinear; only QDQ pairs compile"
                )
            continue
        if any(o in needed for o in op.outputs):
            keep.append(op)
            needed.update(op.inputs)
            for key in ("weight", "bias"):
                if isinstance(op.attrs.get(key), str):
                    needed.add(op.attrs[key])
    program.ops = list(reversed(keep))
    program.consts = {k: v for k, v in program.consts.items() if k in needed}
