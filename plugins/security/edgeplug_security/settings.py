"""The security plugin's options, declared once: the core parses `-o security.KEY=VALUE` and `[security]`
tables into `SecuritySettings` and checks types, choices and bounds (`edgeplug run` hands the instance to
the plugin as `ctx.settings`; `edgeplug infer` passes the parsed values in `request.options`). What a
declaration cannot say is checked here: the form of a sha256 pin and of class indices, and limits of the
isolated worker given where no worker runs."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edgeplug import OptionError, option

from . import isolation

NAME = "security"
# One call into the isolated worker may wait at most a week: beyond, the wait no longer fits the clock calls.
WEEK_S = 604800.0


@dataclass(frozen=True)
class SecuritySettings:
    """Recorded during `edgeplug run` (input ranges, feature squeezing) and used by guarded inference."""

    # recorded during `edgeplug run`
    range_margin: float = option(
        0.05,
        "widen the value range observed on the calibration data by this fraction of its span on each side",
        minimum=0.0,
        maximum=10.0,
    )
    input_range: list[str] = option(
        [],
        "allowed input values: LOW,HIGH for every input, or NAME:LOW:HIGH items "
        "(at run time: recorded instead of the observed range; at inference: overrides the record)",
    )
    squeeze_fpr: float = option(
        0.05,
        "false-positive rate the feature-squeezing threshold is calibrated to on the clean calibration images "
        "(0: the largest clean score)",
        minimum=0.0,
        maximum=1.0,
    )
    squeeze_bits: int = option(
        3, "bit depth of the bit-depth-reduction squeezer (0 disables it)", minimum=0, maximum=16
    )
    squeeze_median: int = option(
        2, "window side of the median-smoothing squeezer (0 or 1 disables it)", minimum=0, maximum=15
    )
    squeeze_min_agreement: float = option(
        0.95,
        "drop a squeezer that keeps the top-1 class of fewer than this fraction of the clean calibration "
        "images (0 keeps every squeezer)",
        minimum=0.0,
        maximum=1.0,
    )
    # guarded inference
    require_hash: bool = option(
        True,
        "refuse a model without a <stem>.edgeplug.json sidecar recording its sha256 (a sidecar, when present, "
        "is always checked)",
    )
    sha256: str | None = option(
        None,
        "sha256 pinned out of band: of the model's run record <stem>.edgeplug.json when it has one (one pin "
        "covers the model, its external data and its compiled artifact), else of the .onnx file itself; "
        "satisfies require_hash",
    )
    check_inputs: bool = option(True, "check dtype, shape, NaN/Inf and value range of every input")
    isolate: bool = option(
        True,
        "run the model in a separate worker process with timeout_s and memory_mb (false: in this process, "
        "still from the verified bytes)",
    )
    timeout_s: float | None = option(
        None,
        f"wall-clock limit of one call into the isolated worker, starting it and loading the model included "
        f"when the call needs a fresh one; past it the worker is killed (default {isolation.TIMEOUT_S:g}; "
        "refused with isolate=false)",
        minimum=0.001,
        maximum=WEEK_S,
    )
    memory_mb: int | None = option(
        None,
        f"address-space limit (RLIMIT_AS) of the isolated worker in MiB, runtime included (default "
        f"{isolation.MEMORY_MB}; 0: no limit; refused with isolate=false)",
        minimum=0,
    )
    squeeze: bool = option(
        False, "flag adversarial images by feature squeezing (one extra inference per recorded squeezer)"
    )
    squeeze_threshold: float | None = option(
        None,
        "override the recorded feature-squeezing threshold (an L1 distance of two probability vectors)",
        minimum=0.0,
        maximum=2.0,
    )
    on_adversarial: Literal["flag", "abstain", "refuse"] = option(
        "flag", "what a flagged input gets: a flag, an abstention, or a refusal"
    )
    min_confidence: float = option(
        0.0, "abstain when the top-1 probability is below this (0: off)", minimum=0.0, maximum=1.0
    )
    deny_labels: list[str] = option([], "abstain when the top-1 label is one of these class indices")

    @classmethod
    def of(cls, values: Mapping[str, Any] | None) -> SecuritySettings:
        """The settings from parsed option values (`request.options["security"]` of a guarded inference;
        tolerance keys the core adds to every plugin's table are not fields). Missing keys take the
        declared defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in names})

    def checked(self) -> SecuritySettings:
        """Refuse what the declaration cannot express, with the core's message format where a value is bad."""
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", str(self.sha256).strip().lower()):
            raise OptionError(
                f"bad value {self.sha256!r} for {NAME}.sha256: expected a sha256 (64 hex digits)"
            )
        self.denied_labels()
        if not self.isolate:
            for key in ("timeout_s", "memory_mb"):
                if getattr(self, key) is not None:
                    raise OptionError(
                        f"{NAME}.{key} limits the isolated worker, and {NAME}.isolate=false runs the model in "
                        f"this process, where nothing enforces it: drop {NAME}.{key} or set {NAME}.isolate=true"
                    )
        return self

    def denied_labels(self) -> list[int]:
        """`deny_labels` as class indices."""
        try:
            return [int(i) for i in self.deny_labels]
        except ValueError:
            raise OptionError(
                f"bad value {','.join(self.deny_labels)!r} for {NAME}.deny_labels: expected class indices "
                "(whole numbers), comma-separated"
            ) from None
