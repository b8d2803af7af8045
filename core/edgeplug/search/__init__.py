"""`edgeplug search`: verified chains as trials over a space of chains, options and layer widths, under a
metric budget, timed where they run, cached per step by content, resumable, on a local pool or Ray."""

from __future__ import annotations

from .orchestrator import SearchSettings, run_search

__all__ = ["SearchSettings", "run_search"]
