"""Model: the shared ONNX IR (a ModelProto plus the record of steps applied)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ModelError, OutputError, os_error_reason
from .structure_check import structure_problem

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

TWO_GB = 2**31 - 1
EXTERNAL_MIN_BYTES = 1024  # tensors smaller than this stay inside the .onnx


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype, and shape (str or None for dynamic dimensions)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)

    def describe(self) -> str:
        dims = "x".join(str(d) if d is not None else "?" for d in self.shape)
        return f"{self.name}: {self.dtype} [{dims}]"


class Model:
    """An ONNX model and the steps that produced it. Treat `proto` as read-only; use `replace`."""

    def __init__(
        self,
        proto: onnx.ModelProto,
        history: Sequence[str] = (),
        source: Path | None = None,
    ) -> None:
        self.proto = proto
        self.history: tuple[str, ...] = tuple(history)
        self.source = source
        self._path: Path | None = None
        self._tmpdir: str | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def load(
        cls, path: str | os.PathLike[str], input_shapes: Mapping[str, Sequence[int]] | None = None
    ) -> Model:
        """Load, confine external data, run the full checker and shape inference; errors are ModelError."""
        path = Path(path)
        if not path.exists():
            raise ModelError(f"{path} does not exist")
        if not path.is_file():
            raise ModelError(f"{path} is not a file")
        check_fits_in_memory(path.stat().st_size, f"{path} ({path.stat().st_size:,} bytes)")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except MemoryError:
            raise ModelError(f"{path} does not fit in this machine's memory") from None
        except Exception as exc:  # protobuf, JSON and text parsers each raise their own types
            raise ModelError(
                f"{path} is not a valid ONNX model (cannot parse it: {_first_line(exc)})"
            ) from None
        if not proto.graph.node and not proto.graph.output:
            raise ModelError(
                f"{path} is not a valid ONNX model (no graph found: empty, truncated or another format)"
            )
        declared = check_external_data(proto, path.parent)
        check_fits_in_memory(declared, f"{path} declares {declared:,} bytes of external data, which")
        if _has_external(proto):
            try:
                onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
            except (OSError, ValueError) as exc:
                raise ModelError(f"{path}: cannot read its external data: {_first_line(exc)}") from None
            except MemoryError:
                raise ModelError(f"{path}: its external data does not fit in this machine's memory") from None
        model = cls(proto, source=path)
        model.check()
        if input_shapes:
            model = model.with_input_shapes(input_shapes)
        return model.infer_shapes()

    def replace(self, proto: onnx.ModelProto, step: str | None = None) -> Model:
        """A new Model holding `proto`, keeping this one's history (plus `step` when given)."""
        history = (*self.history, step) if step else self.history
        return Model(proto, history, self.source)

    def copy_proto(self) -> onnx.ModelProto:
        """A deep copy of the proto to edit."""
        clone = onnx.ModelProto()
        clone.CopyFrom(self.proto)
        return clone

    # -- checks -------------------------------------------------------------------------------
    def check(self, weights: bool = True) -> None:
        """onnx.checker with full_check (strict shape inference); ModelError with its first line. With
        `weights=False` the large weights are left out of the check (structure_check.py: ResNet-50 0.02 s
        instead of 3 s), for models a plugin produced, whose weights onnxruntime reads next anyway."""
        if not weights:
            problem = structure_problem(self.proto)
            if problem is not None:
                raise ModelError(f"{self.source or 'the model'} is not a valid ONNX model: {problem}")
            return
        try:
            if self.proto.ByteSize() > TWO_GB:
                onnx.checker.check_model(str(self.path), full_check=True)
            else:
                onnx.checker.check_model(self.proto, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
            where = self.source or "the model"
            raise ModelError(f"{where} is not a valid ONNX model: {_first_line(exc)}") from None

    def infer_shapes(self) -> Model:
        """onnx shape inference; where node outputs stay untyped, onnxruntime's symbolic shape inference."""
        try:
            inferred = onnx.shape_inference.infer_shapes(self.proto, strict_mode=False, data_prop=True)
        except Exception:
            inferred = self.proto
        if _untyped_outputs(inferred):
            try:
                from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

                with _in_temp_dir():  # for large models it writes sym_shape_infer_temp.onnx into the cwd
                    symbolic = SymbolicShapeInference.infer_shapes(
                        inferred, auto_merge=True, guess_output_rank=True
                    )
                if symbolic is not None:
                    inferred = symbolic
            except Exception:
                pass
        result = Model(inferred, self.history, self.source)
        return result

    def with_input_shapes(self, shapes: Mapping[str, Sequence[int]]) -> Model:
        """Pin dynamic input dimensions (`--input-shapes`), e.g. {"input": [1, 3, 224, 224]}."""
        proto = self.copy_proto()
        inputs = {i.name: i for i in self.graph_inputs(proto)}
        for name, dims in shapes.items():
            if name not in inputs:
                raise ModelError(
                    f"--input-shapes names {name!r}, but the model's inputs are {', '.join(inputs)}"
                )
            tensor_type = inputs[name].type.tensor_type
            if len(tensor_type.shape.dim) != len(dims):
                raise ModelError(
                    f"--input-shapes gives {name} rank {len(dims)}, the model has rank {len(tensor_type.shape.dim)}"
                )
            for axis, (dim, value) in enumerate(zip(tensor_type.shape.dim, dims)):
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                    raise ModelError(
                        f"--input-shapes {name}: dimension {value!r} at axis {axis} must be a positive integer"
                    )
                if dim.HasField("dim_value") and dim.dim_value != value:
                    raise ModelError(
                        f"--input-shapes: {name} has fixed dimension {dim.dim_value}, not {value}"
                    )
                dim.Clear()
                dim.dim_value = int(value)
        return Model(proto, self.history, self.source)

    # -- description --------------------------------------------------------------------------
    @staticmethod
    def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
        init = {t.name for t in proto.graph.initializer}
        return [i for i in proto.graph.input if i.name not in init]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [tensor_spec(v) for v in self.graph_inputs(self.proto)]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [tensor_spec(v) for v in self.proto.graph.output]

    @property
    def opset(self) -> int:
        for imp in self.proto.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return imp.version
        return 0

    def op_histogram(self) -> dict[str, int]:
        """Operator counts, most frequent first (other domains as `domain.Op`)."""
        return op_histogram(self.proto)

    def weights(self) -> Iterable[tuple[str, np.ndarray]]:
        """Every constant tensor: initializers (dense and sparse) and Constant nodes' values."""
        for tensor in self.proto.graph.initializer:
            yield tensor.name, numpy_helper.to_array(tensor)
        for sparse in self.proto.graph.sparse_initializer:
            values = numpy_helper.to_array(sparse.values)
            yield sparse.values.name, _densify(sparse, values)
        for node in _all_nodes(self.proto.graph):
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        yield node.output[0], numpy_helper.to_array(attr.t)
                    elif attr.name == "sparse_value":
                        values = numpy_helper.to_array(attr.sparse_tensor.values)
                        yield node.output[0], _densify(attr.sparse_tensor, values)

    def stats(self) -> dict[str, int]:
        """Nodes (Q/DQ included), parameters (each weight once; quantization scales and zero points are not
        parameters), non-zero parameters, and the size in bytes (the file plus its external data)."""
        params = nonzero = 0
        skip = quantization_parameters(self.proto)
        seen: set[str] = set()
        for name, array in self.weights():
            if name in skip or name in seen or array.dtype.kind not in "fiuc":
                continue
            seen.add(name)
            params += array.size
            nonzero += int(np.count_nonzero(array))
        return {
            "nodes": sum(1 for _ in _all_nodes(self.proto.graph)),
            "parameters": params,
            "nonzero_parameters": nonzero,
            "size_bytes": self.size_bytes(),
        }

    def size_bytes(self) -> int:
        """Bytes of the model saved as edgeplug saves it: the protobuf plus its external data (for a file on
        disk use `file_size(path)`: the one size edgeplug reports for files)."""
        return file_size(self.path)

    # -- saving -------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """A saved copy on disk for tools that take paths (written once, removed with the Model)."""
        if self._path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="edgeplug-model-")
            weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
            self._path = Path(self._tmpdir) / "model.onnx"
            self.save(self._path)
        return self._path

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically; models over 2 GB get their weights in `<name>.data` beside the file."""
        path = Path(path)
        if self.source is not None and path.exists() and path.resolve() == self.source.resolve():
            raise ModelError(f"refusing to overwrite the input model {path}; choose another output folder")
        try:
            return self._save(path)
        except OSError as exc:
            reason = os_error_reason(exc) or exc.strerror or str(exc)
            raise OutputError(f"cannot write the model {path}: {reason}") from None

    def _save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.proto.ByteSize() > TWO_GB:
            data_name = f"{path.name}.data"
            staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".edgeplug-{os.getpid()}-"))
            try:
                onnx.save_model(
                    self.copy_proto(),
                    str(staging / path.name),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=data_name,
                    size_threshold=EXTERNAL_MIN_BYTES,
                )
                if (staging / data_name).exists():
                    os.replace(staging / data_name, path.parent / data_name)
                os.replace(staging / path.name, path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return path
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            _write_file(tmp, self.proto.SerializeToString())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves nothing behind
        return path

    def serialized(self) -> bytes:
        return self.proto.SerializeToString()

    # -- graphsurgeon -------------------------------------------------------------------------
    def to_graphsurgeon(self) -> gs.Graph:
        """An onnx-graphsurgeon Graph of this model (edit it freely; the Model is untouched)."""
        import onnx_graphsurgeon as gs

        return gs.import_onnx(self.copy_proto())  # graphsurgeon keeps references into the proto it imports

    @classmethod
    def from_graphsurgeon(cls, graph: gs.Graph, like: Model, step: str | None = None) -> Model:
        """Export `graph`, restoring what graphsurgeon drops (metadata_props, opset imports, ir_version)."""
        import onnx_graphsurgeon as gs

        proto = gs.export_onnx(graph, do_type_check=False)
        restore_model_fields(proto, like.proto)
        return like.replace(proto, step)

    def __repr__(self) -> str:
        steps = ",".join(self.history) or "original"
        return f"<Model {self.proto.graph.name or 'graph'} opset={self.opset} steps={steps}>"


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync `data` to a new file."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def available_memory() -> int:
    """Bytes this process can still allocate: the system's available memory, bounded by a cgroup's memory
    limit and by RLIMIT_AS where they are set."""
    import psutil

    limits = [int(psutil.virtual_memory().available)]
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 2**60:
                limits.append(max(0, int(limit) - int(Path(usage_file).read_text().strip())))
        except (OSError, ValueError):
            continue
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(max(0, soft - psutil.Process().memory_info().vms))
    except (ImportError, OSError, ValueError):
        pass
    return min(limits)


def check_fits_in_memory(nbytes: int, what: str, share: float = 1.0) -> None:
    """ModelError when `nbytes` exceed `share` of the memory available: `what` names what needs them."""
    available = available_memory()
    if nbytes > available * share:
        raise ModelError(
            f"{what} needs more memory than this machine has available ({_gib(nbytes)} needed, "
            f"{_gib(available)} available)"
        )


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.1f} MiB"


@contextlib.contextmanager
def _in_temp_dir() -> Iterator[None]:
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="edgeplug-shapes-") as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(previous)


def restore_model_fields(proto: onnx.ModelProto, like: onnx.ModelProto) -> None:
    """Copy model-level fields from `like` that a graph round trip loses."""
    proto.ir_version = like.ir_version
    proto.producer_name = like.producer_name
    proto.producer_version = like.producer_version
    proto.domain = like.domain
    proto.model_version = like.model_version
    proto.doc_string = like.doc_string
    del proto.metadata_props[:]
    proto.metadata_props.extend(like.metadata_props)
    known = {imp.domain: imp for imp in proto.opset_import}
    for imp in like.opset_import:
        if imp.domain not in known:
            proto.opset_import.append(imp)
    if not proto.functions and like.functions:
        proto.functions.extend(like.functions)


def set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    """Set one metadata_props entry (replacing an existing one)."""
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    proto.metadata_props.add(key=key, value=value)


def get_metadata(proto: onnx.ModelProto, key: str) -> str | None:
    for prop in proto.metadata_props:
        if prop.key == key:
            return prop.value
    return None


def check_external_data(proto: onnx.ModelProto, base: Path) -> int:
    """Refuse external-data locations that are absolute or escape the model's folder, and ranges that lie
    beyond their file; returns the bytes loading them will take."""
    root = base.resolve()
    total = 0
    for tensor in all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        target = (root / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(root):
            raise ModelError(
                f"tensor {tensor.name!r} points its external data outside the model's folder ({location}); refused"
            )
        if not target.is_file():
            raise ModelError(f"tensor {tensor.name!r}: its external data file {location} is missing")
        try:
            offset = int(entries.get("offset") or 0)
            size = target.stat().st_size
            length = int(entries["length"]) if entries.get("length") else size - offset
        except ValueError:
            raise ModelError(
                f"tensor {tensor.name!r}: its external data offset or length is not a number"
            ) from None
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelError(
                f"tensor {tensor.name!r} declares {length:,} bytes at offset {offset:,} of {location}, "
                f"which holds {size:,} bytes: truncated or forged"
            )
        total += length
    return total


def external_data_files(path: Path) -> list[Path]:
    """The external data files a model file names (inside its folder; none when it cannot be parsed)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    root = Path(path).parent.resolve()
    files = []
    for tensor in all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (root / location).resolve()
            if location and target.is_relative_to(root) and target not in files:
                files.append(target)
    return files


def _has_external(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in all_tensors(proto))


def all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a model: initializers, sparse tensors' parts, tensor attributes, in the main
    graph, its subgraphs and function bodies."""

    def graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from node_tensors(graph.node)

    def node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                if attr.HasField("g"):
                    yield from graph_tensors(attr.g)
                for sub in attr.graphs:
                    yield from graph_tensors(sub)

    yield from graph_tensors(proto.graph)
    for function in proto.functions:
        yield from node_tensors(function.node)


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _densify(sparse: onnx.SparseTensorProto, values: np.ndarray) -> np.ndarray:
    dense = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
    indices = numpy_helper.to_array(sparse.indices)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), tuple(sparse.dims))
    dense[indices.astype(np.int64)] = values.ravel()
    return dense.reshape(tuple(sparse.dims))


def tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    """The TensorSpec of a graph input, output or value_info."""
    tensor_type = value.type.tensor_type
    dtype = (
        np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if tensor_type.elem_type
        else np.dtype("float32")
    )
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return TensorSpec(value.name, dtype, tuple(dims))


def _untyped_outputs(proto: onnx.ModelProto) -> bool:
    """True when a node output has no inferred type (custom or contrib ops onnx does not know)."""
    typed = {v.name for v in (*proto.graph.value_info, *proto.graph.output, *proto.graph.input)}
    typed.update(t.name for t in proto.graph.initializer)
    return any(name and name not in typed for node in proto.graph.node for name in node.output)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


QUANT_PARAMETER_INPUTS = {
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
    "MatMulInteger": (2, 3),
    "ConvInteger": (2, 3),
    "QLinearConv": (1, 2, 4, 5, 6, 7),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7),
}


def quantization_parameters(proto: onnx.ModelProto) -> set[str]:
    """Names of the scale and zero-point tensors of quantized operators (not counted as parameters)."""
    names: set[str] = set()
    for node in _all_nodes(proto.graph):
        for index in QUANT_PARAMETER_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index]:
                names.add(node.input[index])
    return names


def file_size(path: Path) -> int:
    """The .onnx file plus the distinct external data files it references, in bytes."""
    path = Path(path)
    total = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return total
    locations = {
        entry.value
        for tensor in all_tensors(proto)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    for location in locations:
        data = path.parent / location
        if data.is_file():
            total += data.stat().st_size
    return total


KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


def is_keras_path(path: Path) -> bool:
    """A Keras model: an .h5/.hdf5/.keras file or a SavedModel folder (plugins that train take those)."""
    path = Path(path)
    return path.suffix.lower() in KERAS_SUFFIXES or (path.is_dir() and (path / "saved_model.pb").exists())


def op_histogram(proto: onnx.ModelProto) -> dict[str, int]:
    """Operator counts of the main graph, most frequent first (other domains as `domain.Op`)."""
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def describe(model: Model, path: Path | None = None) -> dict[str, Any]:
    """What `edgeplug inspect` prints; the size is that of the file at `path` (plus its external data)."""
    stats = model.stats()
    if path is not None:
        stats["size_bytes"] = file_size(path)
    return {
        "inputs": [i.describe() for i in model.inputs],
        "outputs": [o.describe() for o in model.outputs],
        "opset": model.opset,
        "ir_version": model.proto.ir_version,
        "producer": f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
        "ops": model.op_histogram(),
        **stats,
    }
