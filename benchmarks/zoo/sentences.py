"""Real English sentences from the docstrings of Python's standard library, split by source file.

Docstrings are read with `ast` (nothing is imported), cut into sentences, and kept when they read as prose
(a capital first letter, a full stop, 5 to 70 words, no code punctuation). Duplicates are dropped. A source
file goes wholly to calibration or to evaluation (by a hash of its path), and each split takes the same
number of sentences from four length bands, so padding and the attention mask matter.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import re
import sysconfig
import zlib
from pathlib import Path

SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "turtledemo",
    "ensurepip",
}
BANDS = ((5, 9), (10, 17), (18, 30), (31, 70))  # words
CODE_CHARS = set("=<>{}[]_\\|`*#@$~^:;/")
SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not SKIP_DIRS.intersection(rel.parts[:-1]):
            files.append((rel.as_posix(), path))
    return files


def docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [doc for node in ast.walk(tree) if isinstance(node, kinds) and (doc := ast.get_docstring(node))]


def prose(doc: str) -> list[str]:
    """Sentences of the docstring's prose paragraphs (paragraphs with doctest or indented code are skipped)."""
    found = []
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = paragraph.splitlines()
        if any(">>>" in line or line.startswith((" ", "\t", "-", "*", ":")) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        for sentence in SPLIT.split(text):
            if readable(sentence):
                found.append(sentence)
    return found


def readable(sentence: str) -> bool:
    words = sentence.split()
    return (
        BANDS[0][0] <= len(words) <= BANDS[-1][1]
        and sentence[0].isupper()
        and sentence.endswith(".")
        and not CODE_CHARS.intersection(sentence)
        and "()" not in sentence
        and sum(c.isalpha() or c.isspace() for c in sentence) >= 0.9 * len(sentence)
    )


def split_of(relpath: str) -> str:
    return "evaluation" if zlib.crc32(relpath.encode()) % 2 else "calibration"


def sentences(per_split: int) -> dict[str, list[dict[str, str]]]:
    """{"calibration": [...], "evaluation": [...]}, each `per_split` rows {"text", "source"}, length-banded."""
    seen: set[str] = set()
    pools: dict[str, list[list[dict[str, str]]]] = {
        s: [[] for _ in BANDS] for s in ("calibration", "evaluation")
    }
    for relpath, path in stdlib_files():
        for doc in docstrings(path):
            for text in prose(doc):
                key = " ".join(text.lower().split())
                if key in seen:
                    continue
                seen.add(key)
                words = len(text.split())
                band = next(i for i, (lo, hi) in enumerate(BANDS) if lo <= words <= hi)
                pools[split_of(relpath)][band].append({"text": text, "source": relpath})
    chosen = {}
    for split, bands in pools.items():
        taken = []
        for i, pool in enumerate(bands):
            pool.sort(key=lambda row: hashlib.sha1(row["text"].encode()).hexdigest())  # seeded, stable order
            taken.append(pool[: per_split // len(BANDS) + (i < per_split % len(BANDS))])
        # round robin over the bands, so that the first N rows of a split have every length
        chosen[split] = [row for group in itertools.zip_longest(*taken) for row in group if row is not None]
    return chosen
