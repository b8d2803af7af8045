"""The exceptions edgeplug raises; the CLI maps them to exit codes (2 for user errors, 1 for verification)."""

from __future__ import annotations


class EdgeplugError(Exception):
    """An error the user can act on: bad input, options, data, or a missing dependency (exit 2)."""


class ModelError(EdgeplugError):
    """The model file cannot be used: not ONNX, corrupt, truncated, invalid, or unsafe."""


class OptionError(EdgeplugError):
    """An unknown plugin option, or a value of the wrong type."""


class DataError(EdgeplugError):
    """Data that cannot be read or does not match the model's inputs."""


class PluginError(EdgeplugError):
    """A plugin refuses to run on this model or in this chain, with a sentence saying why."""


class MissingDependencyError(EdgeplugError):
    """An optional dependency a plugin needs is not installed; the message says what to install."""


class GuardRefusal(EdgeplugError):
    """Guarded inference refused a request (bad input, killed worker, tampered model)."""


class VerificationError(Exception):
    """A step changed what the model computes beyond its tolerance (exit 1)."""

    def __init__(self, message: str, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step
