"""Metric and event names (defined once, imported by Tune, the stopper, the store and the queries),
evaluation, progress measures and the events tracker."""

from __future__ import annotations

# Reported at every evaluation, in this order.
METRICS: tuple[str, ...] = (
    "train_loss", "train_acc", "val_loss", "val_acc",
    "weight_norm",  # total L2 norm of all parameters
    "fourier_sparsity",  # modular tasks: share of embedding norm in its top frequencies (Nanda 2023)
    "softmax_collapse",  # share of samples whose loss is exactly 0 in floating point (Prieto 2025)
)
# When generalisation emerges (../shared/research/grokking.md); null when it never happened.
EVENTS: tuple[str, ...] = (
    "steps_to_memorize",  # first evaluation with train_acc >= MEMORIZE_ACC
    "steps_to_generalize",  # first evaluation with val_acc >= GENERALIZE_ACC
    "steps_to_generalize_95",  # first evaluation with val_acc >= 0.95 (Grokfast's measure)
    "grokking_delay",  # steps_to_generalize - steps_to_memorize
)
CENSORED = "censored"  # the budget ended before val_acc >= GENERALIZE_ACC
MEMORIZE_ACC = 0.99
GENERALIZE_ACC = 0.99
GENERALIZE_95_ACC = 0.95
