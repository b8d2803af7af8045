"""Least-squares reconstruction of the layers that lost input channels (ThiNet / channel-pruning style).

For each such layer, in graph order: gather its input patches X from the *pruned* model (with the
layers before it already reconstructed) and its output Y from the *original* model on calibration
samples, then solve min ||[X 1] W' - Y||^2 + ridge * ||W' - W||^2 with numpy.linalg.lstsq; W' becomes the
layer's weight and bias. The bias absorbs the mean contribution of the removed channels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

RIDGE = 1e-2  # relative to the mean diagonal of X^T X
MAX_ROWS = 16384
BATCH = 64


@dataclass
class Sink:
    """A layer to reconstruct: its node, input/output tensors and attributes."""

    name: str
    op: str
    source: str
    output: str
    attrs: dict[str, Any]


def run_tensors(
    proto: onnx.ModelProto, names: Sequence[str], samples: Sequence[dict[str, np.ndarray]], threads: int = 1
) -> Iterator[list[np.ndarray]]:
    """Yield the values of tensors `names` (intermediate ones included) batch by batch."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    for batch in batches(sess, samples):
        yield [np.asarray(v) for v in sess.run(list(names), batch)]


def batches(
    sess: ort.InferenceSession, samples: Sequence[dict[str, np.ndarray]]
) -> Iterator[dict[str, np.ndarray]]:
    """Stack samples into batches when every input's batch dimension is dynamic, else one by one."""
    dynamic = all(not isinstance(i.shape[0], int) for i in sess.get_inputs() if i.shape)
    step = BATCH if dynamic else 1
    for start in range(0, len(samples), step):
        chunk = samples[start : start + step]
        yield {k: np.concatenate([s[k] for s in chunk], axis=0) for k in chunk[0]}


def conv_geometry(attrs: dict[str, Any], weight_shape: Sequence[int], in_hw: Sequence[int]) -> dict[str, Any]:
    """Kernel, strides, dilations and (top, left, bottom, right) pads of a 2-D Conv."""
    kh, kw = int(weight_shape[2]), int(weight_shape[3])
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in ((in_hw[0], kh, sh, dh), (in_hw[1], kw, sw, dw)):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            pads.append((total - small, small) if auto == "SAME_LOWER" else (small, total - small))
        top, left, bottom, right = pads[0][0], pads[1][0], pads[0][1], pads[1][1]
    elif auto == "VALID":
        top = left = bottom = right = 0
    else:
        top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    return {"k": (kh, kw), "s": (sh, sw), "d": (dh, dw), "pads": (top, left, bottom, right)}


def patches(x: np.ndarray, geo: dict[str, Any], oy: np.ndarray, ox: np.ndarray) -> np.ndarray:
    """im2col rows [P, C*kh*kw] of one input [C, H, W] at output positions (oy, ox)."""
    top, left, bottom, right = geo["pads"]
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    (kh, kw), (sh, sw), (dh, dw) = geo["k"], geo["s"], geo["d"]
    iy = oy[:, None] * sh + np.arange(kh)[None, :] * dh
    ix = ox[:, None] * sw + np.arange(kw)[None, :] * dw
    cols = xp[:, iy[:, :, None], ix[:, None, :]]  # [C, P, kh, kw]
    return cols.transpose(1, 0, 2, 3).reshape(len(oy), -1)


def ridge_solve(
    x: np.ndarray, y: np.ndarray, bias: bool, prior: np.ndarray | None = None, ridge: float = RIDGE
) -> np.ndarray:
    """W minimizing ||[x 1] W - y||^2 + lam ||W - prior||^2 (numpy.linalg.lstsq on the normal equations).

    The ridge pulls towards `prior` (the pruned layer's current weights, bias row last), not towards zero,
    so a layer with few calibration rows keeps what it had instead of shrinking."""
    x = x.astype(np.float64)
    if bias:
        x = np.hstack([x, np.ones((len(x), 1))])
    gram = x.T @ x
    lam = ridge * float(np.trace(gram)) / max(gram.shape[0], 1)
    rhs = x.T @ y.astype(np.float64)
    if prior is not None:
        rhs += lam * prior
    solution, *_ = np.linalg.lstsq(gram + lam * np.eye(gram.shape[0]), rhs, rcond=None)
    return solution


def reconstruct(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    sinks: Sequence[str],
    kept_out: dict[str, np.ndarray],
    samples: Sequence[dict[str, np.ndarray]],
    threads: int = 1,
    seed: int = 0,
    ridge: float = RIDGE,
    progress: Callable[[Iterable[Any], str], Iterable[Any]] = lambda items, label: items,
) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Refit the weights of `sinks` in a copy of `pruned`; returns it and one report row per layer."""
    out = onnx.ModelProto()
    out.CopyFrom(pruned)
    nodes = {n.name: n for n in out.graph.node}
    todo = [_sink(nodes[name]) for name in sinks if _refittable(out, nodes[name])]
    rng = np.random.default_rng(seed)
    rows_per = {s.name: _row_budget(s, out) for s in todo}
    # the original model's outputs of every sink, at the sampled positions
    positions: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {s.name: [] for s in todo}
    targets: dict[str, list[np.ndarray]] = {s.name: [] for s in todo}
    per_sample = {s.name: max(1, rows_per[s.name] // max(len(samples), 1)) for s in todo}
    for values in run_tensors(original, [s.output for s in todo], samples, threads):
        for sink, y in zip(todo, values):
            if sink.op == "Conv":
                n, _, oh, ow = y.shape
                take = min(oh * ow, per_sample[sink.name])
                for b in range(n):
                    flat = rng.choice(oh * ow, size=take, replace=False)
                    oy, ox = np.divmod(flat, ow)
                    positions[sink.name].append((b, oy, ox))
                    targets[sink.name].append(y[b][:, oy, ox].T)
            else:
                targets[sink.name].append(y.reshape(-1, y.shape[-1]))
    report = []
    for sink in progress(todo, "reconstruct"):
        y = np.concatenate(targets.pop(sink.name), axis=0)
        if sink.name in kept_out:
            y = y[:, kept_out[sink.name]]
        x = _inputs(out, sink, samples, positions.pop(sink.name), threads)
        if sink.op != "Conv" and len(x) > rows_per[sink.name]:
            pick = rng.choice(len(x), size=rows_per[sink.name], replace=False)
            x, y = x[pick], y[pick]
        report.append(_refit(out, nodes[sink.name], sink, x, y, ridge))
    return out, report


def _sink(node: onnx.NodeProto) -> Sink:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return Sink(node.name, node.op_type, node.input[0], node.output[0], attrs)


def _refittable(proto: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """2-D Convs (group 1), Gemm and MatMul whose weight (and bias) are initializers."""
    names = {t.name: t for t in proto.graph.initializer}
    weight = names.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or (len(node.input) > 2 and node.input[2] and node.input[2] not in names):
        return False
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return len(weight.dims) == 4 and group == 1
    return node.op_type in ("Gemm", "MatMul") and len(weight.dims) == 2


def _row_budget(sink: Sink, proto: onnx.ModelProto) -> int:
    """Rows of X to gather: enough for a well-posed fit, bounded in memory for wide layers."""
    weight = _init(proto, _node(proto, sink.name).input[1])
    width = max(int(np.prod(weight.dims[1:])), int(weight.dims[0]))
    return int(min(MAX_ROWS, max(2048, 2**23 // max(width, 1))))


def _inputs(
    proto: onnx.ModelProto,
    sink: Sink,
    samples: Sequence[dict[str, np.ndarray]],
    positions: list[tuple[int, np.ndarray, np.ndarray]],
    threads: int,
) -> np.ndarray:
    """The sink's input rows from the current (partly reconstructed) pruned model."""
    rows: list[np.ndarray] = []
    node = _node(proto, sink.name)
    wshape = list(_init(proto, node.input[1]).dims)
    cursor = 0
    for (x,) in run_tensors(proto, [sink.source], samples, threads):
        if sink.op == "Conv":
            geo = conv_geometry(sink.attrs, wshape, x.shape[2:])
            for b in range(len(x)):
                _, oy, ox = positions[cursor]
                cursor += 1
                rows.append(patches(x[b], geo, oy, ox))
        else:
            rows.append(x.reshape(len(x), -1) if sink.op == "Gemm" else x.reshape(-1, x.shape[-1]))
    return np.concatenate(rows, axis=0).astype(np.float32)


def _refit(
    proto: onnx.ModelProto,
    node: onnx.NodeProto,
    sink: Sink,
    x: np.ndarray,
    y: np.ndarray,
    ridge: float = RIDGE,
) -> dict[str, Any]:
    weight_t = _init(proto, node.input[1])
    weight = numpy_helper.to_array(weight_t)
    bias = sink.op != "MatMul"
    old = _as_matrix(node, weight, sink)
    old_bias = _current_bias(proto, node, sink, old.shape[1])
    before = _rel_error(x @ old + old_bias, y)
    prior = np.vstack([old, old_bias[None, :]]) if bias else old
    solution = ridge_solve(x, y, bias, prior, ridge)
    w, b = (solution[:-1], solution[-1]) if bias else (solution, None)
    after = _rel_error(x @ w + (b if b is not None else 0.0), y)
    if after > before:  # never make a layer worse than plain pruning on the data it was fitted to
        return {
            "layer": sink.name,
            "op": sink.op,
            "rows": len(x),
            "error_before": before,
            "error_after": before,
            "kept_pruned_weights": True,
        }
    dtype = weight.dtype
    if sink.op == "Conv":
        new_w = w.T.reshape(weight.shape).astype(dtype)
    elif sink.op == "Gemm":
        new_w = (w.T if sink.attrs.get("transB", 0) else w).astype(dtype)
        _set_attr(node, "alpha", 1.0)
        _set_attr(node, "beta", 1.0)
    else:
        new_w = w.astype(dtype)
    _replace_init(proto, node, 1, new_w)
    if b is not None:
        _replace_init(proto, node, 2, b.astype(dtype))
    return {"layer": sink.name, "op": sink.op, "rows": len(x), "error_before": before, "error_after": after}


def _as_matrix(node: onnx.NodeProto, weight: np.ndarray, sink: Sink) -> np.ndarray:
    if sink.op == "Conv":
        return weight.reshape(weight.shape[0], -1).T
    if sink.op == "Gemm":
        alpha = float(sink.attrs.get("alpha", 1.0))
        return alpha * (weight.T if sink.attrs.get("transB", 0) else weight)
    return weight


def _current_bias(proto: onnx.ModelProto, node: onnx.NodeProto, sink: Sink, width: int) -> np.ndarray:
    if len(node.input) > 2 and node.input[2]:
        value = numpy_helper.to_array(_init(proto, node.input[2])).astype(np.float64)
        if sink.op == "Gemm":
            value = float(sink.attrs.get("beta", 1.0)) * value
        return np.broadcast_to(value.reshape(-1) if value.size == width else value, (width,))
    return np.zeros(width)


def _rel_error(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(pred - y) / (np.linalg.norm(y) + 1e-12))


def _node(proto: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.name == name)


def _init(proto: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in proto.graph.initializer if t.name == name)


def _replace_init(proto: onnx.ModelProto, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
    """Give `node` input `index` the value, in a fresh initializer when the old one is shared or absent."""
    users = 0
    if index < len(node.input) and node.input[index]:
        users = sum(1 for n in proto.graph.node for i in n.input if i == node.input[index])
    if users == 1:
        _init(proto, node.input[index]).CopyFrom(numpy_helper.from_array(value, node.input[index]))
        return
    name = f"{node.name}__{'bias' if index == 2 else 'weight'}_refit"
    proto.graph.initializer.append(numpy_helper.from_array(value, name))
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


def _set_attr(node: onnx.NodeProto, name: str, value: float) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.f = value
            return
    node.attribute.append(helper.make_attribute(name, value))
