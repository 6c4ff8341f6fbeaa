"""Which jobs can train together as one batched model (trainers/batched.py). Torch-free: the orchestrator
groups a pack's jobs with it in the trial's actor, which never imports torch."""

from __future__ import annotations

from trainers.config import TrainConfig

# Fields that must be equal for jobs to share a batched model; every other field may differ per member.
BATCH_KEY_FIELDS: tuple[str, ...] = (
    "op", "p", "train_fraction", "model", "width", "activation", "layers", "d_model", "heads", "d_mlp",
    "layer_norm", "op_token", "optimizer", "loss", "grokfast", "batch_size", "dtype", "eval_every", "threads",
    "progress_measures")


def batching_key(config: TrainConfig) -> tuple | None:
    """Jobs with equal keys can train as one batched model; None: this job trains alone (Grokfast's moving
    average keeps a window of past gradients per parameter, which is not stacked)."""
    if config.grokfast == "ma":
        return None
    return tuple(getattr(config, name) for name in BATCH_KEY_FIELDS)
