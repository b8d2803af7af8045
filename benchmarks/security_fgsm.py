"""Feature squeezing against FGSM on the example digits CNN: detection rate of successful attacks and false
positives on clean held-out images, for eps 0.1, 0.2, 0.3.

    python benchmarks/security_fgsm.py

The threshold is the one `edgeplug run --plugins security` records (calibrated to squeeze_fpr = 5% on the
calibration split); the gradient is taken by central finite differences through onnxruntime. Two setups:
  held-out  calibrate on half A of digits_test.npz, measure on half B (disjoint, seed 0)
  train     calibrate on digits_train.npz (the images the CNN was trained on), measure on digits_test.npz
Writes benchmarks/results/security_fgsm.json and security_fgsm.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgeplug  # noqa: E402
from edgeplug.model import get_metadata  # noqa: E402
from edgeplug_security.squeeze import Squeezer  # noqa: E402

from tests.security.fgsm import evaluate, ort_runner  # noqa: E402

EXAMPLES = ROOT / "examples"
EPS = (0.1, 0.2, 0.3)


def recorded_squeezer(calibration: Path, validation: Path, out: Path) -> tuple[Path, Squeezer]:
    result = edgeplug.optimize(
        EXAMPLES / "digits_cnn.onnx",
        ["security"],
        data=str(validation),
        calibration_data=str(calibration),
        output_dir=out,
    )
    path = result.output_dir / "digits_cnn.onnx"
    record = json.loads(get_metadata(onnx.load(str(path)), "edgeplug.security"))
    return path, Squeezer.from_dict(record["squeeze"])


def main() -> None:
    with np.load(EXAMPLES / "digits_test.npz") as data:
        x, labels = data["input"], data["labels"]
    order = np.random.default_rng(0).permutation(len(x))
    halves = {"A": order[: len(x) // 2], "B": order[len(x) // 2 :]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, index in halves.items():
            np.savez(folder / f"{name}.npz", input=x[index], labels=labels[index])
        setups = {
            "held-out (A -> B)": (folder / "A.npz", folder / "B.npz", x[halves["B"]], labels[halves["B"]]),
            "train -> test": (EXAMPLES / "digits_train.npz", EXAMPLES / "digits_test.npz", x, labels),
        }
        for setup, (calibration, validation, test_x, test_y) in setups.items():
            path, squeezer = recorded_squeezer(calibration, validation, folder / setup.split()[0])
            for row in evaluate(ort_runner(str(path)), squeezer, test_x, test_y, EPS):
                rows.append(
                    {
                        "setup": setup,
                        "eps": row.eps,
                        "threshold": squeezer.threshold,
                        "squeezers": f"{squeezer.bits}-bit"
                        + (f" + median {squeezer.median}x{squeezer.median}" if squeezer.median > 1 else ""),
                        "attacked": row.attacked,
                        "successful": row.successful,
                        "success_rate": row.success_rate,
                        "detected": row.detected,
                        "detection_rate": row.detection_rate,
                        "clean_fpr": row.clean_fpr,
                    }
                )
    lines = [
        "| calibration -> measured | squeezers | threshold | eps | attack success | detected | clean FPR |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['setup']} | {r['squeezers']} | {r['threshold']:.4f} | {r['eps']:.1f} | "
        f"{r['successful']}/{r['attacked']} ({r['success_rate']:.0%}) | "
        f"{r['detected']}/{r['successful']} ({r['detection_rate']:.1%}) | {r['clean_fpr']:.1%} |"
        for r in rows
    ]
    markdown = "\n".join(lines)
    print(markdown)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "security_fgsm.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "security_fgsm.md").write_text(markdown + "\n")


if __name__ == "__main__":
    main()
