"""Accuracy-budgeted mixed precision: rank each compute node by how much keeping it alone in float
helps, then keep the fewest nodes in float (greedy prefix, then backward elimination) that meet the budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from edgeplug import Model, OptionError, PluginError, RunContext
from edgeplug.verify import outputs_of

from .budget import Budget
from .calibration import Sample
from .ptq import Recipe, candidates, quantize


@dataclass
class SearchResult:
    proto: onnx.ModelProto
    kept_float: list[str]
    quantizable: int
    plain: dict[str, Any]
    final: dict[str, Any]
    table: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0


def _short(result: dict[str, Any]) -> dict[str, Any]:
    keep = ("cosine", "top1", "metric", "max_abs_error", "loss")
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items() if k in keep}


class Search:
    """One mixed-precision search over a prepared float model."""

    def __init__(
        self,
        proto: onnx.ModelProto,
        recipe: Recipe,
        calibration: Sequence[Sample],
        validation: Sequence[Sample],
        labels: np.ndarray | None,
        budget: Budget,
        ctx: RunContext,
        sensitivity_samples: int = 64,
    ) -> None:
        self.proto, self.recipe, self.calibration = proto, recipe, calibration
        self.validation, self.labels, self.budget, self.ctx = validation, labels, budget, ctx
        if sensitivity_samples < 1:
            raise OptionError(f"quant.sensitivity_samples must be at least 1, got {sensitivity_samples}")
        count = min(sensitivity_samples, len(validation))
        self.subset = list(validation[:count])
        self.subset_labels = None if labels is None else labels[: count * _batch(validation)]
        self.reference = self._run(proto, validation)
        self.subset_reference = self._run(proto, self.subset)
        self.evaluations = 0
        self._cache: dict[frozenset[str], tuple[onnx.ModelProto, dict[str, Any]]] = {}

    def _run(self, proto: onnx.ModelProto, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        return outputs_of(Model(proto), samples, self.ctx.threads)

    def evaluate(self, kept: Sequence[str], full: bool = True) -> tuple[onnx.ModelProto, dict[str, Any]]:
        """Quantize with `kept` in float and score it (on all validation samples, or the subset)."""
        key = frozenset(kept) | ({"<subset>"} if not full else set())
        if key in self._cache:
            return self._cache[key]
        proto = quantize(self.proto, self.recipe.excluding(kept), self.calibration)
        samples, ref, labels = (
            (self.validation, self.reference, self.labels)
            if full
            else (self.subset, self.subset_reference, self.subset_labels)
        )
        result = self.budget.evaluate(ref, self._run(proto, samples), labels)
        self.evaluations += 1
        self._cache[key] = (proto, result)
        return proto, result

    def run(self) -> SearchResult:
        nodes = candidates(self.proto, self.recipe)
        plain_proto, plain = self.evaluate([])
        self.ctx.log(f"mixed precision: plain {self.recipe.mode} INT8 scores {_describe(plain)}")
        if not plain["failures"]:
            self.ctx.log(
                "mixed precision: plain quantization already meets the budget; nothing kept in float"
            )
            return SearchResult(
                plain_proto, [], len(nodes), _short(plain), _short(plain), [], self.evaluations
            )
        table = self.sensitivity(nodes)
        order = [row["node"] for row in table]
        kept = self.smallest_prefix(order)
        kept = self.eliminate(kept)
        proto, final = self.evaluate(kept)
        for row in table:
            row["kept_float"] = row["node"] in kept
        self.ctx.log(
            f"mixed precision: kept {len(kept)} of {len(nodes)} compute nodes in float "
            f"({', '.join(kept)}); {_describe(final)}"
        )
        return SearchResult(proto, kept, len(nodes), _short(plain), _short(final), table, self.evaluations)

    def sensitivity(self, nodes: Sequence[onnx.NodeProto]) -> list[dict[str, Any]]:
        """For each compute node, the error at the outputs when it alone stays in float."""
        _, base = self.evaluate([], full=False)
        rows = []
        for node in self.ctx.progress(nodes, "sensitivity", total=len(nodes)):
            _, result = self.evaluate([node.name], full=False)
            rows.append(
                {
                    "node": node.name,
                    "op_type": node.op_type,
                    **_short(result),
                    "loss_reduction": round(base["loss"] - result["loss"], 6),
                }
            )
        rows.sort(key=lambda r: r["loss"])
        for rank, row in enumerate(rows, 1):
            row["rank"] = rank
        return rows

    def _passes(self, kept: Sequence[str]) -> bool:
        return not self.evaluate(kept)[1]["failures"]

    def smallest_prefix(self, order: Sequence[str]) -> list[str]:
        """The shortest prefix of the ranking meeting the budget: doubling, then bisection."""
        if not order:
            raise PluginError(
                "quant: the budget is not met and this model has no compute node to keep in float"
            )
        hi = 1
        while hi < len(order) and not self._passes(order[:hi]):
            self.ctx.log(f"mixed precision: {hi} node(s) in float are not enough")
            hi = min(2 * hi, len(order))
        if not self._passes(order[:hi]):
            _, result = self.evaluate(order)
            raise PluginError(
                f"quant: even with all {len(order)} compute nodes in float the budget is missed "
                f"({'; '.join(result['failures'])}); loosen the budget or use -o quant.mode=fp16"
            )
        lo = hi // 2  # order[:lo] failed (or lo == 0, untested: plain failed)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._passes(order[:mid]):
                hi = mid
            else:
                lo = mid
        return list(order[:hi])

    def eliminate(self, kept: list[str]) -> list[str]:
        """Drop nodes from the float set, least important first, while the budget still holds."""
        for node in reversed(list(kept)):
            if len(kept) == 1:
                break
            trial = [n for n in kept if n != node]
            if self._passes(trial):
                kept = trial
        return kept


def _batch(samples: Sequence[Sample]) -> int:
    first = next(iter(samples[0].values())) if samples else None
    return int(first.shape[0]) if first is not None and np.ndim(first) else 1


def _describe(result: dict[str, Any]) -> str:
    parts = [f"cosine {result['cosine']:.5f}"]
    if result.get("top1") is not None:
        parts.append(f"top-1 agreement {result['top1']:.4f}")
    if result.get("metric") is not None:
        parts.append(f"metric {result['metric']:.5g}")
    verdict = "within budget" if not result["failures"] else "misses: " + "; ".join(result["failures"])
    return ", ".join(parts) + f" ({verdict})"
