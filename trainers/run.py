"""`run(config, report, checkpoint_dir)`: one grokking training job, from a config to its events.

INTERFACE (pinned; the orchestrator builds on it) -- the loop itself is filled in by the trainers work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.config import TrainConfig


@dataclass(frozen=True)
class Evaluation:
    """What `report` receives at every evaluation."""

    step: int  # optimiser steps taken so far
    metrics: dict[str, float]  # every name in trainers.metrics.METRICS (NaN where not defined for the task)
    events: dict[str, int | None]  # every name in trainers.metrics.EVENTS, as known so far
    checkpoint: Path | None  # the checkpoint directory written at this evaluation, if one was
    done: bool  # the last evaluation of this run (budget spent, or generalisation confirmed)


@dataclass
class TrialResult:
    config: TrainConfig
    events: dict[str, int | None]  # trainers.metrics.EVENTS; generalisation events None when censored
    censored: bool
    steps_run: int
    wall_s: float  # training time, this process's share only when resumed
    final_metrics: dict[str, float]  # the last evaluation's METRICS
    device: str  # the device actually used, e.g. "cpu" or "cuda:0"
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per evaluation: step + METRICS
    stopped_by_report: bool = False  # `report` asked to stop


Report = Callable[[Evaluation], bool | None]  # return True to stop the run


def run(config: TrainConfig, report: Report | None = None, checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 10) -> TrialResult:
    """Train one job. With `checkpoint_dir`, resume from the checkpoint there if any, and write one
    every `checkpoint_every` evaluations (and at the end), replacing the previous one atomically."""
    raise NotImplementedError
