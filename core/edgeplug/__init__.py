"""edgeplug: plugin-based, verified optimization of ONNX models for edge devices.

Plugin authors need `hookimpl`, `Model`, `Option` and the errors; users `optimize` and `infer`.
"""

from __future__ import annotations

from .api import infer, optimize
from .capabilities import Capabilities
from .context import Artifact, InferenceRequest, InferenceResult, RunContext
from .data import Dataset
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
from .model import Model
from .options import Option, option
from .plugins import load_plugins
from .tolerance import Tolerance

__version__ = "0.1.0"
__all__ = [
    "Artifact",
    "Capabilities",
    "DataError",
    "Dataset",
    "EdgeplugError",
    "GuardRefusal",
    "InferenceRequest",
    "InferenceResult",
    "MissingDependencyError",
    "Model",
    "ModelError",
    "Option",
    "OptionError",
    "OutputError",
    "PluginError",
    "RunContext",
    "Tolerance",
    "VerificationError",
    "__version__",
    "hookimpl",
    "infer",
    "load_plugins",
    "optimize",
    "option",
]
