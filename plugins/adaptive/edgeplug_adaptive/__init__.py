"""edgeplug-adaptive: answer easy inputs with a small model and send hard ones to a larger one.

The `adaptive` plugin compiles a cascade artifact (kind `cascade`) from a chain's own models, with a per-input
gate whose thresholds are calibrated to the run's budget; `make_runner` runs it.
"""
