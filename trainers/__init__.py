"""Pure-PyTorch grokking training jobs: tasks, models, the loop, metrics, checkpoints. Never imports ray.

`run`, `Evaluation` and `TrialResult` load lazily, so reading configs does not import torch.
"""

import importlib
from typing import Any

from trainers.config import PRESETS, ConfigError, TrainConfig, from_dict, preset, resolve

__all__ = ["PRESETS", "ConfigError", "Evaluation", "TrainConfig", "TrialResult", "from_dict", "preset",
           "resolve", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "Evaluation", "TrialResult"):
        return getattr(importlib.import_module("trainers.loop"), name)
    raise AttributeError(name)
