"""Static memory plan: every intermediate tensor gets an offset in one arena, reusing dead buffers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .program import Program

ALIGN = 64


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Storage:
    """Where a group of aliased tensors lives: an entry argument, a constant, or an arena offset."""

    kind: str  # "input", "output", "const" or "arena"
    index: int = 0  # argument position (input/output) or arena offset in bytes
    nbytes: int = 0
    members: list[str] = field(default_factory=list)


@dataclass
class Plan:
    root: dict[str, str]  # tensor -> the tensor whose storage it shares (views: Reshape, Flatten, ...)
    storage: dict[str, Storage]  # root tensor -> storage
    copies: list[tuple[int, str]]  # graph outputs that need a copy at the end: (output index, source tensor)
    arena_bytes: int  # planned tensors
    peak_naive: int  # bytes without reuse, for the report


def plan(program: Program, workspace: int) -> Plan:
    """Greedy first-fit by op order: outputs are placed before the op's dead inputs are freed."""
    root: dict[str, str] = {}

    def find(name: str) -> str:
        while name in root:
            name = root[name]
        return name

    for op in program.ops:
        if op.kind == "alias":
            root[op.outputs[0]] = find(op.inputs[0])
    groups: dict[str, list[str]] = {}
    for name in program.shapes:
        groups.setdefault(find(name), []).append(name)
    for op in program.ops:
        for name in (*op.inputs, *op.outputs):
            groups.setdefault(find(name), [])
            if name not in groups[find(name)]:
                groups[find(name)].append(name)

    storage: dict[str, Storage] = {}
    copies: list[tuple[int, str]] = []
    inputs = {n: i for i, n in enumerate(program.inputs)}
    for r, members in groups.items():
        nbytes = 4 * program.size(r) if r in program.shapes else 0
        if r in inputs:
            storage[r] = Storage("input", inputs[r], nbytes, members)
        elif r in program.consts:
            storage[r] = Storage("const", 0, nbytes, members)
    for index, name in enumerate(program.outputs):
        r = find(name)
        if r in storage:  # an input, a constant, or already another output's buffer
            copies.append((index, name))
        else:
            storage[r] = Storage("output", index, 4 * program.size(r), groups.get(r, [r]))

    # lifetimes of arena groups, in op indices
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, op in enumerate(program.ops):
        for name in op.outputs:
            first.setdefault(find(name), i)
        for name in op.inputs:
            last[find(name)] = i
    for _, name in copies:
        last[find(name)] = len(program.ops)
    live: list[tuple[int, int, str]] = []  # (offset, size, root)
    top = naive = 0
    for i, op in enumerate(program.ops):
        for name in op.outputs:
            r = find(name)
            if r in storage or op.kind == "alias":
                continue
            size = align(4 * program.size(r))
            naive += size
            offset = _first_fit(live, size)
            live.append((offset, size, r))
            top = max(top, offset + size)
            storage[r] = Storage("arena", offset, size, groups.get(r, [r]))
        live = [entry for entry in live if last.get(entry[2], -1) > i]
    return Plan({n: find(n) for n in program.shapes}, storage, copies, align(top) + align(workspace), naive)


def _first_fit(live: list[tuple[int, int, str]], size: int) -> int:
    offset = 0
    for start, length, _ in sorted(live):
        if start - offset >= size:
            return offset
        offset = max(offset, start + length)
    return offset
