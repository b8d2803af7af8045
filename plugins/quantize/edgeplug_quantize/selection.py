"""Choice by measurement: quantize each recipe, time the candidates on this CPU, verify them in order of
speed, repair the ones that miss the budget while they can still win, and keep the fastest that meets it.

Order of work (each step only while a candidate can still win, and while the time budget lasts):
1. every recipe quantized plainly, then timed together (alternated rounds; the float model too);
2. the plain candidates verified fastest first: the first that meets the budget is the one to beat;
3. the candidates faster than it that missed: their accuracy alternatives (calibration method,
   reduce_range: same graph, same latency), then the tensor-level repair, then the per-node sensitivity
   search (once per run), each repaired variant timed against the best so far;
4. FP16 when no int8 variant meets the budget;
5. nothing meets it: the variant closest to the budget is returned, the core's verification fails (exit 1)
   and the report holds what every variant scored.
When the target computes int8 exactly (ctx.qdq_as_float), Q/DQ models are not timed on this CPU: the
candidates are taken in the target's order of preference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from edgeplug.plugin_api import EdgeplugError, PluginError, RunContext, Verdict

from .calibration import Sample, table_ranges, unusable_ranges
from .judging import Judge, describe, metric_values, rank_key
from .mixed_precision import Search
from .ptq import Recipe, quantize
from .repair import RepairResult, repair_tensors
from .timing import Timer, by_speed, clearly_faster, time_models

QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
    "DynamicQuantizeLSTM",
}


@dataclass
class Variant:
    """One model tried: how it was made, how it scored, how fast it ran, and what became of it."""

    recipe: Recipe
    proto: onnx.ModelProto | None = None
    verdict: Verdict | None = None
    latency_ms: float | None = None
    origin: str = "plain"  # plain | alternative | repaired tensors | sensitivity search | fallback
    parent: str | None = None
    status: str = "not tried"  # kept | missed | cannot win | not tried | failed | not needed
    why: str = ""
    kept_float: list[str] = field(default_factory=list)
    timed_as: str | None = None  # the variant whose timing it shares (same graph)

    @property
    def label(self) -> str:
        return self.recipe.label

    @property
    def passed(self) -> bool:
        return self.verdict is not None and self.verdict.passed

    @property
    def size_bytes(self) -> int | None:
        return None if self.proto is None else self.proto.ByteSize()

    def row(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "recipe": self.label,
            "origin": self.origin,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "size_bytes": self.size_bytes,
            "status": self.status,
            "why": self.why,
        }
        if self.parent:
            data["variant_of"] = self.parent
        if self.timed_as:
            data["timed_as"] = self.timed_as
        if self.verdict is not None:
            data["passed"] = self.verdict.passed
            data["metrics"] = metric_values(self.verdict)
            data["failures"] = self.verdict.failures
        if self.recipe.float_tensors:
            data["float_tensors"] = list(self.recipe.float_tensors)
        if self.kept_float:
            data["kept_float_nodes"] = self.kept_float
        return data


@dataclass
class Outcome:
    chosen: Variant | None  # the kept variant; the best-scoring failed one when nothing meets the budget
    variants: list[Variant]
    float_latency_ms: float | None = None
    repairs: list[dict[str, Any]] = field(default_factory=list)
    search: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    timed: bool = True
    slower_than_float: str | None = None  # why nothing is kept although variants met the budget

    @property
    def passed(self) -> bool:
        return self.chosen is not None and self.chosen.passed


@dataclass
class Selection:
    """One choice among recipes for a prepared float model."""

    proto: onnx.ModelProto  # prepared float model
    received: onnx.ModelProto  # the model the step was given (timed as the float baseline)
    recipes: Sequence[Recipe]
    fp16: Recipe | None
    alternatives: Callable[[Recipe], list[Recipe]]
    calibration: Sequence[Sample]
    judge: Judge
    ctx: RunContext
    scratch: Path
    timer: Timer | None  # None: not timed (one recipe, or an exact int8 target)
    repair: bool = True
    deadline: float | None = None
    sensitivity_samples: int = 64
    outcome: Outcome = field(init=False)

    def __post_init__(self) -> None:
        self.outcome = Outcome(None, [], timed=self.timer is not None)
        self._feed = self.ctx.data.validation[0] if self.ctx.data.validation else {}

    # -- helpers ---------------------------------------------------------------------------------
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def log(self, message: str) -> None:
        self.ctx.log(message)

    def build(self, recipe: Recipe, origin: str = "plain", parent: str | None = None) -> Variant:
        """Quantize one recipe; tensors whose calibrated range is not finite are kept float."""
        variant = Variant(recipe, origin=origin, parent=parent)
        self.outcome.variants.append(variant)
        try:
            proto = quantize(self.proto, recipe, self.calibration)
            if recipe.mode == "static" and recipe.table is not None and recipe.table.exists():
                broken = unusable_ranges(table_ranges(recipe.table))
                if broken and not set(broken) <= set(recipe.float_tensors):
                    recipe = recipe.keeping_float(sorted(broken))
                    variant.recipe = recipe
                    note = f"kept {len(broken)} tensor(s) float: " + "; ".join(
                        f"{name}: {why}" for name, why in sorted(broken.items())
                    )
                    if note not in self.outcome.notes:
                        self.outcome.notes.append(note)
                        self.log(note)
                    proto = quantize(self.proto, recipe, self.calibration)
        except PluginError as exc:
            variant.status, variant.why = "failed", str(exc)
            return variant
        if recipe.mode != "fp16" and not any(n.op_type in QUANTIZED_OPS for n in proto.graph.node):
            variant.status, variant.why = "failed", "no node was quantized"
            return variant
        variant.proto = proto
        return variant

    def verify(self, variant: Variant) -> Verdict | None:
        """Judge a variant on every validation sample; a model onnxruntime cannot run is marked failed."""
        assert variant.proto is not None
        try:
            variant.verdict = self.judge.full(variant.proto)
        except EdgeplugError as exc:
            variant.status, variant.why = "failed", str(exc)
            self.log(f"{variant.label} ({variant.origin}): {exc}")
            return None
        variant.status = "passed" if variant.verdict.passed else "missed"
        variant.why = describe(variant.verdict)
        self.log(f"{variant.label} ({variant.origin}): {variant.why}")
        return variant.verdict

    def path_of(self, variant: Variant) -> Path:
        path = self.scratch / f"candidate-{self.outcome.variants.index(variant)}.onnx"
        if not path.exists():
            assert variant.proto is not None
            onnx.save(variant.proto, str(path))
        return path

    def time(self, variants: Sequence[Variant], with_float: bool = False) -> None:
        """Time the variants (and the float model) in alternated rounds."""
        if self.timer is None:
            return
        todo = [v for v in variants if v.proto is not None]
        paths = [self.path_of(v) for v in todo]
        if with_float:  # timed in the same rounds, so "faster than float" compares like with like
            path = self.scratch / "float.onnx"
            if not path.exists():
                onnx.save(self.received, str(path))
            paths.append(path)
        self.log(f"timing {len(paths)} model(s) at {self.ctx.threads} thread(s)")
        try:
            latencies = time_models(paths, self._feed, self.timer)
        except EdgeplugError as exc:
            note = f"timing failed ({exc}); candidates taken in order of preference, not by speed"
            self.log(note)
            self.outcome.notes.append(note)
            self.timer, self.outcome.timed = None, False
            self.outcome.float_latency_ms = None
            for variant in self.outcome.variants:
                variant.latency_ms = None
            return
        for variant, latency in zip(todo, latencies):
            variant.latency_ms = latency
        if with_float:
            self.outcome.float_latency_ms = latencies[-1]

    def beats_float(self, variant: Variant) -> bool:
        """Not measurably slower than the float model (true when either is untimed): a quantized model that
        runs slower than float, beyond the timing noise, buys nothing auto is asked for. Within the noise the
        quantized model stays (it is smaller)."""
        base = self.outcome.float_latency_ms
        if base is None or variant.latency_ms is None:
            return True
        return not clearly_faster(base, variant.latency_ms)

    def can_win(self, variant: Variant, best: Variant | None) -> bool:
        if not self.beats_float(variant):
            return False
        if best is None:
            return True
        if variant.latency_ms is None or best.latency_ms is None:
            return False  # untimed: the earlier preferred candidate wins
        return clearly_faster(variant.latency_ms, best.latency_ms)

    def better(self, new: Variant, best: Variant | None) -> bool:
        if not new.passed:
            return False
        if not self.beats_float(new):
            new.status = "slower than float"
            new.why = f"{new.why}; {self._vs_float(new)}"
            return False
        if best is None:
            return True
        if new.latency_ms is None or best.latency_ms is None:
            return len(new.kept_float) + len(new.recipe.float_tensors) < len(best.kept_float) + len(
                best.recipe.float_tensors
            )
        return clearly_faster(new.latency_ms, best.latency_ms)

    # -- the choice ------------------------------------------------------------------------------
    def run(self) -> Outcome:
        plain = [self.build(r) for r in self.recipes]
        usable = [v for v in plain if v.proto is not None]
        if len(usable) > 1:
            self.time(usable, with_float=True)
        order = by_speed(usable, lambda v: v.latency_ms)  # a tie within the noise: the plan's order
        best: Variant | None = None
        for variant in order:
            if not self.beats_float(variant):
                variant.status, variant.why = "slower than float", self._vs_float(variant)
                continue
            if best is not None:
                variant.status, variant.why = (
                    "cannot win",
                    f"not faster than {best.label} (beyond the timing noise), which meets the budget",
                )
                continue
            if self.out_of_time() and any(v.verdict is not None for v in order):
                variant.why = "not judged: time budget spent"  # the fastest is judged whatever the budget
                continue
            self.verify(variant)
            if variant.passed:
                best = variant
        if not any(v.verdict is not None for v in order) and order:
            self.verify(order[0])  # every candidate is slower than float: judge one, for the report
        missed = [v for v in order if v.verdict is not None and not v.passed]
        if self.repair:
            best = self.repair_all(missed, best)
        judged = any(v.verdict is not None for v in self.outcome.variants)
        if (
            best is None
            and judged
            and self.fp16 is not None
            and not any(r.mode == "fp16" for r in self.recipes)
        ):
            best = self.fallback(best)  # int8 was possible but nothing met the budget
        chosen = best
        slower = [v for v in self.outcome.variants if v.passed and v is not best]
        if chosen is None and slower and all(not self.beats_float(v) for v in slower):
            fastest = min(slower, key=lambda v: v.latency_ms or 0.0)
            self.outcome.slower_than_float = (
                f"every variant that meets the budget is slower than the float model (fastest: "
                f"{fastest.label} ({fastest.origin}) at {fastest.latency_ms:.3g} ms, float "
                f"{self.outcome.float_latency_ms:.3g} ms)"
            )
            for variant in slower:
                variant.status = "slower than float"
        elif chosen is None:
            chosen = self.closest()
        if chosen is not None:
            chosen.status = "kept" if chosen.passed else "closest (misses the budget)"
            if chosen.passed:
                chosen.why = self.why_kept(chosen)
        for variant in self.outcome.variants:
            if variant is not chosen and variant.status == "passed":
                variant.status = "cannot win"
                variant.why = f"{variant.why}; slower than {chosen.label if chosen else 'the kept variant'}"
        self.outcome.chosen = chosen
        return self.outcome

    def why_kept(self, chosen: Variant) -> str:
        if chosen.latency_ms is not None and self.outcome.timed:
            return "the fastest variant that meets the budget"
        if self.outcome.timed:
            return "meets the budget"
        if self.ctx.qdq_as_float:
            return "meets the budget (not timed: the target computes int8 exactly)"
        return "meets the budget (not timed: nothing to compare it with)"

    def repair_all(self, missed: list[Variant], best: Variant | None) -> Variant | None:
        """Tensor repair of every missed candidate that can still win (fastest first); then, for the one still
        missing that came closest to the budget among those whose repaired model could still win (the fastest
        of equals), the expensive steps: the accuracy alternatives (each costs a calibration) and the per-node
        sensitivity search. The closest needs the fewest nodes kept float: on MobileNetV2, NNCF's
        bias-corrected model (cosine 0.97) rather than onnxruntime's faster plain one (0.86). Keeping more in
        float never makes a model faster, so a repaired model's latency bounds what those steps can reach."""
        bound: dict[int, float | None] = {}
        reached: dict[int, Verdict] = {}
        for variant in missed:
            if not self.can_win(variant, best):
                variant.why += f"; not repaired: cannot beat {best.label}" if best else ""
                continue
            if self.out_of_time():
                variant.why += "; not repaired: time budget spent"
                continue
            repaired = self.repair_tensors(variant)
            if repaired is not None and repaired.passed:
                best = self.compete(repaired, best)
                continue
            if repaired is not None and self.timer is not None:
                self.time(
                    [repaired], with_float=True
                )  # what any further repair of this candidate can at best reach
            bound[id(variant)] = (repaired or variant).latency_ms
            closest = repaired if repaired is not None and repaired.verdict is not None else variant
            assert closest.verdict is not None
            reached[id(variant)] = closest.verdict
        eligible: list[Variant] = []
        for variant in missed:
            if id(variant) not in bound:
                continue
            latency = bound[id(variant)]
            base = self.outcome.float_latency_ms
            if latency is not None and base is not None and clearly_faster(base, latency):
                variant.why += "; not repaired further: it is already slower than the float model"
                continue
            if best is not None and (
                latency is None or best.latency_ms is None or not clearly_faster(latency, best.latency_ms)
            ):
                continue
            eligible.append(variant)
        if not eligible or self.out_of_time():
            return best
        chosen = min(eligible, key=lambda v: rank_key(reached[id(v)]))  # min is stable: fastest of equals
        return self.deep_repair(chosen, best)

    def deep_repair(self, variant: Variant, best: Variant | None) -> Variant | None:
        """Accuracy alternatives (same graph, other numbers), then the sensitivity search (once per run)."""
        tried = [
            v
            for v in self.outcome.variants
            if v.verdict is not None and (v is variant or v.parent == variant.label)
        ]
        base = min(tried, key=lambda v: rank_key(v.verdict))
        for recipe in self.alternatives(base.recipe):
            if self.out_of_time():
                return best
            alt = self.build(recipe, "alternative", base.label)
            if alt.proto is None or self.verify(alt) is None:
                continue
            tried.append(alt)
            if alt.passed:
                if base.origin == "plain":
                    alt.latency_ms, alt.timed_as = base.latency_ms, base.label
                    return alt if self.better(alt, best) else best
                return self.compete(alt, best)
        if self.out_of_time():
            return best
        start = min(tried, key=lambda v: rank_key(v.verdict))
        found = self.sensitivity(start)
        if found is not None and found.passed:
            return self.compete(found, best)
        return best

    def compete(self, new: Variant, best: Variant | None) -> Variant | None:
        """Time a repaired variant against the best so far (paired rounds); the faster that passes wins."""
        self.time([new] + ([best] if best is not None else []), with_float=True)
        return new if self.better(new, best) else best

    def repair_tensors(self, start: Variant) -> Variant | None:
        assert start.proto is not None and start.verdict is not None
        result: RepairResult = repair_tensors(
            self.proto,
            start.recipe,
            start.proto,
            start.verdict,
            self.calibration,
            self.judge,
            self.ctx,
            self.deadline,
        )
        self.outcome.repairs.append({"variant": start.label, "rounds": result.rounds})
        if result.recipe is start.recipe:
            return None
        variant = Variant(
            result.recipe, result.proto, result.verdict, origin="repaired tensors", parent=start.label
        )
        variant.status = "passed" if result.verdict.passed else "missed"
        variant.why = describe(result.verdict)
        self.outcome.variants.append(variant)
        return variant

    def sensitivity(self, base: Variant) -> Variant | None:
        assert base.proto is not None and base.verdict is not None
        self.log(f"sensitivity search on {base.label} ({base.origin})")
        search = Search(
            self.proto,
            base.recipe,
            self.calibration,
            self.judge,
            self.ctx,
            self.sensitivity_samples,
            self.deadline,
        )
        record: dict[str, Any] = {"variant": base.label, "origin": base.origin}
        try:
            result = search.run((base.proto, base.verdict))
        except EdgeplugError as exc:  # a trial onnxruntime cannot run: the step goes on without the search
            self.log(f"sensitivity search failed: {exc}")
            record["result"] = f"failed: {exc}"
            self.outcome.search = record
            return None
        if result is None:
            record["result"] = "no float set meets the budget"
            self.outcome.search = record
            return None
        record.update(result.as_dict())
        self.outcome.search = record
        variant = Variant(
            base.recipe.excluding(result.kept_float),
            result.proto,
            result.verdict,
            origin="sensitivity search",
            parent=base.label,
            kept_float=list(result.kept_float),
        )
        variant.status = "passed" if result.verdict.passed else "missed"
        variant.why = describe(result.verdict)
        self.outcome.variants.append(variant)
        return variant

    def fallback(self, best: Variant | None) -> Variant | None:
        """FP16, when no int8 variant meets the budget (tried even after the time budget: one conversion
        and one validation pass)."""
        assert self.fp16 is not None
        variant = self.build(self.fp16, "fallback")
        if variant.proto is None:
            return best
        self.verify(variant)
        if not variant.passed and self.repair and not self.out_of_time():
            found = self.sensitivity(variant)
            if found is not None and found.passed:
                variant = found
        if variant.passed:
            self.time([variant], with_float=True)
            if self.beats_float(variant):
                return variant
            variant.status, variant.why = "slower than float", f"{variant.why}; {self._vs_float(variant)}"
        return best

    def _vs_float(self, variant: Variant) -> str:
        return (
            f"slower than the float model ({variant.latency_ms:.3g} ms vs "
            f"{self.outcome.float_latency_ms:.3g} ms)"
        )

    def closest(self) -> Variant | None:
        judged = [v for v in self.outcome.variants if v.verdict is not None and v.proto is not None]
        return min(judged, key=lambda v: rank_key(v.verdict)) if judged else None
