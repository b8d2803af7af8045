"""Topological order of a graph's nodes, computed without recursion.

graphsurgeon's `toposort()` finds each node's level recursively, one Python frame per node of depth, so
a deep graph listed out of order (a 5,000-node chain, a long decoder) ends in RecursionError. This is
Kahn's algorithm over the graph's own nodes: stable (nodes already in order keep their order), and a node
that holds If/Loop/Scan bodies also waits for the outer tensors those bodies read. Subgraphs and local
functions are left as they are.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import onnx_graphsurgeon as gs


def toposort(graph: gs.Graph) -> gs.Graph:
    """Sort `graph.nodes` in place so that every node comes after the producers of what it reads."""
    nodes = list(graph.nodes)
    producer: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for tensor in node.outputs:
            if tensor.name:
                producer[tensor.name] = index
    waiting = [0] * len(nodes)
    readers: list[list[int]] = [[] for _ in nodes]
    for index, node in enumerate(nodes):
        sources = {producer[name] for name in _reads(node) if name in producer} - {index}
        waiting[index] = len(sources)
        for source in sources:
            readers[source].append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        ordered.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(ordered) < len(nodes):  # a cycle (invalid anyway): keep the rest in its given order
        placed = set(ordered)
        ordered.extend(index for index in range(len(nodes)) if index not in placed)
    graph.nodes = [nodes[index] for index in ordered]
    return graph


def _reads(node: gs.Node) -> Iterator[str]:
    """Names of the tensors `node` reads: its inputs and, for control flow, what its bodies read."""
    for tensor in node.inputs:
        if tensor.name:
            yield tensor.name
    stack = list(node.subgraphs())
    while stack:
        sub = stack.pop()
        for inner in sub.nodes:
            for tensor in inner.inputs:
                if tensor.name:
                    yield tensor.name
            stack.extend(inner.subgraphs())
        for tensor in sub.outputs:
            if tensor.name:
                yield tensor.name
