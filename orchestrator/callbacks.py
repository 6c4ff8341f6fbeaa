"""Driver-side Tune callbacks: the store writer (the only writer during a sweep) and live progress.

Resume after a crash can re-run a trial from a checkpoint older than what was already written here: the
store keeps FINAL rows and dedupes curves on (trial_id, step), so writing again is harmless.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator import store
from orchestrator.spec import CHECKPOINTED, CURVE, OBJECTIVE, PRUNED, SweepSpec, points, trial_train_config
from trainers.metrics import CENSORED, EVENTS, METRICS


def outcome(result: dict[str, Any]) -> str:
    """grokked | censored | pruned | running, from a trial's latest reported result."""
    if result.get(PRUNED):
        return "pruned"
    if result.get(CENSORED) is None:
        return "running"
    return "censored" if result[CENSORED] else "grokked"


class StoreCallback(Callback):
    """Curves as they arrive (buffered; flushed at checkpoints, trial end and every `flush_s`), a running
    row when a trial starts, its final row when it ends, and the curve files compacted. On resume, running
    rows of trials Tune did not restore are dropped (Tune runs their configurations again)."""

    def __init__(self, spec: SweepSpec, root: str, flush_s: float = 5.0):
        self.spec, self.root, self.flush_s = spec, str(root), flush_s
        self._points: list[dict[str, Any]] | None = None
        self._buffer: dict[str, list[dict[str, Any]]] = {}
        self._last_flush = time.monotonic()
        self._reconciled = False
        self._final: set[str] | None = None  # trials with a FINAL row: read once, then kept here
        self._started: dict[str, float] = {}  # trial id -> when this driver started it
        self._configs: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: no buffered rows
        return {"spec": self.spec, "root": self.root, "flush_s": self.flush_s, "_points": None, "_buffer": {},
                "_last_flush": 0.0, "_reconciled": False, "_final": None, "_started": {}, "_configs": {}}

    def config_of(self, trial) -> Any:
        if trial.trial_id not in self._configs:
            if self._points is None:
                self._points = points(self.spec)
            self._configs[trial.trial_id] = trial_train_config(self.spec, trial.config, self._points)
        return self._configs[trial.trial_id]

    def _is_final(self, trial_id: str) -> bool:
        """A FINAL row is never replaced: after a crash, Tune may run a trial again whose row is final."""
        if self._final is None:
            self._final = store.final_trial_ids(self.root, self.spec.name)
        return trial_id in self._final

    def _flush(self, trial_id: str | None = None) -> None:
        for tid in [trial_id] if trial_id else list(self._buffer):
            rows = self._buffer.pop(tid, [])
            if rows:
                store.write_curve_rows(self.root, self.spec.name, tid, rows)
        if trial_id is None:
            self._last_flush = time.monotonic()

    def on_step_begin(self, iteration, trials, **info):
        if not self._reconciled:  # first step: `trials` is what Tune restored (nothing, on a fresh sweep)
            self._reconciled = True
            store.drop_unfinished_trials(self.root, self.spec.name, keep={t.trial_id for t in trials})

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._is_final(trial.trial_id):
            return
        self._started[trial.trial_id] = time.time()
        store.write_trial_row(self.root, store.trial_row(
            self.spec.name, trial.trial_id, self.config_of(trial), store.RUNNING,
            started_at=self._started[trial.trial_id]), known_not_final=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rows = result.get(CURVE) or [result]
        self._buffer.setdefault(trial.trial_id, []).extend(
            {"step": row["step"], **{name: row.get(name) for name in METRICS}} for row in rows)
        if result.get(CHECKPOINTED):
            self._flush(trial.trial_id)
        if time.monotonic() - self._last_flush > self.flush_s:
            self._flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._flush(trial.trial_id)
        result = trial.last_result or {}
        pruned = bool(result.get(PRUNED))
        censored = result.get(CENSORED)
        if censored is None:  # ended before its last evaluation: pruned, or stopped from outside
            censored = result.get("steps_to_generalize") is None
        self._write_final(trial, store.STOPPED if pruned else store.COMPLETED, result, censored)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._flush(trial.trial_id)
        error = trial.get_error() or "the trial failed (no traceback recorded)"
        log_dir = _local_dir(store.sweep_dir(self.root, self.spec.name))
        if log_dir is not None:
            (log_dir / "logs").mkdir(parents=True, exist_ok=True)
            (log_dir / "logs" / f"{trial.trial_id}.error.txt").write_text(str(error))
        self._write_final(trial, store.FAILED, trial.last_result or {}, None, error=str(error)[-4000:])

    def _write_final(self, trial, status: str, result: dict[str, Any], censored: bool | None,
                     error: str | None = None) -> None:
        if self._is_final(trial.trial_id):
            return
        started = self._started.get(trial.trial_id)  # None: not started by this driver; the store fills it in
        store.write_trial_row(self.root, store.trial_row(
            self.spec.name, trial.trial_id, self.config_of(trial), status,
            steps_run=result.get("step"), wall_s=result.get("time_total_s"),
            events={name: result.get(name) for name in EVENTS}, censored=censored,
            final_metrics={name: result.get(name) for name in METRICS if name in result},
            device=result.get("device"), started_at=started, ended_at=time.time(), error=error),
            known_not_final=started is not None)
        if status in store.FINAL:
            self._final.add(trial.trial_id)
        store.compact_curves(self.root, self.spec.name, trial.trial_id)

    def on_experiment_end(self, trials, **info):
        self._flush()


def _local_dir(path: str) -> Path | None:
    """`path` as a local directory, or None for a remote (URI) results root."""
    return None if "://" in path else Path(path)


class ProgressCallback(Callback):
    """A live rich panel: trials running / finished / grokked / censored / failed, and the best so far."""

    def __init__(self, spec: SweepSpec, total: int, refresh_s: float = 0.5):
        self.spec, self.total, self.refresh_s = spec, total, refresh_s
        self._live = None
        self._outcomes: dict[str, str] = {}
        self._best: tuple[float, str] | None = None
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "total": self.total, "refresh_s": self.refresh_s, "_live": None,
                "_outcomes": {}, "_best": None, "_last": 0.0}

    def setup(self, **info):
        from rich.live import Live

        self._live = Live(self._render(), refresh_per_second=4, transient=False)
        self._live.start()

    def _render(self):
        from rich.table import Table

        counts = {k: sum(v == k for v in self._outcomes.values())
                  for k in ("running", "grokked", "censored", "pruned", "failed")}
        finished = counts["grokked"] + counts["censored"] + counts["pruned"]
        table = Table(title=f"sweep {self.spec.name} ({self.spec.method})", show_header=True)
        for column in ("trials", "running", "finished", "grokked", "censored", "pruned", "failed", "best so far"):
            table.add_column(column)
        best = "-" if self._best is None else f"{self.spec.metrics[0].name} {self._best[0]:g} ({self._best[1]})"
        table.add_row(str(self.total), str(counts["running"]), str(finished), str(counts["grokked"]),
                      str(counts["censored"]), str(counts["pruned"]), str(counts["failed"]), best)
        return table

    def _update(self, force: bool = False) -> None:
        if self._live is not None and (force or time.monotonic() - self._last > self.refresh_s):
            self._live.update(self._render())
            self._last = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._outcomes[trial.trial_id] = "running"
        self._update()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._update()

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        self._outcomes[trial.trial_id] = outcome(result) if outcome(result) != "running" else "censored"
        if outcome(result) == "grokked" and OBJECTIVE in result:
            value = float(result[OBJECTIVE]) if self.spec.metrics[0].name in EVENTS else float(
                result.get(self.spec.metrics[0].name, result[OBJECTIVE]))
            sign = 1 if self.spec.metrics[0].goal == "minimize" else -1
            if self._best is None or sign * value < sign * self._best[0]:
                self._best = (value, trial.trial_id)
        self._update(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._outcomes[trial.trial_id] = "failed"
        self._update(force=True)

    def on_experiment_end(self, trials, **info):
        if self._live is not None:
            self._update(force=True)
            self._live.stop()
            self._live = None
