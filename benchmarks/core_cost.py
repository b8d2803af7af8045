"""The core's own cost on a ResNet-50-sized model: load, check, save, and the inference passes per step.

    python benchmarks/core_cost.py [--samples 8]

Targets (issue 2): load, check and save under 1 s each; each verified step costs one inference pass
over the validation set (the previous model's outputs are cached).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgeplug  # noqa: E402
from edgeplug import Model, hookimpl, runtime  # noqa: E402
from edgeplug.model import set_metadata  # noqa: E402

from tests import zoo  # noqa: E402


class Stamp:
    """A real, exact transform (a metadata edit) so the step's cost is the core's alone."""

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def transform_graph(self, model, ctx):
        proto = model.copy_proto()
        set_metadata(proto, "stamp", self.name)
        return model.replace(proto)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8, help="validation samples")
    args = parser.parse_args()

    path = zoo.cached("resnet50", zoo.resnet50)
    model, t_load = timed(lambda: Model.load(path))
    _, t_check = timed(model.check)
    with tempfile.TemporaryDirectory() as tmp:
        _, t_save = timed(lambda: model.save(Path(tmp) / "m.onnx"))
        rng = np.random.default_rng(0)
        npz = Path(tmp) / "data.npz"
        np.savez(npz, **{model.inputs[0].name: rng.random((2 * args.samples, 3, 224, 224), dtype=np.float32)})

        calls = {"samples": 0}
        original = runtime.run_all

        def counting(sess, samples):
            calls["samples"] += len(samples)
            return original(sess, samples)

        runtime.run_all = counting
        import edgeplug.verify as verify_mod

        verify_mod.run_all = counting
        pm = edgeplug.load_plugins()
        pm.register(Stamp("a"), name="stamp_a")
        pm.register(Stamp("b"), name="stamp_b")
        result, t_run = timed(
            lambda: edgeplug.optimize(path, ["stamp_a", "stamp_b"], data=npz, output_dir=Path(tmp) / "out")
        )
    validation = result.report["data"]["validation_samples"]
    passes = calls["samples"] / validation
    rows = {
        "model": "ResNet-50 (random weights)",
        "size_mb": path.stat().st_size / 2**20,
        "load_s": t_load,
        "check_s": t_check,
        "save_s": t_save,
        "run_two_steps_s": t_run,
        "validation_samples": validation,
        "inference_passes": passes,
        "passes_per_step": (passes - 1) / 2,
    }
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| load (checker + shape inference), s | {t_load:.2f} | < 1 |")
    print(f"| check (full), s | {t_check:.2f} | < 1 |")
    print(f"| save (atomic), s | {t_save:.2f} | < 1 |")
    print(f"| inference passes over validation, 2 steps | {passes:.0f} (original + 1 per step) | 3 |")
    print(f"| whole run of 2 exact steps, s | {t_run:.2f} | |")
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "core_cost.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
