"""Run the rewrite passes so that none of them can hand back an invalid model.

All passes run on one graph and the result is checked once (the cheap common case). When it is not a
valid model, or a pass raised, they run again one at a time from the input, each result checked, and a
pass whose result fails is rolled back to the model before it: the others still apply, and the report
says which pass was dropped and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_graphsurgeon as gs
from edgeplug import EdgeplugError
from edgeplug.plugin_api import structure_problem

from .order import toposort
from .roundtrip import export, import_graph


@dataclass(frozen=True)
class Pass:
    """One rewrite: `run` edits the graph in place and returns its counts for the report; `idle` holds the
    counts it reports when it is rolled back."""

    name: str
    run: Callable[[gs.Graph], dict[str, Any]]
    idle: dict[str, Any]


@dataclass
class Outcome:
    """The rewritten model, the passes' counts, and the passes rolled back with the reason."""

    proto: onnx.ModelProto
    counts: dict[str, Any]
    rolled_back: dict[str, str] = field(default_factory=dict)


def apply(
    proto: onnx.ModelProto,
    passes: Sequence[Pass],
    like: onnx.ModelProto,
    changed: Callable[[dict[str, Any]], bool],
    graph: gs.Graph | None = None,
) -> Outcome:
    """`passes` in order on `proto` (or on `graph`, its already imported graph, edited in place), exported
    with the model fields of `like`; never an invalid model. When `changed(counts)` says the passes did
    nothing, `proto` comes back as it is, unexported."""
    counts: dict[str, Any] = {}
    try:
        work = graph if graph is not None else import_graph(proto)
        for each in passes:
            counts.update(each.run(work))
        if not changed(counts):
            return Outcome(proto, counts)
        result = export(finish(work), like)
        reason = structure_problem(result)
    except EdgeplugError:
        raise
    except Exception as exc:  # a pass met a construct it does not handle; find which one below
        reason = f"{type(exc).__name__}: {exc}"
    if reason is None:
        return Outcome(result, counts)
    return _one_at_a_time(proto, passes, like)


def finish(graph: gs.Graph) -> gs.Graph:
    """Remove what no output needs and sort, leaving If/Loop/Scan bodies and local functions alone."""
    graph.cleanup(recurse_subgraphs=False, recurse_functions=False)
    return toposort(graph)


def _one_at_a_time(proto: onnx.ModelProto, passes: Sequence[Pass], like: onnx.ModelProto) -> Outcome:
    # When the input itself fails the check (a caller's unchecked model), only passes that raise are dropped.
    baseline = structure_problem(proto)
    current = proto
    outcome = Outcome(proto, {})
    for each in passes:
        try:
            graph = import_graph(current)
            counts = each.run(graph)
            candidate = export(finish(graph), like)
            reason = structure_problem(candidate) if baseline is None else None
        except EdgeplugError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            current = candidate
            outcome.counts.update(counts)
        else:
            outcome.counts.update(each.idle)
            outcome.rolled_back[each.name] = reason.splitlines()[0][:300] if reason else "invalid"
    outcome.proto = current
    return outcome
