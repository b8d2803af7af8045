"""The distillation loop: the current model (converted to torch) learns the original model's outputs on the
training split; after every epoch it is judged on the selection split exactly as the core will judge the
step, and the best checkpoint is the one kept."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from edgeplug import Model, PluginError, RunContext

from .augment import augment, image_axes
from .converter import Converted, require_torch, to_torch
from .losses import SKIP, LossWeights, distillation_loss, kind_of
from .settings import DistillSettings
from .teacher import Teacher, common_features
from .training_data import Sample, Split, split

CONVERSION_LIMIT = 1e-3  # largest |torch - onnxruntime| of the converted model, relative to the output scale
WARMUP = 0.1  # share of the steps spent warming the learning rate up (at most MAX_WARMUP)
MAX_WARMUP = 100
CLIP_NORM = 5.0


@dataclass
class Outcome:
    """What training produced: the student with its best checkpoint loaded, and the record of the run."""

    converted: Converted
    split: Split
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = "epochs"
    steps: int = 0
    seconds: float = 0.0
    conversion_error: float | None = None
    features: list[str] = field(default_factory=list)
    batched: bool = True

    def summary(self) -> dict[str, Any]:
        return {
            "data": self.split.summary(),
            "steps": self.steps,
            "epochs_run": len(self.history) - 1,
            "stopped_by": self.stopped_by,
            "best_epoch": self.best_epoch,
            "seconds": round(self.seconds, 3),
            "conversion_error": self.conversion_error,
            "features_matched": len(self.features),
            "batched": self.batched,
            "history": self.history,
        }


def _stack(items: Sequence[Sample]) -> Sample:
    return {name: np.concatenate([item[name] for item in items]) for name in items[0]}


class Student:
    """The converted model with the plumbing training needs: stacked or item-by-item forward passes."""

    def __init__(self, torch: Any, converted: Converted, item_size: int) -> None:
        self.torch = torch
        self.converted = converted
        self.item_size = item_size
        self.batched = True

    def forward(self, inputs: Sample) -> list[Any]:
        torch = self.torch
        tensors = {n: torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.converted.inputs}
        if self.batched:
            return list(self.converted(*tensors.values()))
        total = len(next(iter(tensors.values())))
        parts = [
            self.converted(*[t[i : i + self.item_size] for t in tensors.values()])
            for i in range(0, total, self.item_size)
        ]
        return [
            torch.cat(list(values)) if values[0].ndim else torch.stack(list(values)) for values in zip(*parts)
        ]

    def outputs(self, items: Sequence[Sample], chunk: int) -> list[np.ndarray]:
        """Evaluation-mode outputs (the model's outputs only, no features) for a list of items."""
        self.converted.module.eval()
        count = len(self.converted.outputs)
        collected: list[list[np.ndarray]] = [[] for _ in range(count)]
        with self.torch.no_grad():
            for start in range(0, len(items), chunk):
                result = self.forward(_stack(items[start : start + chunk]))
                for i in range(count):
                    collected[i].append(result[i].detach().numpy())
        return [np.concatenate(parts) for parts in collected]

    def check_batching(self, items: Sequence[Sample]) -> None:
        """Items stacked into one batch must compute what they compute one by one (a graph exported for a
        fixed batch may hide its batch size in a Reshape); otherwise run item by item."""
        if len(items) < 2:
            self.batched = False
            return
        pair = list(items[:2])
        try:
            together = self.outputs(pair, chunk=2)
        except Exception:
            self.batched = False
            return
        self.batched = False
        alone = self.outputs(pair, chunk=1)
        self.batched = all(
            a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(together, alone)
        )


def _freeze_norm_statistics(torch: Any, module: Any) -> None:
    """Training mode with BatchNorm statistics frozen: fine-tuning on a small set keeps the running statistics
    the model was trained with (the affine parameters still learn)."""
    module.train()
    for sub in module.modules():
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
            sub.eval()


def _trainable_constants(torch: Any, module: Any) -> int:
    """Float graph constants of more than one element (MatMul weights, biases added by Add, embeddings) are
    stored by onnx2torch as buffers; make them parameters so they learn too. Returns how many."""
    container = getattr(module, "initializers", None)
    if container is None:
        return 0
    statistics = _norm_statistics(module)
    count = 0
    for name, buffer in list(container._buffers.items()):
        if name in statistics:  # running mean/var stay frozen buffers (autograd refuses them as parameters)
            continue
        if buffer is not None and buffer.dtype.is_floating_point and buffer.numel() > 1:
            del container._buffers[name]
            container.register_parameter(name, torch.nn.Parameter(buffer.detach().clone()))
            count += 1
    return count


def _norm_statistics(module: Any) -> set[str]:
    """Names, in the `initializers` container, of the constants a BatchNormalization reads as its running
    mean and variance (ONNX inputs 3 and 4). onnx2torch passes them as graph inputs when the BatchNorm's
    parameters cannot become a torch BatchNorm's own (e.g. a scale tensor shared with another node)."""
    found: set[str] = set()
    graph = getattr(module, "graph", None)
    if graph is None:
        return found
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) < 5:
            continue
        kind = type(module.get_submodule(node.target)).__name__
        if "BatchNorm" not in kind and not str(node.target).endswith("BatchNormalization"):
            continue
        for arg in node.args[3:5]:
            target = str(getattr(arg, "target", ""))
            if getattr(arg, "op", None) == "get_attr" and target.startswith("initializers."):
                found.add(target.split(".", 1)[1])
    return found


def _conversion_error(student: Student, ctx: RunContext, names: Sequence[str]) -> float | None:
    """|torch - onnxruntime| of the converted model on a few validation samples, relative to the scale."""
    if ctx.previous is None or not ctx.data.validation:
        return None
    items = ctx.data.validation[:8]
    got = student.outputs(items, chunk=1)
    worst = 0.0
    for name, array in zip(names, got):
        reference = ctx.previous.get(name)
        if not isinstance(reference, np.ndarray) or reference.dtype.kind != "f":
            continue
        reference = reference[: len(array)]
        if reference.shape != array.shape:
            return float("inf")
        scale = max(1.0, float(np.abs(reference).max()))
        worst = max(worst, float(np.abs(reference - array).max()) / scale)
    return worst


class Judge:
    """Scores the student on the selection split as the core scores the step (budgets vs the original)."""

    def __init__(
        self,
        torch: Any,
        ctx: RunContext,
        names: Sequence[str],
        teacher_out: Sequence[np.ndarray],
        data: Split,
        kinds: Sequence[str],
        weights: LossWeights,
    ) -> None:
        self.torch = torch
        self.ctx = ctx
        self.names = list(names)
        self.teacher = list(teacher_out)
        self.reference = dict(zip(self.names, teacher_out))
        self.labels = data.selection_labels
        self.samples = data.selection_samples
        self.kinds = list(kinds)
        self.weights = weights

    def __call__(self, outputs: Sequence[np.ndarray]) -> tuple[tuple[float, float], dict[str, Any]]:
        """((budget margin, -teacher loss): larger is better, the loss breaking ties), and the values."""
        verdict = self.ctx.judge(
            dict(zip(self.names, outputs)),
            reference=self.reference,
            original=self.reference,
            labels=self.labels,
            samples=self.samples,
        )
        values = {name: value.value for name, value in verdict.metrics.items() if value.value is not None}
        tensors = [self.torch.from_numpy(np.ascontiguousarray(a)) for a in outputs]
        targets = [self.torch.from_numpy(np.ascontiguousarray(a)) for a in self.teacher]
        with self.torch.no_grad():
            loss, _ = distillation_loss(self.torch, tensors, targets, self.kinds, self.weights)
        margin = verdict.margin()
        scores = {"margin": margin, "passed": verdict.passed, "loss": float(loss), **values}
        return (round(margin, 9), -float(loss)), scores


def _describe(scores: dict[str, Any]) -> str:
    shown = [f"{k} {v:.4f}" for k, v in scores.items() if k not in ("margin", "passed", "loss")]
    shown.append(f"loss {scores['loss']:.4g}")
    return ", ".join(shown) + f" (margin {scores['margin']:+.4f})"


def train(model: Model, ctx: RunContext, settings: DistillSettings) -> Outcome:
    """Distil ctx.original into `model`; returns the student holding its best checkpoint. Trains with the
    run's --threads (torch's default of every core is many times slower on small models of a busy machine)."""
    torch = require_torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, ctx.threads))
    try:
        return _train(torch, model, ctx, settings)
    finally:
        torch.set_num_threads(threads)


def _train(torch: Any, model: Model, ctx: RunContext, settings: DistillSettings) -> Outcome:
    seed = ctx.seed if settings.seed is None else settings.seed
    budget = settings.time_budget()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = split(ctx, model, settings.data, settings.selection_fraction, seed)
    original = ctx.original if ctx.original is not None else model
    features = common_features(original.proto, model.proto) if settings.feature_weight > 0 else []
    converted = to_torch(model.proto, features)
    teacher = Teacher(original.proto, converted.outputs, features, ctx.threads)
    item_size = len(next(iter(data.train[0].values())))
    student = Student(torch, converted, item_size)
    student.check_batching(data.selection)
    conversion = _conversion_error(student, ctx, converted.outputs)
    if conversion is not None and conversion > CONVERSION_LIMIT:
        raise PluginError(
            f"distill: the PyTorch conversion of this model computes something else than onnxruntime "
            f"(error {conversion:.3g} relative to the output scale); distillation would train another model"
        )
    _trainable_constants(torch, converted.module)

    outputs = len(converted.outputs)
    teacher_selection = teacher.run(data.selection)
    kinds = [kind_of(a) for a in teacher_selection[:outputs]]
    if all(k == SKIP for k in kinds):
        raise PluginError("distill: the model has no float output to learn from the original")
    weights = LossWeights(settings.temperature, settings.alpha, settings.feature_weight)
    judge = Judge(torch, ctx, converted.outputs, teacher_selection[:outputs], data, kinds, weights)
    specs = {i.name: i for i in model.inputs}
    axes = {}
    if settings.augment:
        for name in converted.inputs:
            found = image_axes(specs[name].shape, specs[name].dtype)
            if found:
                axes[name] = found
    per_step = max(1, settings.batch_size // item_size)
    per_epoch = math.ceil(len(data.train) / per_step)
    total = settings.steps or settings.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)
    params = [p for p in converted.module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    warm = max(1, min(MAX_WARMUP, int(total * WARMUP)))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
    )
    cached: dict[int, list[np.ndarray]] = {}

    def targets(indices: Sequence[int], inputs: Sample) -> list[np.ndarray]:
        """The teacher's arrays for a batch: run on the augmented inputs, or cached per training item."""
        if axes:
            return teacher.run(_items(inputs, item_size))
        missing = [i for i in indices if i not in cached]
        if missing:
            arrays = teacher.run([data.train[i] for i in missing])
            for k, i in enumerate(missing):
                cached[i] = [a[k * item_size : (k + 1) * item_size] for a in arrays]
        return [np.concatenate([cached[i][j] for i in indices]) for j in range(len(teacher.names))]

    start = time.perf_counter()
    # the starting model is scored for the record, not as a candidate: an earlier step may have fitted it to
    # the calibration samples the selection split comes from (least-squares reconstruction after pruning),
    # which makes its score optimistic; the best trained epoch is kept, and the core verifies it
    _, scores = judge(student.outputs(data.selection, per_step))
    best_score: tuple[float, float] | None = None
    best_state: dict[str, Any] = {}
    history: list[dict[str, Any]] = [{"epoch": 0, "selection": scores}]
    ctx.log(
        f"training on {data.train_samples} samples, choosing the checkpoint on {data.selection_samples} held "
        f"out ({'batched' if student.batched else 'item by item'}; {total} steps of {per_step * item_size}); "
        f"before: {_describe(scores)}"
    )
    best_epoch, step, stopped_by = 0, 0, "steps" if settings.steps else "epochs"
    for epoch in range(1, epochs + 1):
        _freeze_norm_statistics(torch, converted.module)
        order = rng.permutation(len(data.train))
        losses: list[float] = []
        parts_sum: dict[str, float] = {}
        batches = [order[i : i + per_step] for i in range(0, len(order), per_step)]
        for indices in ctx.progress(batches, f"epoch {epoch}/{epochs}"):
            if step >= total:
                break
            items = [data.train[i] for i in indices]
            inputs = _stack(items)
            mask = None
            if axes:
                inputs, mask = augment(inputs, axes, rng)
            teacher_arrays = [torch.from_numpy(np.ascontiguousarray(a)) for a in targets(indices, inputs)]
            labels = None
            if data.train_labels is not None:
                labels = torch.from_numpy(
                    np.concatenate([data.train_labels[i] for i in indices]).astype(np.int64)
                )
            loss, parts = distillation_loss(
                torch,
                student.forward(inputs),
                teacher_arrays,
                kinds,
                weights,
                labels=labels,
                label_mask=None if mask is None else torch.from_numpy(mask),
                features=len(features),
            )
            if not torch.isfinite(loss):
                raise PluginError(
                    f"distill: the loss became {float(loss)} at step {step + 1}; lower distill.lr "
                    f"(now {settings.lr:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(float(loss.detach()))
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + value
            if budget is not None and time.perf_counter() - start > budget:
                stopped_by = "time budget"
                break
        score, scores = judge(student.outputs(data.selection, per_step))
        record = {
            "epoch": epoch,
            "steps": step,
            "loss": float(np.mean(losses)) if losses else None,
            **{f"loss_{k}": v / max(1, len(losses)) for k, v in parts_sum.items()},
            "selection": scores,
            "seconds": round(time.perf_counter() - start, 3),
        }
        history.append(record)
        better = best_score is None or score > best_score
        if better:
            best_score, best_epoch, best_state = score, epoch, _snapshot(converted.module)
        loss_text = f"{record['loss']:.4g}" if record["loss"] is not None else "-"
        ctx.log(
            f"epoch {epoch}/{epochs}: loss {loss_text}, selection {_describe(scores)}{' (best)' if better else ''}"
        )
        if stopped_by == "time budget" or step >= total:
            break
    converted.module.load_state_dict(best_state)
    converted.module.eval()
    return Outcome(
        converted=converted,
        split=data,
        best_epoch=best_epoch,
        history=history,
        stopped_by=stopped_by,
        steps=step,
        seconds=time.perf_counter() - start,
        conversion_error=conversion,
        features=features,
        batched=student.batched,
    )


def _items(inputs: Sample, size: int) -> list[Sample]:
    total = len(next(iter(inputs.values())))
    return [{name: array[i : i + size] for name, array in inputs.items()} for i in range(0, total, size)]


def _snapshot(module: Any) -> dict[str, Any]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}
