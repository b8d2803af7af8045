"""edgeplug-security: guarded inference for edgeplug (`--guard security`).

Kept import-light on purpose: the isolated worker process imports this package, and it must start fast.
The hooks live in `edgeplug_security.plugin`.
"""

from __future__ import annotations

__version__ = "0.1.0"
