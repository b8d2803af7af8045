"""Emit model.c, model.h and the test driver from a lowered Program and its memory plan."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from edgeplug import PluginError

from . import c_templates
from .arena import Plan, align, plan
from .c_templates import PREFIX
from .program import Op, Program

ACT_NAMES = {0: "none", 1: "relu", 2: "clip", 3: "sigmoid", 4: "hardsigmoid", 5: "hardswish"}


@dataclass
class Generated:
    model_c: str
    model_h: str
    driver_c: str
    io: dict[str, Any]  # inputs/outputs: name, C name, shape; scratch_bytes; ops summary


C_RESERVED = frozenset(
    [
        "auto",
        "break",
        "case",
        "char",
        "const",
        "continue",
        "default",
        "do",
        "double",
        "else",
        "enum",
        "extern",
        "float",
        "for",
        "goto",
        "if",
        "inline",
        "int",
        "long",
        "register",
        "restrict",
        "return",
        "short",
        "signed",
        "sizeof",
        "static",
        "struct",
        "switch",
        "typedef",
        "union",
        "unsigned",
        "void",
        "volatile",
        "while",
        "size_t",
        "int8_t",
        "int32_t",
        "uint32_t",
        "memcpy",
        "memset",
        "bi",
        "g",
        "m",
    ]
)


def c_ident(name: str, used: set[str]) -> str:
    """A C identifier for an ONNX name, unique in `used`, never a keyword or one of the kernels' names."""
    base = re.sub(r"[^0-9A-Za-z_]", "_", name) or "t"
    if base[0].isdigit() or base in C_RESERVED or base.lower().startswith(("ep_", "edgeplug_", "__")):
        base = "v_" + base
    ident, k = base, 1
    while ident in used:
        ident, k = f"{base}_{k}", k + 1
    used.add(ident)
    return ident


def cfloat(v: float) -> str:
    if np.isposinf(v):
        return "INFINITY"
    if np.isneginf(v):
        return "-INFINITY"
    return f"{float(np.float32(v))!r}f"


def padded_hw(a: dict[str, Any]) -> tuple[int, int]:
    """Height and width of the zero-padded int8 copy of a convolution input."""
    hp = max(a["H"] + a["PT"] + a["PB"], (a["OH"] - 1) * a["SH"] + (a["KH"] - 1) * a["DH"] + 1)
    wp = max(a["W"] + a["PL"] + a["PR"], (a["OW"] - 1) * a["SW"] + (a["KW"] - 1) * a["DW"] + 1)
    return hp, wp


def kpad(k: int) -> int:
    return (k + 15) // 16 * 16


def workspace_bytes(op: Op) -> int:
    a = op.attrs
    if op.kind == "conv":
        direct = (
            a["KH"] == a["KW"] == a["SH"] == a["SW"] == 1
            and a["PT"] == a["PL"] == 0
            and a["OH"] == a["H"]
            and a["OW"] == a["W"]
        )
        K = (a["C"] // a["G"]) * a["KH"] * a["KW"]
        return 4 * K * ((0 if direct else a["OH"] * a["OW"]) + 16)
    if op.kind == "qconv":
        kp = kpad(a["C"] // a["G"] * a["KH"] * a["KW"])
        hp, wp = padded_hw(a)
        n = a["OH"] * a["OW"]
        return align(a["C"] * hp * wp) + align(n * kp) + 4 * n
    if op.kind == "qgemm":
        return align(a["M"] * kpad(a["K"])) + 4 * a["M"]
    if op.kind == "gemm":
        return 4 * a["K"] * 16
    return 0


class Emitter:
    """Turns ops into C statements; collects constant arrays on the way."""

    def __init__(self, program: Program, memplan: Plan, ws_offset: int) -> None:
        self.p = program
        self.plan = memplan
        self.ws = ws_offset
        self.used: set[str] = {"arena", "scratch", "ws"}
        self.const_names: dict[str, str] = {}
        self.const_decls: list[str] = []
        self.ptr: dict[str, str] = {}
        self.weight_bytes = 0

    def const(self, key: str, array: np.ndarray, dtype: str = "float") -> str:
        if key in self.const_names:
            return self.const_names[key]
        ident = c_ident("w_" + key, self.used)
        self.const_names[key] = ident
        flat = np.ascontiguousarray(array).ravel()
        n = max(flat.size, 1)
        if dtype == "float":
            bits = flat.astype(np.float32).view(np.uint32)
            body = ",".join(f"{v:#x}" for v in bits.tolist()) or "0"
            self.const_decls.append(
                f"static const union {{ uint32_t u[{n}]; float f[{n}]; }} {ident}_u EP_ALIGN = {{{{{body}}}}};\n"
                f"#define {ident} ({ident}_u.f)\n"
            )
            self.weight_bytes += 4 * flat.size
        else:
            ctype, np_type = {"int8": ("int8_t", np.int8), "int32": ("int32_t", np.int32)}[dtype]
            body = ",".join(str(v) for v in flat.astype(np_type).tolist()) or "0"
            self.const_decls.append(f"static const {ctype} {ident}[{n}] EP_ALIGN = {{{body}}};\n")
            self.weight_bytes += flat.size * np.dtype(np_type).itemsize
        return ident

    def buf(self, name: str) -> str:
        if name in self.p.consts and self.plan.root.get(name, name) == name and name not in self.ptr:
            return self.const(name, self.p.consts[name])
        root = self.plan.root.get(name, name)
        if root in self.p.consts:
            return self.const(root, self.p.consts[root])
        return self.ptr[root]

    def statements(self, op: Op) -> list[str]:
        a = op.attrs
        k = op.kind
        if k == "alias":
            return []
        i0 = self.buf(op.inputs[0])
        out = self.buf(op.outputs[0])
        act = f"{a.get('act', 0)}, {cfloat(a.get('p0', 0.0))}, {cfloat(a.get('p1', 0.0))}"
        if k in ("conv", "dwconv"):
            w = self.p.consts[a["weight"]].astype(np.float32)
            wc = self.const(a["weight"], w.reshape(w.shape[0], -1))
            bias = self.const(a["bias"], self.p.consts[a["bias"]]) if a["bias"] else "0"
            geo = (
                f"{a['KH']}, {a['KW']}, {a['SH']}, {a['SW']}, {a['PT']}, {a['PL']}, {a['DH']}, {a['DW']}, "
                f"{a['OH']}, {a['OW']}"
            )
            if k == "dwconv":
                return [
                    f"ep_dwconv({i0}, {wc}, {bias}, {out}, {a['C']}, {a['H']}, {a['W']}, {a['OC']}, {geo}, {act});"
                ]
            return [
                f"ep_conv2d({i0}, {wc}, {bias}, {out}, {a['C']}, {a['H']}, {a['W']}, {a['OC']}, {a['G']}, "
                f"{geo}, {act}, (float*)ws);"
            ]
        if k == "gemm":
            M, N, K = a["M"], a["N"], a["K"]
            mode = {"none": 0, "row": 1, "col": 2, "full": 3}[a["bias_mode"]]
            bias = self.const(a["bias"], self.p.consts[a["bias"]]) if a["bias"] else "0"
            epi = f"{bias}, {mode}, {N}, {act}"
            if a["batch"] == 1 and M <= 4 and op.inputs[1] in self.p.consts:
                # few rows against constant weights: contiguous dot products over W stored [N][K]
                wt = self.const(op.inputs[1] + "__NK", np.ascontiguousarray(self.p.consts[op.inputs[1]].T))
                return [f"ep_gemv_f32({M}, {N}, {K}, {i0}, {wt}, {out}, {epi});"]
            b = self.buf(op.inputs[1])
            if a["batch"] == 1:
                return [f"ep_gemm_f32({M}, {N}, {K}, {i0}, {K}, {b}, {N}, {out}, {N}, {epi}, (float*)ws);"]
            lines = [
                f"for (int bi = 0; bi < {a['batch']}; ++bi) ep_gemm_f32({M}, {N}, {K}, "
                f"{i0} + (size_t)bi * {a['sa']}, {K}, {b} + (size_t)bi * {a['sb']}, {N}, "
                f"{out} + (size_t)bi * {M * N}, {N}, 0, 0, 0, 0, 0.0f, 0.0f, (float*)ws);"
            ]
            if mode or a["act"]:
                lines.append(f"ep_epilogue({out}, {M * a['batch']}, {N}, {N}, {epi});")
            return lines
        if k == "transpose":
            return [f"ep_transpose2d({i0}, {out}, {a['rows']}, {a['cols']});"]
        if k == "act":
            return [f"ep_activation({i0}, {out}, {self.p.size(op.outputs[0])}, {act});"]
        if k == "binary":
            return self.binary(op, i0, out)
        if k == "pool":
            return [
                f"ep_pool({a['is_max']}, {i0}, {out}, {a['C']}, {a['H']}, {a['W']}, {a['KH']}, {a['KW']}, "
                f"{a['SH']}, {a['SW']}, {a['PT']}, {a['PL']}, {a['PB']}, {a['PR']}, {a['DH']}, {a['DW']}, "
                f"{a['OH']}, {a['OW']}, {a['count_include_pad']});"
            ]
        if k == "gap":
            return [f"ep_global_avgpool({i0}, {out}, {a['C']}, {a['HW']});"]
        if k == "softmax":
            return [f"ep_softmax({i0}, {out}, {a['outer']}, {a['n']}, {a['inner']});"]
        if k == "concat":
            lines, offset = [], 0
            for name, block in zip(op.inputs, a["blocks"]):
                lines.append(
                    f"ep_concat_part({self.buf(name)}, {out}, {a['outer']}, {block}, {a['stride']}, {offset});"
                )
                offset += block
            return lines
        if k == "gather":
            idx = self.const(op.outputs[0] + "_idx", a["index"], "int32")
            return [f"ep_gather_plane({i0}, {out}, {a['C']}, {a['HW']}, {a['OHW']}, {idx});"]
        if k == "fakequant":
            return [
                f"ep_fake_quant({i0}, {out}, {self.p.size(op.outputs[0])}, {cfloat(a['scale'])}, {a['zp']}, "
                f"{a['qmin']}, {a['qmax']});"
            ]
        if k == "qconv":
            return self.qconv(op, i0, out, act)
        if k == "qgemm":
            return self.qgemm(op, i0, out, act)
        raise PluginError(f"neon: internal error, no C for op kind {k}")

    def binary(self, op: Op, a_buf: str, b_buf: str) -> list[str]:
        out_shape = self.p.shapes[op.outputs[0]]
        dims, sa, sb = broadcast_strides(out_shape, op.attrs["a_shape"], op.attrs["b_shape"])
        b_in = self.buf(op.inputs[1])
        code = 0 if op.attrs["op"] == "Add" else 1
        if sa[3] != 1 and sb[3] == 1:  # keep the contiguous operand first (both ops commute)
            a_buf, b_in, sa, sb = b_in, a_buf, sb, sa
        arr = lambda v: "{" + ", ".join(str(x) for x in v) + "}"  # noqa: E731
        return [
            f"{{ static const int d[4] = {arr(dims)}, sa[4] = {arr(sa)}, sb[4] = {arr(sb)}; "
            f"ep_binary({code}, {a_buf}, {b_in}, {b_buf}, d, sa, sb); }}"
        ]

    def qconv(self, op: Op, x: str, out: str, act: str) -> list[str]:
        a = op.attrs
        cg, ocg = a["C"] // a["G"], a["OC"] // a["G"]
        K = cg * a["KH"] * a["KW"]
        kp = kpad(K)
        wq = np.zeros((a["OC"], kp), np.int8)
        wq[:, :K] = a["qweight"].reshape(a["OC"], K)
        wc = self.const(op.outputs[0] + "_qw", wq, "int8")
        sc = self.const(op.outputs[0] + "_qs", a["w_scale"] * np.float32(a["in_scale"]))
        bias = self.const(a["bias"], self.p.consts[a["bias"]]) if a["bias"] else "0"
        N = a["OH"] * a["OW"]
        hp, wp = padded_hw(a)
        padded = a["C"] * hp * wp
        rows = f"(int8_t*)ws + {align(padded)}"
        acc = f"(int32_t*)(ws + {align(padded) + align(N * kp)})"
        return [
            f"ep_quantize_pad_s8({x}, (int8_t*)ws, {a['C']}, {a['H']}, {a['W']}, {a['PT']}, {a['PL']}, {hp}, {wp}, "
            f"{cfloat(a['in_scale'])});",
            f"for (int g = 0; g < {a['G']}; ++g) {{ ep_im2row_s8((const int8_t*)ws + (size_t)g * {cg * hp * wp}, "
            f"{cg}, {hp}, {wp}, {a['KH']}, {a['KW']}, {a['SH']}, {a['SW']}, {a['DH']}, {a['DW']}, {a['OH']}, "
            f"{a['OW']}, {kp}, {rows}); "
            f"ep_gemm_s8({ocg}, {N}, {kp}, {wc} + (size_t)g * {ocg * kp}, {rows}, {sc} + g * {ocg}, "
            f"{bias if bias == '0' else f'{bias} + g * {ocg}'}, {out} + (size_t)g * {ocg * N}, {N}, 1, {act}, "
            f"{cfloat(a['out_scale'])}, {a['qmin']}, {a['qmax']}, {acc}); }}",
        ]

    def qgemm(self, op: Op, x: str, out: str, act: str) -> list[str]:
        a = op.attrs
        M, N, K = a["M"], a["N"], a["K"]
        kp = kpad(K)
        wq = np.zeros((N, kp), np.int8)
        wq[:, :K] = a["qweight"]
        wc = self.const(op.outputs[0] + "_qw", wq, "int8")
        sc = self.const(op.outputs[0] + "_qs", a["w_scale"] * np.float32(a["in_scale"]))
        bias = "0" if a["bias_values"] is None else self.const(op.outputs[0] + "_qb", a["bias_values"])
        return [
            f"for (int m = 0; m < {M}; ++m) {{ ep_quantize_s8({x} + (size_t)m * {K}, (int8_t*)ws + (size_t)m * {kp}, "
            f"{K}, {cfloat(a['in_scale'])}); memset((int8_t*)ws + (size_t)m * {kp} + {K}, 0, {kp - K}); }}",
            f"ep_gemm_s8({N}, {M}, {kp}, {wc}, (const int8_t*)ws, {sc}, {bias}, {out}, 1, {N}, {act}, "
            f"{cfloat(a['out_scale'])}, {a['qmin']}, {a['qmax']}, (int32_t*)(ws + {align(M * kp)}));",
        ]


def broadcast_strides(
    out: tuple[int, ...], a: tuple[int, ...], b: tuple[int, ...]
) -> tuple[list[int], list[int], list[int]]:
    """Collapse a numpy broadcast to at most 4 dims with element strides (0 where broadcast)."""
    r = len(out)

    def strides(shape: tuple[int, ...]) -> list[int]:
        s = (1,) * (r - len(shape)) + tuple(shape)
        st, acc = [0] * r, 1
        for i in reversed(range(r)):
            st[i] = acc if s[i] != 1 else 0
            acc *= s[i]
        return st

    sa, sb = strides(a), strides(b)
    dims = [(out[i], sa[i], sb[i]) for i in range(r) if out[i] != 1]
    merged: list[list[int]] = []
    for d, x, y in dims:
        if merged:
            pd, px, py = merged[-1]
            if px == x * d and py == y * d:  # contiguous with the previous dim for both operands
                merged[-1] = [pd * d, x, y]
                continue
        merged.append([d, x, y])
    if len(merged) > 4:
        raise PluginError(f"neon: a broadcast over shape {list(out)} needs more than 4 dimensions")
    while len(merged) < 4:
        merged.insert(0, [1, 0, 0])
    return [m[0] for m in merged], [m[1] for m in merged], [m[2] for m in merged]


def generate(program: Program) -> Generated:
    """Plan memory and emit the C sources."""
    ws = max((workspace_bytes(op) for op in program.ops), default=0)
    memplan = plan(program, ws)
    ws_offset = memplan.arena_bytes - align(ws)
    em = Emitter(program, memplan, ws_offset)
    in_ids = [c_ident(n, em.used) for n in program.inputs]
    out_ids = [c_ident(n, em.used) for n in program.outputs]
    decls: list[str] = []
    for root, st in memplan.storage.items():
        if st.kind == "const":
            continue
        ident = c_ident("t_" + root, em.used)
        em.ptr[root] = ident
        if st.kind == "input":
            decls.append(f"    float* {ident} = (float*){in_ids[st.index]};")
        elif st.kind == "output":
            decls.append(f"    float* {ident} = {out_ids[st.index]};")
        else:
            decls.append(f"    float* {ident} = (float*)(arena + {st.index});  /* {root} */")
    body: list[str] = []
    summary: dict[str, int] = {}
    for op in program.ops:
        summary[op.kind] = summary.get(op.kind, 0) + 1
        lines = em.statements(op)
        if lines:
            extra = f" +{ACT_NAMES[op.attrs['act']]}" if op.attrs.get("act") else ""
            body.append(
                f"    /* {op.name or op.kind}: {op.kind}{extra} -> {op.outputs[0]} {list(program.shapes[op.outputs[0]])} */"
            )
            body.extend("    " + line for line in lines)
    for index, name in memplan.copies:
        body.append(
            f"    memcpy({out_ids[index]}, {em.buf(name)}, {4 * program.size(program.outputs[index])});"
        )
    scratch = max(memplan.arena_bytes, 64)
    io = {
        "inputs": [
            {"name": n, "c_name": c, "shape": list(program.shapes[n])} for n, c in zip(program.inputs, in_ids)
        ],
        "outputs": [
            {"name": n, "c_name": c, "shape": list(program.shapes[n])}
            for n, c in zip(program.outputs, out_ids)
        ],
        "scratch_bytes": scratch,
        "workspace_bytes": ws,
        "arena_without_reuse_bytes": memplan.peak_naive + align(ws),
        "weight_bytes": em.weight_bytes,
        "kernels": summary,
        "int8": program.is_int8,
    }
    header = c_templates.header(io)
    kernels = resources.files("edgeplug_neon").joinpath("kernels.c").read_text()
    params = ", ".join(
        [*(f"const float* {c}" for c in in_ids), *(f"float* {c}" for c in out_ids), "void* scratch"]
    )
    c = [
        "/* Generated by edgeplug neon: a self-contained float32/int8 inference function, NCHW, batch 1. */",
        '#include "model.h"',
        kernels,
        "/* ---- weights ---- */",
        *em.const_decls,
        f"static unsigned char ep_static_arena[{PREFIX.upper()}_SCRATCH_BYTES] EP_ALIGN;",
        "",
        f"int {PREFIX}_run({params}) {{",
        "    unsigned char* arena = scratch ? (unsigned char*)scratch : ep_static_arena;",
        f"    unsigned char* ws = arena + {ws_offset};",
        "    (void)ws;",
        *decls,
        *body,
        "    return 0;",
        "}",
        "",
        f"int {PREFIX}_run_v(const float* const* inputs, float* const* outputs, void* scratch) {{",
        f"    return {PREFIX}_run({', '.join([*(f'inputs[{i}]' for i in range(len(in_ids))), *(f'outputs[{i}]' for i in range(len(out_ids))), 'scratch'])});",
        "}",
        "",
    ]
    return Generated("\n".join(c), header, c_templates.driver(io), io)
