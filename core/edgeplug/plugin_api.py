"""The published plugin API: everything a plugin may import from edgeplug, in one module.

A plugin imports from `edgeplug` (the user API) or from `edgeplug.plugin_api`; every other module of the
core is private and may change without notice (tests/core/test_plugin_contract.py fails on a plugin that
imports one). The plugin guide in the README walks through these names.

Hooks: `hookimpl` marks implementations of the specs in edgeplug.hookspecs (plugin_options,
plugin_capabilities, load_model, pre_optimize, transform_graph, compile, make_runner, guard_inference).
"""

from __future__ import annotations

from .bench import measure as measure_latency
from .capabilities import (
    BATCHNORM,
    CONTRIB,
    DYNAMIC_INT8,
    FORMS,
    FP16,
    INT8_EXACT,
    INT8_QDQ_ONLY,
    QDQ_INT8,
    SYMMETRIC_INT8,
    Capabilities,
    forms_of,
)
from .context import Artifact, InferenceRequest, InferenceResult, RunContext, Runner, sha256_file
from .cpu import cpu_info
from .data import Dataset, load_data
from .errors import (
    DataError,
    EdgeplugError,
    GuardRefusal,
    MissingDependencyError,
    ModelError,
    OptionError,
    OutputError,
    PluginError,
    VerificationError,
)
from .hookspecs import hookimpl
from .metrics import MetricSpec, MetricValue, Ragged, is_logits, load_function
from .model import (
    Model,
    TensorSpec,
    get_metadata,
    is_keras_path,
    op_histogram,
    restore_model_fields,
    set_metadata,
)
from .options import Option, option, parse_duration, parse_input_shapes
from .report import write_json
from .run_record import RunRecord, sidecar_path
from .runtime import run_all, run_each, session
from .structure_check import structure_problem
from .tolerance import Tolerance
from .verify import (
    Verdict,
    compare,
    cosine,
    error_profile,
    evaluate,
    first_divergence,
    intermediate_outputs,
    outputs_of,
    tensor_session,
)

__all__ = [
    "BATCHNORM",
    "CONTRIB",
    "DYNAMIC_INT8",
    "FORMS",
    "FP16",
    "INT8_EXACT",
    "INT8_QDQ_ONLY",
    "QDQ_INT8",
    "SYMMETRIC_INT8",
    "Artifact",
    "Capabilities",
    "DataError",
    "Dataset",
    "EdgeplugError",
    "GuardRefusal",
    "InferenceRequest",
    "InferenceResult",
    "MetricSpec",
    "MetricValue",
    "MissingDependencyError",
    "Model",
    "ModelError",
    "Option",
    "OptionError",
    "OutputError",
    "PluginError",
    "Ragged",
    "RunContext",
    "RunRecord",
    "Runner",
    "TensorSpec",
    "Tolerance",
    "Verdict",
    "VerificationError",
    "compare",
    "cosine",
    "cpu_info",
    "error_profile",
    "evaluate",
    "first_divergence",
    "forms_of",
    "get_metadata",
    "hookimpl",
    "intermediate_outputs",
    "is_keras_path",
    "is_logits",
    "load_data",
    "load_function",
    "measure_latency",
    "op_histogram",
    "option",
    "outputs_of",
    "parse_duration",
    "parse_input_shapes",
    "restore_model_fields",
    "run_all",
    "run_each",
    "session",
    "set_metadata",
    "sha256_file",
    "sidecar_path",
    "structure_problem",
    "tensor_session",
    "write_json",
]
