"""The exceptions edgeplug raises; the CLI maps them to exit codes (2 for user errors, 1 for verification)."""

from __future__ import annotations

import errno
import os


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


class OutputError(EdgeplugError):
    """An output cannot be written: the folder is a file or read-only, the disk is full, another run holds
    the folder, or an output would replace one of the run's inputs."""


class VerificationError(Exception):
    """A step changed what the model computes beyond its tolerance (exit 1)."""

    def __init__(self, message: str, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


# OSErrors that the user's machine or paths cause, not edgeplug: each gets a sentence and exit 2
_USER_ERRNOS = {
    errno.ENOSPC: "the disk is full (no space left on the device); free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another folder",
    errno.EROFS: "it is on a read-only file system; choose another folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "the operation is not permitted there; choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EMFILE: "too many open files (raise `ulimit -n`)",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EFBIG: "the file is larger than this file system or the file-size limit allows",
    errno.ENOENT: "it, or the folder it is in, does not exist",
}


def os_error_reason(exc: OSError) -> str | None:
    """Why an OSError happened, in words a user can act on, for the errors their machine or paths cause
    (disk full, read-only, permission, a path through a file); None for any other OSError."""
    return _USER_ERRNOS.get(exc.errno or 0)


_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def user_os_error(exc: OSError, doing: str | None = None) -> OutputError | None:
    """The OutputError (one sentence) for an OSError the user can fix, or None for any other OSError.
    `doing` is the verb of the sentence (default: "write" for a full or read-only disk, else "use")."""
    reason = os_error_reason(exc)
    if reason is None:
        return None
    doing = doing or ("write" if exc.errno in _WRITING else "use")
    where = os.fsdecode(exc.filename) if exc.filename is not None else "a file"
    return OutputError(f"cannot {doing} {where}: {reason}")
