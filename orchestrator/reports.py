"""What a Tune trial tells the driver, as one dataclass converted to and from Tune's result dict here only.

The curves and rows never travel through Tune: the trial writes them to the store itself (each job's own
files), so the driver handles one small dict per trial at most every `report_every_s`, and one when the
pack ends -- enough for the live view and, for Optuna, the objective(s) of the proposal.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

OUTCOMES = ("grokked", "censored", "pruned", "failed")  # how an ended job is counted in the live view
_KEY = "groksweep"  # every field travels as one JSON string under one key: Tune flattens nested dicts


@dataclass(frozen=True)
class PackReport:
    job_id: str  # the job being trained (or, when the pack has ended, its last job)
    step: int
    train_acc: float | None
    val_acc: float | None
    jobs_ended: int  # jobs of this pack that have a final or failed row, this one included if it ended
    pack_size: int
    ended: dict[str, int] = field(default_factory=dict)  # outcome -> jobs of this pack
    best: tuple[float, str] | None = None  # the best first objective among this pack's grokked jobs, and its job
    pack_done: bool = False
    objectives: list[float] | None = None  # pack_done: mean of each search metric over the pack's jobs
    failed_jobs: int = 0
    learning_curve: list[tuple[int, float]] | None = None  # pack_done, Optuna: mean val_acc of its jobs per step

    def to_tune(self) -> dict[str, Any]:
        # step and accuracies also as plain keys: a Tune scheduler or stopper can read them
        out: dict[str, Any] = {_KEY: json.dumps(asdict(self)), "step": self.step, "train_acc": self.train_acc,
                               "val_acc": self.val_acc}
        if self.objectives is not None:
            out["objective"] = self.objectives[0]  # for anyone reading Tune's own result files
        return out

    @classmethod
    def from_tune(cls, result: dict[str, Any] | None) -> PackReport | None:
        if not result or _KEY not in result:
            return None
        values = json.loads(result[_KEY])
        if values.get("best") is not None:
            values["best"] = tuple(values["best"])
        return cls(**values)
