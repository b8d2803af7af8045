"""quant.mode=auto: the recipes that fit, timed with an injected timer (never this machine's clock), verified
fastest first; the candidate table in the report; no timing for an exact-int8 target; the time budget."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import pytest
from edgeplug import OptionError
from edgeplug.pipeline import RunResult
from edgeplug_quantize import plugin

from .conftest import DIGITS, DIGITS_TEST, DIGITS_TRAIN, make_ctx, run_cli
from .models import CPU_LIKE, minilm_class, op_cost_timer, token_data


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> tuple[Path, Path]:
    return minilm_class(), token_data(tmp_path_factory.mktemp("tokens") / "tokens.npz")


def _quant(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    return next(s for s in report["steps"] if s["plugin"] == "quant")


def _digits_auto(tmp_path: Path) -> RunResult:
    """quant with default options on the trained digits CNN, calibrated on its training images."""
    return edgeplug.optimize(
        DIGITS,
        ["quant"],
        data=DIGITS_TEST,
        calibration_data=str(DIGITS_TRAIN),
        output_dir=tmp_path / "out",
        quiet=True,
    )


def _rows(step: dict) -> dict[str, dict]:
    return {f"{r['recipe']} ({r['origin']})": r for r in step["details"]["candidates"]}


def test_auto_picks_dynamic_for_an_encoder_and_reports_the_table(encoder, tmp_path, fake_timer):
    model, data = encoder
    timed = fake_timer(op_cost_timer(CPU_LIKE))
    out = tmp_path / "out"
    result = run_cli("run", model, "--plugins", "quant", "--data", data, "--output-dir", out)
    assert result.exit_code == 0, result.output
    step = _quant(out)
    assert step["details"]["mode"] == "auto" and step["details"]["profile"] == "encoder"
    assert step["details"]["chosen"]["recipe"].startswith("dynamic")
    rows = _rows(step)
    plain = {name: row for name, row in rows.items() if row["origin"] == "plain"}
    assert {"static", "dynamic"} <= {name.split()[0] for name in plain}
    assert all(row["latency_ms"] is not None and row["size_bytes"] for row in plain.values())
    kept = [row for row in rows.values() if row["status"] == "kept"]
    assert len(kept) == 1 and kept[0]["passed"] and kept[0]["metrics"]["cosine"] >= 0.99
    fastest = min(plain.values(), key=lambda r: r["latency_ms"])
    assert kept[0] is fastest  # the fastest candidate met the budget ...
    for row in plain.values():  # ... so no slower one was verified: it could not win
        if row is not kept[0]:
            assert row["status"] == "cannot win" and "metrics" not in row
    assert step["details"]["float_latency_ms"] > fastest["latency_ms"]
    assert len(timed) == 3 * (len(plain) + 1)  # three alternated rounds, the float model included
    assert "kept dynamic" in result.output  # the table and the choice are on the terminal too
    assert step["verification"]["passed"]


@pytest.mark.int8
def test_auto_picks_static_for_a_cnn(tmp_path, fake_timer):
    fake_timer(op_cost_timer(CPU_LIKE))
    result = _digits_auto(tmp_path)
    step = result.report["steps"][0]
    assert step["details"]["profile"] == "convolutional"
    assert step["details"]["chosen"]["recipe"].startswith("static")
    rows = step["details"]["candidates"]
    dynamic = [r for r in rows if r["recipe"].startswith("dynamic")]
    assert dynamic and all(r["status"] == "slower than float" for r in dynamic)  # ConvInteger priced slower
    assert step["verification"]["passed"]
    assert step["details"]["recipe"]["op_counts"]["QuantizeLinear"] > 0


def test_a_faster_candidate_that_misses_is_repaired_before_a_slower_one_is_kept(
    encoder, tmp_path, fake_timer
):
    """Static priced fastest here: it misses (the attention mask). Plain candidates are judged fastest first, so
    dynamic meets the budget and becomes the one to beat; static, faster, is then repaired, re-timed against it,
    and kept."""
    model, data = encoder
    costs = {**CPU_LIKE, "QuantizeLinear": 0.0, "DequantizeLinear": 0.0, "MatMulInteger": 0.9}
    fake_timer(op_cost_timer(costs))
    result = edgeplug.optimize(model, ["quant"], data=data, output_dir=tmp_path / "out", quiet=True)
    step = result.report["steps"][0]
    chosen = step["details"]["chosen"]
    assert chosen["recipe"].startswith("static") and chosen["origin"] == "repaired tensors"
    rows = step["details"]["candidates"]
    assert any(r["origin"] == "plain" and r["recipe"].startswith("static") and not r["passed"] for r in rows)
    dynamic = [r for r in rows if r["recipe"].startswith("dynamic") and "metrics" in r]
    assert dynamic and all(r["status"] == "cannot win" for r in dynamic)
    assert step["verification"]["passed"]


def test_an_exact_int8_target_is_not_timed(tmp_path, fake_timer):
    """With an int8-exact target (here declared by a trt chain in int8), Q/DQ speed on this CPU says nothing:
    auto never calls the timer and takes the target's preferred recipe that meets the budget."""
    pytest.importorskip("edgeplug_trt")

    def refuse(path, inputs):
        raise AssertionError("an exact-int8 target must not be timed on this CPU")

    fake_timer(refuse)
    model = edgeplug.Model.load(DIGITS)
    ctx = make_ctx(
        model, DIGITS_TEST, chain=("quant", "trt"), workdir=tmp_path, others={"trt": {"precision": "int8"}}
    )
    ctx.qdq_as_float = True  # what the pipeline sets for an int8-exact target
    new = plugin.transform_graph(model, ctx)
    assert new is not None
    assert ctx.details["timing"].startswith("not timed")
    rows = ctx.details["candidates"]
    assert all(r["latency_ms"] is None for r in rows)
    assert all(r["recipe"].startswith("static s8/s8") for r in rows)  # only what the target takes
    assert ctx.details["chosen"]["status"] == "kept"


def test_the_time_budget_stops_the_search_but_the_fastest_candidate_is_still_judged(
    encoder, tmp_path, fake_timer
):
    model, data = encoder
    fake_timer(op_cost_timer(CPU_LIKE))
    result = edgeplug.optimize(
        model, ["quant"], data=data, output_dir=tmp_path / "out", quiet=True,
        options={"quant": {"time_budget_s": "0.001s"}},
    )  # fmt: skip
    step = result.report["steps"][0]
    rows = [r for r in step["details"]["candidates"] if r["origin"] == "plain"]
    judged = [r for r in rows if "metrics" in r]
    assert len(judged) == 1 and judged[0]["status"] == "kept"
    assert "repair" not in step["details"]


@pytest.mark.parametrize("value", ["soon", "-3s", "0"])
def test_a_bad_time_budget_is_refused_before_any_work(value):
    with pytest.raises(OptionError, match=r"quant\.time_budget_s"):
        edgeplug.optimize(DIGITS, ["quant"], data=DIGITS_TEST, options={"quant": {"time_budget_s": value}})


def test_capabilities_follow_the_mode():
    from edgeplug.capabilities import DYNAMIC_INT8, FORMS, FP16, QDQ_INT8

    assert plugin.plugin_capabilities({"mode": "static"}, FORMS).produces == {QDQ_INT8}
    assert plugin.plugin_capabilities({"mode": "auto"}, FORMS).produces == {QDQ_INT8, DYNAMIC_INT8, FP16}
    only_qdq = FORMS - {DYNAMIC_INT8, FP16}
    assert plugin.plugin_capabilities({"mode": "auto"}, only_qdq).produces == {QDQ_INT8}


def test_nothing_fits_an_int8_only_target_without_data_and_the_step_says_why(tmp_path):
    """neon consumes int8 Q/DQ but not dynamic int8 or float16; static needs calibration data: no recipe fits."""
    pytest.importorskip("edgeplug_neon")
    model = edgeplug.Model.load(DIGITS)
    ctx = make_ctx(model, None, chain=("quant", "neon"), workdir=tmp_path)
    assert plugin.transform_graph(model, ctx) is None
    why = ctx.details["skipped"]
    assert "no int8 recipe fits" in why and "needs real calibration data" in why
    assert "does not consume dynamic int8" in why


def test_speed_order_breaks_ties_within_the_noise_by_preference():
    from edgeplug_quantize.timing import NOISE, by_speed, clearly_faster

    latency = {"a": 10.0, "b": 10.0 * (1 - NOISE / 2), "c": 5.0, "d": None, "e": 9.0}
    assert by_speed(list("abcde"), latency.get) == ["c", "e", "a", "b", "d"]  # a, b tie: given order
    assert clearly_faster(5.0, 10.0) and not clearly_faster(10.0 * (1 - NOISE / 2), 10.0)
    # tens of microseconds apart is call overhead, not speed (the digits CNN: 0.021 vs 0.027 ms)
    assert not clearly_faster(0.021, 0.027) and by_speed(["x", "y"], {"x": 0.027, "y": 0.021}.get) == [
        "x",
        "y",
    ]


@pytest.mark.int8
@pytest.mark.parametrize("direction", [1, -1])
def test_candidates_timed_within_the_noise_keep_the_planned_choice(tmp_path, fake_timer, direction):
    """Candidates a hair apart (less than the timing noise) in either order: the same recipe is kept, the first
    of the plan, so that the same command gives the same model on a busy machine."""

    def jitter(path, inputs):
        if Path(path).name == "float.onnx":
            return 2.0
        index = int(Path(path).stem.split("-")[1])
        return 1.0 + direction * 0.01 * index

    fake_timer(jitter)
    result = _digits_auto(tmp_path)
    step = result.report["steps"][0]
    rows = step["details"]["candidates"]
    assert len([r for r in rows if r["origin"] == "plain"]) >= 3
    assert step["details"]["chosen"]["recipe"] == rows[0]["recipe"]


@pytest.mark.int8
def test_a_quantized_model_slower_than_float_is_not_kept(tmp_path, fake_timer):
    """Where every candidate that meets the budget runs slower than the float model on this CPU, auto keeps
    the float model and says why, instead of a slower int8 model that passes verification."""

    def float_is_fastest(path, inputs):
        return 1.0 if Path(path).name == "float.onnx" else 2.0

    timed = fake_timer(float_is_fastest)
    result = _digits_auto(tmp_path)
    step = result.report["steps"][0]
    assert step["status"] != "applied"
    assert "slower than the float model" in step["details"]["skipped"]
    rows = step["details"]["candidates"]
    assert rows and all(r["status"] == "slower than float" for r in rows if r["origin"] == "plain")
    assert any(r.get("passed") for r in rows)  # one was judged, for the report: it met the budget
    assert not any(n.op_type == "QuantizeLinear" for n in result.model.proto.graph.node)
    assert "repair" not in step["details"]  # nothing repaired: keeping more in float cannot beat float
    assert len(timed) >= 3


def test_the_real_timer_measures_every_candidate_in_child_processes(tmp_path, monkeypatch):
    """The other tests price operators instead of reading the clock; this one runs auto with the core's bench
    (a child process per measurement) and checks only what does not depend on the CPU: every plain candidate
    and the float model got a positive latency and the step ended in a verified model or a stated reason."""
    from edgeplug_quantize import timing

    monkeypatch.setattr(timing, "timer_for", lambda ctx: timing.bench_timer(ctx.threads, runs=5, warmup=1))
    result = _digits_auto(tmp_path)
    step = result.report["steps"][0]
    plain = [r for r in step["details"]["candidates"] if r["origin"] == "plain"]
    assert len(plain) >= 3 and all(r["latency_ms"] > 0 for r in plain)
    assert step["details"]["float_latency_ms"] > 0
    if step["status"] == "applied":
        assert step["verification"]["passed"]
    else:
        assert "slower than the float model" in step["details"]["skipped"]
