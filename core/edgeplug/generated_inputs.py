"""Inputs generated from a model's input spec when no --data is given (as Polygraphy does): floats in [0, 1),
integers 0 or 1, and the values operators constrain (divisors, axes, pads, repeats, shapes, indices) made valid,
or a refusal naming the input to supply; bounded by the memory available."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError
from .model import Model, TensorSpec, available_memory, tensor_spec

GENERATED_MEMORY_SHARE = 0.5  # generated inputs may take half the available memory; the runs need the rest
STRING_VALUES = ("edgeplug", "Model", "data input", "")
Sample = dict[str, np.ndarray]


def generate_inputs(model: Model, count: int, seed: int) -> list[Sample]:
    """Inputs drawn from the input spec, as Polygraphy does: floats in [0,1), integers 0 or 1, booleans,
    short strings; an input whose values an operator constrains (a divisor, axes, pads, repeats, a shape)
    gets values that operator accepts, or a DataError names it and asks for --data."""
    check_generated_memory(model, count)
    plans = value_plans(model)
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    for _ in range(count):
        sample: Sample = {}
        for spec in model.inputs:
            plan = plans.get(spec.name)
            if plan is not None and plan.values is not None:
                sample[spec.name] = plan.fixed(spec)
                continue
            shape = concrete_shape(spec)
            if plan is not None:
                sample[spec.name] = rng.integers(plan.low, plan.high, shape).astype(spec.dtype)
            elif spec.dtype.kind == "f":
                sample[spec.name] = _uniform(rng, shape, spec.dtype)
            elif spec.dtype.kind == "b":
                sample[spec.name] = rng.integers(0, 2, shape).astype(bool)
            elif spec.dtype.kind in "OUS":
                sample[spec.name] = rng.choice(np.array(STRING_VALUES, dtype=object), shape)
            else:
                sample[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
        samples.append(sample)
    return samples


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Uniform [0, 1) in `dtype`, drawn as float64 in chunks (the values of one float64 draw, without a
    float64 copy of a large input)."""
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    chunk = 1 << 20
    for start in range(0, flat.size, chunk):
        stop = min(start + chunk, flat.size)
        flat[start:stop] = rng.random(stop - start, dtype=np.float64)
    return out


def generated_bytes(model: Model) -> int:
    """Bytes of one generated sample (every input at its concrete shape)."""
    total = 0
    for spec in model.inputs:
        elements = int(np.prod(concrete_shape(spec), dtype=object))
        total += elements * max(spec.dtype.itemsize, 8 if spec.dtype.kind == "O" else 1)
    return total


def check_generated_memory(model: Model, count: int) -> None:
    """Refuse generating inputs that would not fit in memory (a declared dimension of 2**31), with the
    sizes, before any is allocated."""
    per_sample = generated_bytes(model)
    needed = per_sample * count
    available = available_memory()
    if needed > available * GENERATED_MEMORY_SHARE:
        sizes = ", ".join(f"{s.name} {'x'.join(map(str, concrete_shape(s)))} {s.dtype}" for s in model.inputs)
        raise DataError(
            f"generated inputs would take {_size(needed)} ({count} samples of {sizes}), more than half "
            f"of the {_size(available)} of memory available; pin smaller dimensions with --input-shapes "
            "or pass --data FILE.npz"
        )


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} bytes"


def concrete_shape(spec: TensorSpec) -> tuple[int, ...]:
    """The input's shape with a dynamic batch dimension set to 1 (a fixed 0 is kept: an empty tensor is
    valid); other dynamic dimensions are refused with an --input-shapes value that pins them."""
    dims = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim >= 0:
            dims.append(dim)
        elif axis == 0:
            dims.append(1)
        else:
            pinned = "x".join(str(d) if isinstance(d, int) and d >= 0 else "1" for d in spec.shape)
            raise DataError(
                f"input {spec.name} has dynamic dimension {dim!r} at axis {axis}; pin it with "
                f"--input-shapes {spec.name}:{pinned} (1 for each dynamic dimension; any positive size works)"
            )
    return tuple(dims)


@dataclass(frozen=True)
class ValuePlan:
    """How to generate one input that an operator constrains: integers in [low, high), or fixed `values`
    (axes, a shape); `why` names the operator input it feeds."""

    why: str
    low: int = 0
    high: int = 2
    values: tuple[Any, ...] | None = None

    def same_values(self, other: ValuePlan) -> bool:
        return (self.low, self.high, self.values) == (other.low, other.high, other.values)

    def fixed(self, spec: TensorSpec) -> np.ndarray:
        array = np.asarray(self.values, dtype=spec.dtype)
        rank = len(spec.shape)
        if rank == 0 and array.size == 1:
            return array.reshape(())
        if rank != 1 or (isinstance(spec.shape[0], int) and spec.shape[0] != array.size):
            raise DataError(
                f"input {spec.name} ({spec.describe()}) feeds {self.why}, whose valid values edgeplug cannot "
                f"generate for this shape; pass real inputs with --data FILE.npz"
            )
        return array


PASS_THROUGH = {"Identity", "Cast", "CastLike"}  # value-preserving ops: constraints follow through them


def value_plans(model: Model) -> dict[str, ValuePlan]:
    """For each graph input whose generated values an operator would reject (a zero integer divisor, axes
    out of range, a negative repeat, a shape that does not fit the data), the values to generate instead.
    An input this cannot plan for is refused with a DataError naming it and the operator input it feeds."""
    proto = model.proto
    graph = proto.graph
    shapes = _known_shapes(model)
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, index))
    opset = model.opset
    plans: dict[str, ValuePlan] = {}
    for spec in model.inputs:
        chosen: ValuePlan | None = None
        pending = [spec.name]
        seen: set[str] = set()
        while pending:
            tensor = pending.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node, index in consumers.get(tensor, []):
                if node.op_type in PASS_THROUGH and node.domain in ("", "ai.onnx") and index == 0:
                    pending.extend(node.output)
                    continue
                plan = _plan_for(node, index, spec, shapes, opset)
                if plan is None:
                    continue
                if chosen is not None and not plan.same_values(chosen):
                    raise DataError(
                        f"input {spec.name} feeds both {chosen.why} and {plan.why}, which need different "
                        "values; pass real inputs with --data FILE.npz"
                    )
                chosen = plan
        if chosen is not None:
            plans[spec.name] = chosen
    return plans


def _known_shapes(model: Model) -> dict[str, tuple[int | str | None, ...]]:
    """Shapes of graph inputs (at the shape inputs are generated with), initializers and inferred values."""
    graph = model.proto.graph
    shapes: dict[str, tuple[int | str | None, ...]] = {}
    for value in (*graph.value_info, *graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tensor_spec(value).shape
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    for spec in model.inputs:
        try:
            shapes[spec.name] = concrete_shape(spec)
        except DataError:
            shapes[spec.name] = spec.shape
    return shapes


def _plan_for(
    node: Any, index: int, spec: TensorSpec, shapes: Mapping[str, tuple[Any, ...]], opset: int
) -> ValuePlan | None:
    """The plan for `spec` feeding input `index` of `node`, None when the op does not constrain it."""
    op = node.op_type if node.domain in ("", "ai.onnx") else None
    if op is None:
        return None
    integer = spec.dtype.kind in "iu"
    data = shapes.get(node.input[0]) if node.input else None
    rank = len(data) if data is not None else None
    why = f"{op} {node.name or node.output[0]!r}'s {_INPUT_NAMES.get(op, {}).get(index, f'input {index}')}"

    def refuse(what: str) -> DataError:
        return DataError(
            f"input {spec.name} feeds {why}, and edgeplug cannot generate valid values for it ({what}); "
            "pass real inputs with --data FILE.npz"
        )

    def dim(axis: int) -> int | None:
        if data is None or not -len(data) <= axis < len(data):
            return None
        value = data[axis]
        return value if isinstance(value, int) else None

    def length(default: int) -> int:
        first = spec.shape[0] if len(spec.shape) == 1 else 1
        return first if isinstance(first, int) else default

    def axes(count: int, out_rank: int | None) -> ValuePlan:
        if out_rank is None:
            raise refuse("the data's rank is unknown")
        if count > out_rank:
            raise refuse(f"{count} axes for rank {out_rank}")
        return ValuePlan(why, values=tuple(range(out_rank - count, out_rank)))

    attrs = {a.name: a for a in node.attribute}
    if op in ("Div", "Mod") and index == 1 and integer:
        return ValuePlan(why, 1, 3)  # integer division by zero fails inside onnxruntime
    if op.startswith("Reduce") and index == 1:
        return axes(length(1), rank)
    if op == "Pad" and index == 1:
        return ValuePlan(why, 0, 2)
    if op == "Pad" and index == 3:
        return axes(length(1), rank)
    if op == "Tile" and index == 1:
        return ValuePlan(why, 1, 3)
    if op == "ConstantOfShape" and index == 0:
        return ValuePlan(why, 1, 3)
    if op in ("Expand", "CenterCropPad") and index == 1:
        return ValuePlan(why, values=(1,) * length(rank or 1))
    if op == "Reshape" and index == 1:
        count = length(rank or 1)
        allowzero = "allowzero" in attrs and attrs["allowzero"].i == 1
        if rank is None or (allowzero and count > 1):
            if count == 1:
                return ValuePlan(why, values=(-1,))
            raise refuse("the data's shape is unknown")
        if allowzero:
            return ValuePlan(why, values=(-1,))
        # 0 copies the data's dimension, -1 takes the rest: valid for any data of this rank
        keep = min(count - 1, rank - 1)
        return ValuePlan(why, values=(0,) * keep + (-1,) + (1,) * (count - 1 - keep))
    if op == "Unsqueeze" and index == 1:
        count = length(1)
        return axes(count, None if rank is None else rank + count)
    if op == "Squeeze" and index == 1:
        ones = [axis for axis in range(rank or 0) if dim(axis) == 1]
        count = length(len(ones) or 1)
        if rank is None or len(ones) < count:
            raise refuse("it needs axes of size 1 that the data's known shape does not show")
        return ValuePlan(why, values=tuple(ones[:count]))
    if op == "Slice" and index == 3:
        return axes(length(1), rank)
    if op == "Slice" and index == 4:
        return ValuePlan(why, 1, 2)
    if op in ("Resize", "Upsample"):
        return _resize_plan(index, spec, rank, opset if op == "Resize" else 9, dim, why, refuse)
    if op == "TopK" and index == 1:
        return ValuePlan(why, values=(1,))
    if op == "OneHot" and index == 1:
        return ValuePlan(why, values=(2,))
    if op == "Range" and index == 2:
        return ValuePlan(why, 1, 2)
    if op == "CumSum" and index == 1:
        return ValuePlan(why, values=(0,))
    if op in ("Gather", "GatherElements") and index == 1 and integer:
        axis = attrs["axis"].i if "axis" in attrs else 0
        size = dim(axis)
        return ValuePlan(why, 0, max(1, min(size if size is not None else 1, 2)))
    if op in ("GatherND", "ScatterND", "ScatterElements") and index == 1 and integer:
        return ValuePlan(why, 0, 1)
    if op == "Split" and index == 1:
        axis = attrs["axis"].i if "axis" in attrs else 0
        size, parts = dim(axis), len(node.output)
        if size is None:
            raise refuse("the size of the split axis is unknown")
        base = size // parts
        return ValuePlan(why, values=(base,) * (parts - 1) + (size - base * (parts - 1),))
    return None


def _resize_plan(
    index: int,
    spec: TensorSpec,
    rank: int | None,
    opset: int,
    dim: Callable[[int], int | None],
    why: str,
    refuse: Callable[[str], DataError],
) -> ValuePlan | None:
    """Resize/Upsample: roi [0.., 1..], scales 1 on outer axes and 2 on the two innermost, sizes double
    the two innermost dimensions of the data."""
    role = {1: "scales"} if opset < 11 else {1: "roi", 2: "scales", 3: "sizes"}
    kind = role.get(index)
    if kind is None:
        return None
    if rank is None:
        raise refuse("the data's rank is unknown")
    inner = min(2, rank)
    if kind == "roi":
        return ValuePlan(why, values=(0,) * rank + (1,) * rank)
    if kind == "scales":
        if len(spec.shape) == 1 and spec.shape[0] == 0:
            return ValuePlan(why, values=())
        return ValuePlan(why, values=(1,) * (rank - inner) + (2,) * inner)
    dims = [dim(axis) for axis in range(rank)]
    if any(d is None for d in dims):
        raise refuse("the data's shape is unknown")
    return ValuePlan(why, values=tuple(d * 2 if axis >= rank - inner else d for axis, d in enumerate(dims)))


_INPUT_NAMES: dict[str, dict[int, str]] = {
    "Div": {1: "divisor"},
    "Mod": {1: "divisor"},
    "Pad": {1: "pads", 2: "constant_value", 3: "axes"},
    "Tile": {1: "repeats"},
    "ConstantOfShape": {0: "shape"},
    "Expand": {1: "shape"},
    "CenterCropPad": {1: "shape"},
    "Reshape": {1: "shape"},
    "Unsqueeze": {1: "axes"},
    "Squeeze": {1: "axes"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"},
    "Resize": {1: "roi", 2: "scales", 3: "sizes"},
    "TopK": {1: "K"},
    "OneHot": {1: "depth"},
    "Range": {2: "delta"},
    "CumSum": {1: "axis"},
    "Gather": {1: "indices"},
    "GatherElements": {1: "indices"},
    "GatherND": {1: "indices"},
    "ScatterND": {1: "indices"},
    "ScatterElements": {1: "indices"},
    "Split": {1: "split"},
    **{op: {1: "axes"} for op in ("ReduceMax", "ReduceMin", "ReduceSum", "ReduceMean", "ReduceProd")},
}


# -- images --------------------------------------------------------------------------------------------
