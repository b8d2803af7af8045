"""Where an entry's inputs come from: installed packages and data files, pinned by sha256.

A `Requirement` is checked before a build (one line naming the install command when it is missing); a
`Source` is a file inside an installed package whose sha256 was measured once and written here, so a
changed wheel is detected instead of silently giving another model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingRequirement, ZooError

DEV = "pip install -r requirements-dev.txt"


@dataclass(frozen=True)
class Requirement:
    """A Python module (found without importing it) or a file on disk, with the command that installs it."""

    install: str
    module: str | None = None
    path: str | None = None

    def missing(self) -> str | None:
        """None when present, else what is missing, as the start of a sentence."""
        if self.module is not None and importlib.util.find_spec(self.module) is None:
            return f"the Python module {self.module!r} is not installed"
        if self.path is not None and not Path(self.path).is_file():
            return f"{self.path} does not exist"
        return None


@dataclass(frozen=True)
class Source:
    """A file shipped inside an installed distribution, with the sha256 measured from that release."""

    module: str  # the import name, e.g. "nudenet"
    distribution: str  # the name on PyPI, e.g. "nudenet"
    version: str
    relpath: str  # inside the module's folder
    sha256: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def requirement(self) -> Requirement:
        return Requirement(install=self.install, module=self.module)

    def path(self) -> Path:
        """The file, its sha256 checked; ZooError naming the reinstall command when it differs."""
        folder = package_folder(self.module, self.install)
        path = folder / self.relpath
        if not path.is_file():
            raise ZooError(f"{path} is missing from the installed {self.module}; run: {self.install}")
        digest = sha256_file(path)
        if digest != self.sha256:
            raise ZooError(
                f"{path} has sha256 {digest[:16]}..., not the {self.sha256[:16]}... of "
                f"{self.distribution}=={self.version} (installed: {installed_version(self.distribution)}); "
                f"run: {self.install}"
            )
        return path

    def record(self) -> dict[str, str]:
        return {
            "distribution": self.distribution,
            "version": installed_version(self.distribution),
            "file": f"{self.module}/{self.relpath}",
            "sha256": self.sha256,
        }


def package_folder(module: str, install: str = DEV) -> Path:
    """The folder of an installed package, found without importing it (importing nudenet needs cv2)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingRequirement(f"the Python package {module!r} is not installed; run: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_versions(*distributions: str) -> dict[str, str]:
    """Python and the given distributions' versions, for the manifest's "built_with"."""
    versions = {"python": platform.python_version()}
    versions.update({name: installed_version(name) for name in distributions})
    return versions
