"""Optimization profiles: derived from the model's dynamic dimensions, or from min/opt/max options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgeplug import Model, OptionError, PluginError
from edgeplug_trt.profiles import build_profile, parse_shapes
from edgeplug_trt.settings import TrtSettings

from tests import zoo


def _opts(**kw: Any) -> TrtSettings:
    return TrtSettings(**kw)


@pytest.fixture(scope="module")
def digits(example_model: Path) -> Model:
    return Model.load(example_model)


def test_dynamic_batch_derives_1_1_max_batch(digits: Model) -> None:
    assert not isinstance(digits.inputs[0].shape[0], int)  # the example has a symbolic batch
    profile = build_profile(digits.inputs, _opts())
    assert profile.dynamic
    assert profile.shapes["input"] == ((1, 1, 8, 8), (1, 1, 8, 8), (8, 1, 8, 8))
    assert build_profile(digits.inputs, _opts(max_batch=32)).shapes["input"][2] == (32, 1, 8, 8)


def test_static_model_needs_no_profile() -> None:
    model = Model.load(zoo.cached("resnet_style"))
    profile = build_profile(model.inputs, _opts())
    assert not profile.dynamic
    assert profile.shapes["input"] == ((1, 3, 32, 32),) * 3


def test_dynamic_sequence_comes_from_the_validation_data() -> None:
    model = Model.load(zoo.cached("bert_encoder"))
    sample = zoo.example_inputs(model.proto, seq_len=16)
    profile = build_profile(model.inputs, _opts(max_batch=4), sample)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert profile.shapes[name] == ((1, 16), (1, 16), (4, 16))
        assert "validation data" in profile.sources[name]
    with pytest.raises(OptionError, match=r"dynamic axis 1 \(sequence\).*min_shapes"):
        build_profile(model.inputs, _opts())


def test_user_min_opt_max(digits: Model) -> None:
    profile = build_profile(
        digits.inputs,
        _opts(min_shapes=["input:1x1x8x8"], opt_shapes=["input:4x1x8x8"], max_shapes=["input:16x1x8x8"]),
    )
    assert profile.shapes["input"] == ((1, 1, 8, 8), (4, 1, 8, 8), (16, 1, 8, 8))
    assert profile.sources["input"] == "options"
    fixed = build_profile(digits.inputs, _opts(opt_shapes=["input:2x1x8x8"]))
    assert fixed.shapes["input"] == ((2, 1, 8, 8),) * 3


def test_user_shapes_for_a_dynamic_sequence() -> None:
    model = Model.load(zoo.cached("bert_encoder"))
    names = ("input_ids", "attention_mask", "token_type_ids")
    profile = build_profile(
        model.inputs,
        _opts(
            min_shapes=[f"{n}:1x8" for n in names],
            opt_shapes=[f"{n}:2x64" for n in names],
            max_shapes=[f"{n}:8x128" for n in names],
        ),
    )
    assert profile.shapes["attention_mask"] == ((1, 8), (2, 64), (8, 128))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"opt_shapes": ["input1x1x8x8"]}, "expected NAME:1x3x224x224"),
        ({"opt_shapes": ["input:1xAx8x8"]}, "expected NAME:1x3x224x224"),
        ({"opt_shapes": ["input:0x1x8x8"]}, "at least 1"),
        ({"opt_shapes": ["image:1x1x8x8"]}, "model's inputs are input"),
        ({"opt_shapes": ["input:1x1x8"]}, "rank 3"),
        ({"opt_shapes": ["input:1x3x8x8"]}, "model fixes 1"),
        (
            {
                "min_shapes": ["input:4x1x8x8"],
                "opt_shapes": ["input:2x1x8x8"],
                "max_shapes": ["input:8x1x8x8"],
            },
            "min <= opt <= max",
        ),
        ({"min_shapes": ["input:1x1x8x8"], "max_shapes": ["input:8x1x8x8"]}, "not in opt_shapes"),
        ({"min_shapes": ["input:1x1x8x8"], "opt_shapes": ["input:2x1x8x8"]}, "no trt.max_shapes"),
        ({"opt_shapes": ["input:1x1x8x8", "input:2x1x8x8"]}, "twice"),
    ],
)
def test_bad_profile_options(digits: Model, options: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        build_profile(digits.inputs, _opts(**options))


def test_profile_must_admit_the_verification_inputs(digits: Model) -> None:
    sample = {"input": np.zeros((1, 1, 8, 8), np.float32)}
    with pytest.raises(PluginError, match="does not admit the validation inputs' shape 1x1x8x8"):
        build_profile(
            digits.inputs,
            _opts(min_shapes=["input:2x1x8x8"], opt_shapes=["input:4x1x8x8"], max_shapes=["input:8x1x8x8"]),
            sample,
        )


def test_parse_shapes_keeps_names_with_colons() -> None:
    assert parse_shapes(["encoder:input:1x4"], "opt_shapes") == {"encoder:input": (1, 4)}
