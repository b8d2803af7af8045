"""The runner: load, pre_optimize, transform_graph + verify + measure per step, compile, report."""

from __future__ import annotations

import hashlib
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import bench, plugins, report_html, verify
from .budgets import RunMetrics
from .capabilities import INT8_EXACT, QDQ_INT8, Capabilities, chain_views, forms_of, refusal
from .context import Artifact, RunContext
from .data import Dataset, Preprocess, load_data
from .errors import EdgeplugError, ModelError, OptionError, PluginError, VerificationError
from .metrics import UserMetric
from .model import Model, file_size
from .options import read_config, resolve, settings_instance
from .output_dir import OutputFolder
from .plugins import CORE
from .report import new_report, print_summary, write_json
from .run_record import RunRecord, sidecar_path
from .runtime import run_each
from .step_cache import StepCache, data_fingerprint, step_key
from .tolerance import Tolerance, check_tolerance_values, split_tolerance


@dataclass
class RunSettings:
    """Everything `edgeplug run` takes; `options` maps plugin -> {key: value} (strings or typed)."""

    plugins: list[str]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: Path | None = None
    data: str | None = None
    calibration_data: str | None = None
    preprocess: str | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    output_dir: Path | None = None
    on_fail: str = "fail"
    bench: bool = False
    bench_runs: int = 30
    threads: int = 1
    seed: int = 0
    quiet: bool = False
    debug: bool = False
    metrics: list[str | UserMetric] = field(default_factory=list)  # --metric
    budgets: dict[str, float] = field(default_factory=dict)  # --budget NAME=VALUE, for every step
    step_cache: StepCache | None = None  # reuse transform results keyed by content (edgeplug search)


@dataclass
class RunResult:
    model: Model
    report: dict[str, Any]
    output_dir: Path
    artifact: Artifact | None = None


def merged_options(settings: RunSettings) -> dict[str, dict[str, Any]]:
    """Config-file tables overlaid by the explicit options (the command line wins)."""
    given: dict[str, dict[str, Any]] = {}
    if settings.config:
        for plugin, table in read_config(settings.config).items():
            given.setdefault(plugin, {}).update(table)
    for plugin, table in settings.options.items():
        given.setdefault(plugin, {}).update(table)
    return given


class Pipeline:
    """One `edgeplug run`. Use `run()`; state lives here so the report is written even on failure."""

    def __init__(self, model_path: Path | Model, settings: RunSettings) -> None:
        self.settings = settings
        self.pm = plugins.load_plugins()
        self.chain = tuple(settings.plugins)
        plugins.check_selection(self.pm, list(self.chain))
        given = merged_options(settings)
        self.run_metrics = RunMetrics.from_settings(settings.metrics, settings.budgets, given.pop(CORE, {}))
        user_metrics = self.run_metrics.user_metrics
        schemas = plugins.schemas_for(self.pm, list(self.chain), given, user_metrics)
        values, user_keys = resolve(schemas, self.chain, given)
        self.user_keys = {name: frozenset(keys) for name, keys in user_keys.items()}
        self.options: dict[str, dict[str, Any]] = {}
        self.declared: dict[str, Tolerance] = {}
        self.tolerances: dict[str, Tolerance] = {}
        self.user_budgets: dict[str, frozenset[str]] = {}
        for name in self.chain:
            check_tolerance_values(name, values[name], user_metrics)
            self.options[name], self.declared[name] = split_tolerance(
                values[name], user_keys[name], user_metrics
            )
            self.tolerances[name], self.user_budgets[name] = self.run_metrics.step_tolerance(
                self.declared[name], {}
            )
        self.settings_of: dict[str, Any] = {}
        for name in self.chain:
            declared = plugins.settings_class(self.pm, name)
            if declared is not None:
                self.settings_of[name] = settings_instance(declared, values[name])  # tolerance keys too
        self.capabilities: dict[str, Capabilities] = plugins.chain_capabilities(
            self.pm, self.chain, self.options
        )
        self.views = chain_views(self.chain, self.capabilities)
        self.input = model_path
        stem = (
            model_path.stem
            if isinstance(model_path, Path)
            else (model_path.source.stem if model_path.source else "model")
        )
        self.stem = stem
        self.out = Path(settings.output_dir or Path("edgeplug-out") / stem)
        compilers = [n for n in self.chain if plugins.has_hook(self.pm, "compile", n)]
        if len(compilers) > 1:
            raise OptionError(f"at most one compiling plugin per run; {', '.join(compilers)} all compile")
        self.compiler = compilers[0] if compilers else None
        # an exact int8 target (TensorRT, NEON dot products) is verified with Q/DQ as float operators, not
        # with onnxruntime's x86 int8 kernels, which saturate 16-bit pair sums on CPUs without VNNI
        self.qdq_as_float = any(INT8_EXACT in self.capabilities[n].target for n in self.chain)
        self.report = new_report(self._settings_dict(), settings.threads, settings.seed)
        self.report["evaluation"] = (
            "Q/DQ as float operators (the target computes int8 exactly; onnxruntime's CPU int8 kernels are "
            "not the oracle, and Q/DQ models are not timed on this CPU)"
            if self.qdq_as_float
            else "onnxruntime CPU kernels"
        )
        self.data: Dataset | None = None
        self.details: dict[str, dict[str, Any]] = {n: {} for n in self.chain}
        self.contexts: dict[str, RunContext] = {}
        self.original: Model | None = None
        self.original_out: dict[str, Any] | None = None
        self.loaded_by = CORE  # or the plugin whose load_model turned the input into ONNX

    def _settings_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "model": str(self.input if isinstance(self.input, Path) else self.input.source),
            "plugins": list(self.chain),
            "options": self.options,
            "tolerances": {n: t.as_dict() for n, t in self.tolerances.items()},
            "metrics": list(self.run_metrics.specs),
            "budgets": self.run_metrics.budgets,
            "capabilities": {
                n: {k: sorted(getattr(c, k)) for k in ("consumes", "produces", "removes", "target")}
                for n, c in self.capabilities.items()
            },
            "data": s.data,
            "calibration_data": s.calibration_data,
            "input_shapes": s.input_shapes,
            "on_fail": s.on_fail,
            "bench": s.bench,
        }

    def ctx(self, plugin: str) -> RunContext:
        """The plugin's RunContext, one for the whole run (its `state` lives from pre_optimize to compile)."""
        ctx = self.contexts.get(plugin)
        if ctx is None:
            ctx = RunContext(
                plugin=plugin,
                options=self.options.get(plugin, {}),
                tolerance=self.tolerances.get(plugin, Tolerance()),
                data=self.data,  # type: ignore[arg-type]  # None only during load_model
                chain=self.chain,
                workdir=self.out,
                threads=self.settings.threads,
                seed=self.settings.seed,
                details=self.details.setdefault(plugin, {}),
                quiet=self.settings.quiet,
                data_path=self.settings.data,
                user_options=self.user_keys.get(plugin, frozenset()),
                metrics=self.run_metrics.reported,
                user_budgets=self.user_budgets.get(plugin, frozenset()),
                qdq_as_float=self.qdq_as_float,
                settings=self.settings_of.get(plugin),
                judged_against=self.capabilities[plugin].judged_against
                if plugin in self.capabilities
                else "previous",
            )
            if plugin in self.views:
                ctx.view = self.views[plugin]
            if plugin != CORE:
                self.contexts[plugin] = ctx
        ctx.data = self.data  # type: ignore[assignment]
        ctx.original, ctx.reference = self.original, self.original_out
        ctx.tolerance = self.tolerances.get(plugin, ctx.tolerance)
        return ctx

    def log(self, message: str) -> None:
        if not self.settings.quiet:
            print(message, file=sys.stderr, flush=True)

    # -- stages -------------------------------------------------------------------------------
    def load(self) -> Model:
        if isinstance(self.input, Model):
            model = self.input
            if self.settings.input_shapes:
                model = model.with_input_shapes(self.settings.input_shapes).infer_shapes()
            return model
        path = self.input
        if not path.exists():
            raise ModelError(f"{path} does not exist")
        for name in self.chain:
            if plugins.has_hook(self.pm, "load_model", name):
                loaded = plugins.call_one(self.pm, "load_model", name, path=path, ctx=self.ctx(name))
                if loaded is not None:
                    self.loaded_by = name
                    self.log(f"[{name}] loaded {path}")
                    loaded.check()
                    if self.settings.input_shapes:
                        loaded = loaded.with_input_shapes(self.settings.input_shapes).infer_shapes()
                    return loaded
        core_ctx = self.ctx(CORE)
        core_ctx.options = {"input_shapes": self.settings.input_shapes}
        return plugins.call_one(self.pm, "load_model", CORE, path=path, ctx=core_ctx)

    def measure(self, model: Model, outputs: Mapping[str, np.ndarray], path: Path | None) -> dict[str, Any]:
        metrics: dict[str, Any] = model.stats()
        if path is not None and path.exists():
            metrics["size_bytes"] = file_size(path)
        acc = verify.accuracy(outputs, self.data.validation_labels if self.data else None)
        if acc is not None:
            metrics["accuracy"] = acc
        if (
            self.settings.bench
            and path is not None
            and self.qdq_as_float
            and QDQ_INT8 in forms_of(model.proto)
        ):
            metrics["latency_note"] = "not timed: Q/DQ runs on the exact int8 target, not on this CPU"
        elif self.settings.bench and path is not None:
            feed = self.data.validation[0] if self.data else None
            metrics["latency"] = bench.measure(
                path, self.settings.threads, self.settings.bench_runs, inputs=feed
            )
        return metrics

    def run(self) -> RunResult:
        start = time.perf_counter()
        folder = OutputFolder.for_run(
            self.out,
            self.stem,
            model=self.input if isinstance(self.input, Path) else None,
            data=self.settings.data,
            calibration=self.settings.calibration_data,
            config=self.settings.config,
        ).claim()  # refuses before any write; shares the lock the CLI / edgeplug.optimize already hold
        try:
            return self._run()
        except BaseException as exc:
            self.report["status"] = "failed"
            self.report["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.report["seconds"] = round(time.perf_counter() - start, 3)
            try:
                write_json(self.out / "report.json", self.report)
                report_html.write(self.report, self.out / "report.html")
            except OSError:
                if self.report["status"] == "ok":
                    raise  # a successful run needs its report; a failed one keeps its own error
            finally:
                folder.release()  # removes .tmp-PID files, unlocks
            if not self.settings.quiet and self.report["steps"]:
                print_summary(self.report)  # stdout; on failure the table ends at the failing step

    @property
    def final_path(self) -> Path:
        return self.out / f"{self.stem}.onnx"

    def _run(self) -> RunResult:
        s = self.settings
        model = self.load()
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = load_data(
            s.data,
            model,
            seed=s.seed,
            calibration=s.calibration_data,
            preprocess=Preprocess.parse(s.preprocess),
        )
        self.report["data"] = self.data.summary()
        if self.data.source == "generated":
            self.log("no --data: verifying on inputs generated from the model's input spec")
        why = refusal(self.chain, self.capabilities, forms_of(model.proto), plugins.removers(self.pm))
        if why:
            raise PluginError(why)
        self.original = model
        for name in self.chain:
            if plugins.has_hook(self.pm, "pre_optimize", name):
                self.log(f"[{name}] pre_optimize")
                plugins.call_one(self.pm, "pre_optimize", name, model=model, ctx=self.ctx(name))

        original = model
        self.log(f"verifying on {len(self.data.validation)} validation samples")
        original_out = verify.outputs_of(original, self.data.validation, s.threads, self.qdq_as_float)
        self.original_out = original_out
        self.resolve_budgets(original_out)
        orig_path = None
        if s.bench:
            orig_path = self.out / "steps" / "00-original.onnx"
            original.save(orig_path)
        self.report["original"] = {"metrics": self.measure(original, original_out, orig_path)}
        if isinstance(self.input, Path) and self.loaded_by == CORE:  # the user's file, external data included
            self.report["original"]["metrics"]["size_bytes"] = file_size(self.input)

        prev_out = original_out
        lossy: tuple[float, int, Model, Model] | None = None
        transforms = [n for n in self.chain if plugins.has_hook(self.pm, "transform_graph", n)]
        for index, name in enumerate(transforms, 1):  # a compile-only plugin (neon) has no step row
            step, new_model, new_out = self.step(index, name, model, prev_out, original_out)
            self.report["steps"].append(step)
            if step["status"] == "applied":
                lossy = self.lossiest(step, model, new_model, lossy)
                model, prev_out = new_model, new_out
            elif step["status"] == "failed":
                if s.on_fail == "skip":
                    step["status"] = "skipped"
                    self.log(f"[{name}] failed verification, skipped (--on-fail skip): {step['error']}")
                else:
                    raise VerificationError(f"step {index} ({name}) failed: {step['error']}", step=name)

        if lossy is not None and lossy[0] > 0:
            self.report["profile"] = self.profile(*lossy[1:])
        final_path = self.final_path
        model.save(final_path)
        artifact = self.compile(model, final_path, prev_out)
        record = RunRecord.of_run(final_path, model.history, artifact)
        self.report["final"] = {
            "path": str(final_path),
            "sha256": record.sha256,
            "history": list(model.history),
            "record": str(sidecar_path(final_path)),
            "record_sha256": record.write(self.out),  # what `-o security.sha256=` pins
        }
        self.report["status"] = "ok"
        return RunResult(model, self.report, self.out, artifact)

    @staticmethod
    def lossiest(
        step: dict[str, Any],
        before: Model,
        after: Model | None,
        worst: tuple[float, int, Model, Model] | None,
    ) -> tuple[float, int, Model, Model] | None:
        """Keep the applied step that lost the most (lowest per-sample cosine against the model before it)."""
        outputs = step["verification"]["vs_previous"].values()
        cosines = [m["min_sample_cosine"] for m in outputs if "min_sample_cosine" in m]
        loss = 1.0 - min(cosines) if cosines else 0.0
        if after is None or (worst is not None and worst[0] >= loss):
            return worst
        return loss, step["index"], before, after

    def profile(self, index: int, before: Model, after: Model) -> dict[str, Any]:
        """The layer-wise error profile of the most lossy step (for report.html), on one validation sample."""
        found = verify.first_divergence(
            before, after, self.data.validation[0], Tolerance(min_cosine=0.999), self.qdq_as_float
        )
        found = found or {}
        return {
            "index": index,
            "rows": found.get("profile", []),
            "first_diverging": found.get("node"),
            "criterion": "cosine 0.999",
        }

    def resolve_budgets(self, original_out: dict[str, Any]) -> None:
        """Refuse metrics that do not apply to the model; fix relative default budgets on its own scores."""
        labels = self.data.validation_labels if self.data else None
        scores = self.run_metrics.check_applicable(original_out, labels, len(self.data.validation))
        self.report["reference_scores"] = scores
        for name in self.chain:
            self.tolerances[name], self.user_budgets[name] = self.run_metrics.step_tolerance(
                self.declared[name], scores
            )
            if name in self.contexts:
                self.contexts[name].user_budgets = self.user_budgets[name]
        self.report["settings"]["tolerances"] = {n: t.as_dict() for n, t in self.tolerances.items()}

    def cache_key(self, name: str, model_bytes: bytes, ctx: RunContext) -> str:
        """Everything a step's result depends on (step_cache.py)."""
        from .report import tool_versions

        caps = self.capabilities[name]
        parts: dict[str, Any] = {
            "model": hashlib.sha256(model_bytes).hexdigest(),
            "plugin": [name, *plugins.distribution_of(name)],
            "options": self.options.get(name, {}),
            "tolerance": ctx.tolerance.as_dict(),
            "chain": [sorted(ctx.downstream), sorted(ctx.upstream), sorted(ctx.target), ctx.qdq_as_float],
            "data": [
                data_fingerprint(self.data.calibration, self.data.calibration_labels),
                data_fingerprint(self.data.validation, self.data.validation_labels),
                self.data.source,
            ],
            "tools": tool_versions(),
            "seed": self.settings.seed,
        }
        if caps.machine_dependent:
            from .cpu import cpu_info

            parts["machine"] = [cpu_info(), self.settings.threads]
        return step_key(parts)

    def judge(self, name: str, reference: dict[str, Any], candidate: dict[str, Any]) -> verify.Verdict:
        return verify.judge(
            reference,
            candidate,
            self.tolerances[name],
            specs=self.run_metrics.reported,
            labels=self.data.validation_labels,
            samples=len(self.data.validation),
            original=self.original_out,
            user_budgets=tuple(self.user_budgets.get(name, ())),
            judged_against=self.capabilities[name].judged_against,
        )

    def step(
        self,
        index: int,
        name: str,
        model: Model,
        prev_out: dict[str, np.ndarray],
        original_out: dict[str, np.ndarray],
    ) -> tuple[dict[str, Any], Model | None, dict[str, np.ndarray] | None]:
        ctx = self.ctx(name)
        ctx.previous = prev_out
        entry: dict[str, Any] = {"index": index, "plugin": name, "tolerance": ctx.tolerance.as_dict()}
        self.log(f"[{name}] transform_graph")
        before = model.serialized()
        t0 = time.perf_counter()
        key = self.cache_key(name, before, ctx) if self.settings.step_cache is not None else None
        cached = self.settings.step_cache.get(key) if key else None
        try:
            if cached is not None:
                entry["cache"] = "hit"
                ctx.details.update(cached.details)
                new = None if cached.proto is None else model.replace(cached.proto, name)
            else:
                new = plugins.call_one(self.pm, "transform_graph", name, model=model, ctx=ctx)
                if key and isinstance(new, Model | type(None)) and model.serialized() == before:
                    self.settings.step_cache.put(key, None if new is None else new.proto, ctx.details)
                    entry["cache"] = "miss"
        except EdgeplugError:
            raise
        except Exception as exc:
            entry.update(
                status="failed",
                seconds=round(time.perf_counter() - t0, 3),
                details=ctx.details,
                error=f"plugin raised {type(exc).__name__}: {exc}",
            )
            if self.settings.debug:
                traceback.print_exc()
            return entry, None, None
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        entry["details"] = ctx.details
        if model.serialized() != before:
            raise PluginError(
                f"plugin {name!r} modified the model it was given; transform_graph must return a new Model"
            )
        if new is None:
            entry["status"] = "not_applicable"
            self.log(f"[{name}] not applicable to this model")
            return entry, None, None
        if not isinstance(new, Model):
            raise PluginError(
                f"plugin {name!r} returned {type(new).__name__} from transform_graph, not a Model"
            )
        if not new.history or new.history[-1] != name:
            new = new.replace(new.proto, name)
        try:
            new.check(weights=False)  # onnxruntime reads the weights right after
        except ModelError as exc:
            entry.update(status="failed", error=f"the transformed model is invalid: {exc}")
            return entry, None, None
        try:
            new_out = verify.outputs_of(new, self.data.validation, self.settings.threads, self.qdq_as_float)
        except EdgeplugError as exc:
            entry.update(status="failed", error=str(exc))
            return entry, None, None
        verdict = self.judge(name, prev_out, new_out)
        failures = verdict.failures
        entry["verification"] = {
            "vs_previous": verdict.outputs,
            "vs_original": verify.compare(original_out, new_out, samples=len(self.data.validation)),
            "metrics": {k: v.as_dict() for k, v in verdict.metrics.items()},
            "metrics_vs_original": {k: v.as_dict() for k, v in verdict.metrics_vs_original.items()},
            "budgets": verdict.budgets,
            "passed": not failures,
            "failures": failures,
        }
        if verdict.notes:
            entry["verification"]["notes"] = verdict.notes
        if ctx.tolerance.waived_dead and any(m.get("dead_slices") for m in verdict.outputs.values()):
            entry["verification"]["dead_slices_waived"] = True
        if failures:
            self.log(f"[{name}] verification failed; locating the first diverging node")
            divergence = verify.first_divergence(
                model, new, self.data.validation[0], ctx.tolerance, self.qdq_as_float
            )
            entry["verification"]["divergence"] = divergence
            where = ""
            if divergence and divergence.get("node"):
                where = f"; first diverging node: {divergence['node']} ({divergence['op_type']})"
            entry.update(status="failed", error="; ".join(failures) + where)
            return entry, None, None
        path = self.out / "steps" / f"{index:02d}-{name}.onnx"
        new.save(path)
        entry["path"] = str(path)
        entry["status"] = "applied"
        entry["metrics"] = self.measure(new, new_out, path)
        entry["bought"] = bought(self.report["steps"], self.report["original"]["metrics"], entry["metrics"])
        return entry, new, new_out

    def compile(self, model: Model, final_path: Path, final_out: dict[str, np.ndarray]) -> Artifact | None:
        if self.compiler is None:
            return Artifact.of("onnx", [final_path])
        name = self.compiler
        self.log(f"[{name}] compile")
        ctx = self.ctx(name)
        ctx.previous = final_out  # the final model's outputs: a compile plugin reuses them
        section: dict[str, Any] = {"plugin": name, "status": "running"}
        self.report["compile"] = section
        try:
            artifact = plugins.call_one(self.pm, "compile", name, model=model, ctx=ctx)
        except BaseException as exc:
            section.update(status="failed", error=f"{type(exc).__name__}: {exc}", details=ctx.details)
            raise
        if artifact is None:
            section.update(status="not_applicable", details=ctx.details)
            return Artifact.of("onnx", [final_path])
        section.update(
            status="built",
            kind=artifact.kind,
            files=[str(f) for f in artifact.files],
            sha256=artifact.sha256,
            info=artifact.info,
            details=ctx.details,
        )
        tolerance = artifact.tolerance or artifact.info.get("tolerance")
        if isinstance(tolerance, dict):
            tolerance = Tolerance.from_values(tolerance)
        self.verify_artifact(
            artifact, final_out, tolerance if isinstance(tolerance, Tolerance) else ctx.tolerance
        )
        return artifact

    def verify_artifact(self, artifact: Artifact, final_out: dict[str, np.ndarray], tol: Tolerance) -> None:
        """Run a compiled artifact through a plugin's make_runner, when one can, against the final model (or
        the reference model the artifact names, e.g. a cascade's largest model), with the artifact's budget."""
        runner = self.pm.hook.make_runner(artifact=artifact, options={"threads": self.settings.threads})
        if runner is None or artifact.kind == "onnx":
            return
        reference, against = final_out, "the final model"
        if artifact.reference is not None:
            reference = verify.outputs_of(
                Model.load(artifact.reference), self.data.validation, self.settings.threads, self.qdq_as_float
            )
            against = f"{_inside(artifact.reference, self.out)} (the artifact's reference model)"
        elif self.qdq_as_float:
            against = "the final model, Q/DQ as float operators"
        got = run_each(runner, self.data.validation)
        verdict = verify.judge(
            reference,
            got,
            tol,
            specs=self.run_metrics.reported,
            labels=self.data.validation_labels,
            samples=len(self.data.validation),
            original=reference if artifact.reference is not None else None,
            user_budgets=tuple(tol.metric_budgets) if artifact.reference is not None else (),
        )
        failures = verdict.failures
        self.report["compile"]["verification"] = {
            "reference": against,
            "vs_final_model" if artifact.reference is None else "vs_reference": verdict.outputs,
            "metrics": {k: v.as_dict() for k, v in verdict.metrics.items()},
            "budgets": verdict.budgets,
            "tolerance": tol.as_dict(),
            "passed": not failures,
            "failures": failures,
        }
        if failures:
            raise VerificationError(
                f"compiled {artifact.kind} differs from {against}: {'; '.join(failures)}", step=self.compiler
            )


def _inside(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def bought(
    steps: Sequence[dict[str, Any]], original: dict[str, Any], metrics: dict[str, Any]
) -> dict[str, Any]:
    """What a step bought against the previous applied model: size, nodes and latency ratios."""
    prev = original
    for step in reversed(steps):
        if step["status"] == "applied":
            prev = step["metrics"]
            break
    result = {
        "size_ratio": prev["size_bytes"] / max(metrics["size_bytes"], 1),
        "nodes_delta": metrics["nodes"] - prev["nodes"],
        "nonzero_parameters_ratio": prev["nonzero_parameters"] / max(metrics["nonzero_parameters"], 1),
    }
    if metrics.get("latency") and prev.get("latency"):
        result["speedup_p50"] = prev["latency"]["p50_ms"] / metrics["latency"]["p50_ms"]
    return result
