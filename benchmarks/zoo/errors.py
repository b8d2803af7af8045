"""The zoo's errors: edgeplug's own kinds, so scripts that catch EdgeplugError print one line and exit 2."""

from __future__ import annotations

from edgeplug import EdgeplugError, MissingDependencyError


class ZooError(EdgeplugError):
    """A zoo entry cannot be built: unknown name, a source file with the wrong sha256, a failed check."""


class MissingRequirement(ZooError, MissingDependencyError):
    """A package or data file an entry is built from is not installed; the message names the install line."""
