"""The overhead benchmark on ResNet-50 (`-m benchmark`): in-process checks must add under 10% latency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.benchmark
@pytest.mark.slow
def test_in_process_checks_add_under_ten_percent(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "security_overhead.py"
    done = subprocess.run(
        [sys.executable, str(script), "--runs", "20", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "security.json").read_text())
    assert result["guard_work_pct_of_baseline"] < 10
    assert result["checks_overhead_pct"] < 10
    rows = {r["mode"]: r for r in result["rows"]}
    assert rows["squeeze"]["ratio"] > 2.5  # the squeezed inferences really run
