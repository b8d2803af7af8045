"""Per-node sensitivity search, the last step of a repair: rank each compute node by how much keeping it
alone in float helps, then keep the fewest nodes in float (shortest passing prefix of the ranking, then
backward elimination) that meet the budget, judged exactly as the core will judge the step."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
from edgeplug.plugin_api import RunContext, Verdict

from .calibration import Sample
from .judging import Judge, describe, metric_values, rank_key, shortfall
from .keep_float import float_in_place
from .ptq import Recipe, compute_nodes, quantize


@dataclass
class SearchResult:
    proto: onnx.ModelProto
    verdict: Verdict
    kept_float: list[str]
    quantizable: int
    plain: dict[str, Any]
    final: dict[str, Any]
    table: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "quantizable_nodes": self.quantizable,
            "kept_float": self.kept_float,
            "kept_float_fraction": round(len(self.kept_float) / max(self.quantizable, 1), 4),
            "plain": self.plain,
            "final": self.final,
            "evaluations": self.evaluations,
            "sensitivity": self.table,
        }


def _short(verdict: Verdict) -> dict[str, Any]:
    return {**metric_values(verdict), "passed": verdict.passed, "shortfall": round(shortfall(verdict), 6)}


class Search:
    """One sensitivity search over a prepared float model, starting from `recipe` (its exclusions stay)."""

    def __init__(
        self,
        proto: onnx.ModelProto,
        recipe: Recipe,
        calibration: Sequence[Sample],
        judge: Judge,
        ctx: RunContext,
        sensitivity_samples: int = 64,
        deadline: float | None = None,
    ) -> None:
        self.proto, self.recipe, self.calibration = proto, recipe, calibration
        self.judge, self.ctx, self.deadline = judge, ctx, deadline
        self.count = sensitivity_samples
        self.evaluations = 0
        self._cache: dict[tuple[frozenset[str], bool], tuple[onnx.ModelProto, Verdict]] = {}
        # NNCF's builds cost ~15 s each, GPTQ's rounding ~13 s (MobileNetV2): their nodes are put back in float
        # in the quantized model instead
        self._in_place: onnx.ModelProto | None = None

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def evaluate(self, kept: Sequence[str], full: bool = True) -> tuple[onnx.ModelProto, Verdict]:
        """Quantize with `kept` in float and judge it (all validation samples, or the ranking subset)."""
        key = (frozenset(kept), full)
        if key not in self._cache:
            if self._in_place is not None:
                proto = float_in_place(self._in_place, self.proto, kept)
            else:
                proto = quantize(self.proto, self.recipe.excluding(kept), self.calibration)
            verdict = self.judge.full(proto) if full else self.judge.subset(proto, self.count)
            self.evaluations += 1
            self._cache[key] = (proto, verdict)
        return self._cache[key]

    def run(self, start: tuple[onnx.ModelProto, Verdict] | None = None) -> SearchResult | None:
        """The smallest float set meeting the budget, or None when even every compute node in float misses
        it (or the time budget ran out first)."""
        nodes = compute_nodes(self.proto, self.recipe)
        plain_proto, plain = start or self.evaluate([])
        if self.recipe.engine == "nncf" or self.recipe.rounding == "gptq":
            self._in_place = plain_proto
        self._cache[(frozenset(), True)] = (plain_proto, plain)
        if plain.passed:
            return SearchResult(plain_proto, plain, [], len(nodes), _short(plain), _short(plain))
        if not nodes:
            self.ctx.log("sensitivity search: no compute node left to keep in float")
            return None
        table = self.sensitivity(nodes)
        if table is None:
            return None
        order = [row["node"] for row in table]
        kept = self.smallest_prefix(order)
        if kept is None:
            return None
        kept = self.eliminate(kept)
        proto, final = self.evaluate(kept)
        for row in table:
            row["kept_float"] = row["node"] in kept
        self.ctx.log(
            f"sensitivity search: kept {len(kept)} of {len(nodes)} compute nodes in float "
            f"({', '.join(kept)}); {describe(final)}"
        )
        return SearchResult(
            proto, final, kept, len(nodes), _short(plain), _short(final), table, self.evaluations
        )

    def sensitivity(self, nodes: Sequence[onnx.NodeProto]) -> list[dict[str, Any]] | None:
        """For each compute node, the verdict on the ranking subset when it alone stays in float."""
        rows = []
        for node in self.ctx.progress(nodes, "sensitivity", total=len(nodes)):
            if self.out_of_time():
                self.ctx.log("sensitivity search: time budget spent while ranking nodes")
                return None
            _, verdict = self.evaluate([node.name], full=False)
            rows.append(
                {
                    "node": node.name,
                    "op_type": node.op_type,
                    **_short(verdict),
                    "_key": rank_key(verdict),
                }
            )
        rows.sort(key=lambda r: r.pop("_key"))
        for rank, row in enumerate(rows, 1):
            row["rank"] = rank
        return rows

    def _passes(self, kept: Sequence[str]) -> bool:
        return self.evaluate(kept)[1].passed

    def smallest_prefix(self, order: Sequence[str]) -> list[str] | None:
        """The shortest prefix of the ranking meeting the budget: doubling, then bisection."""
        hi = 1
        while hi < len(order) and not self._passes(order[:hi]):
            if self.out_of_time():
                return None
            self.ctx.log(f"sensitivity search: {hi} node(s) in float are not enough")
            hi = min(2 * hi, len(order))
        if not self._passes(order[:hi]):
            _, verdict = self.evaluate(order)
            self.ctx.log(
                f"sensitivity search: even with all {len(order)} compute nodes in float the budget is missed "
                f"({describe(verdict)})"
            )
            return None
        lo = hi // 2  # order[:lo] failed (or lo == 0: plain failed)
        while hi - lo > 1 and not self.out_of_time():
            mid = (lo + hi) // 2
            if self._passes(order[:mid]):
                hi = mid
            else:
                lo = mid
        return list(order[:hi])

    def eliminate(self, kept: list[str]) -> list[str]:
        """Drop nodes from the float set, least important first, while the budget still holds."""
        for node in reversed(list(kept)):
            if len(kept) == 1 or self.out_of_time():
                break
            trial = [n for n in kept if n != node]
            if self._passes(trial):
                kept = trial
        return kept
