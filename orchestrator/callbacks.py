"""Driver-side Tune callbacks: marking the jobs of a pack Tune gave up on, and the live progress view.

Neither reads the store per report: the live view sums the small `PackReport`s trials send (at most one
per trial every `report_every_s`), so the driver's cost per report does not grow with the sweep.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ray.tune import Callback, Stopper

from orchestrator import lease, store
from orchestrator.jobs import Job, optuna_jobs, train_config
from orchestrator.reports import OUTCOMES, PackReport
from orchestrator.spec import SweepSpec

WATCHED_LEASES: dict[str, lease.Lease] = {}  # stopper key -> the lease it watches (kept out of its pickle)


class InterruptStopper(Stopper):
    """Ends the whole experiment after Ctrl-C (`interrupted`, set by the driver's SIGINT handler) or once the
    sweep's lease was lost to a takeover. Defined at module level: Tune pickles its stopper by reference."""

    def __init__(self) -> None:
        self.interrupted = False
        self.key = uuid.uuid4().hex

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        held = WATCHED_LEASES.get(self.key)
        return self.interrupted or (held is not None and held.lost)


class FailedPackCallback(Callback):
    """A pack Tune has given up on (its actor died `max_failures` + 1 times, e.g. its node is gone for
    good) leaves its unfinished jobs `failed`, with Tune's error, so the sweep can end whole."""

    def __init__(self, spec: SweepSpec, root: str, packs: list[list[Job]]):
        self.spec, self.root, self.packs = spec, root, packs

    def on_trial_error(self, iteration, trials, trial, **info):
        config = trial.config
        jobs = self.packs[int(config["pack"])] if "pack" in config else optuna_jobs(
            self.spec, int(config["optuna_trial"]), {k: v for k, v in config.items() if k in self.spec.parameters})
        error = str(trial.get_error() or "the trial failed (no traceback recorded)")
        for job in jobs:
            stored = store.read_trial_row(self.root, self.spec.name, job.job_id)
            if stored is not None and stored["status"] in store.ENDED:
                continue
            store.write_job_error(self.root, self.spec.name, job.job_id, error)
            store.write_trial_row(self.root, store.trial_row(
                self.spec.name, job.job_id, train_config(self.spec, job), store.FAILED, ended_at=time.time(),
                started_at=None if stored is None else stored["started_at"], error=error[-4000:],
                optuna_trial=job.optuna_trial, pack_size=len(jobs), batched=False, spec_hash=self.spec.spec_hash),
                known_not_final=True)


class ProgressCallback(Callback):
    """A live rich panel over jobs: owed, running, ended by outcome, the best so far, and each running
    trial's current job, step and accuracies."""

    def __init__(self, spec: SweepSpec, owed: int, this_run: int, refresh_s: float = 0.5):
        self.spec, self.owed, self.this_run, self.refresh_s = spec, owed, this_run, refresh_s
        self._live = None
        self._latest: dict[str, PackReport] = {}  # Tune trial id -> its latest report
        self._running: set[str] = set()
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None}

    def setup(self, **info):
        from rich.live import Live

        self._live = Live(self._render(), refresh_per_second=4, transient=False)
        self._live.start()

    def _render(self):
        from rich.table import Table

        counts = dict.fromkeys(OUTCOMES, 0)
        best = None
        for report in self._latest.values():
            for outcome, n in report.ended.items():
                counts[outcome] += n
            if report.best is not None:
                sign = 1 if self.spec.metrics[0].goal == "minimize" else -1
                if best is None or sign * report.best[0] < sign * best[0]:
                    best = report.best
        ended = sum(counts.values())
        table = Table(title=f"sweep {self.spec.name} ({self.spec.method}): {self.owed} jobs, {self.this_run} this run")
        for column in ("ended", "running", *OUTCOMES, "best so far"):
            table.add_column(column)
        shown = "-" if best is None else f"{self.spec.metrics[0].name} {best[0]:g} ({best[1]})"
        table.add_row(f"{ended}/{self.this_run}", str(len(self._running)), *(str(counts[o]) for o in OUTCOMES), shown)
        jobs = Table(show_header=True, box=None)
        for column in ("job", "step", "train_acc", "val_acc"):
            jobs.add_column(column)
        for trial_id in sorted(self._running)[:8]:
            report = self._latest.get(trial_id)
            if report is not None and not report.pack_done:
                jobs.add_row(report.job_id, str(report.step), _acc(report.train_acc), _acc(report.val_acc))
        from rich.console import Group

        return Group(table, jobs)

    def _update(self, force: bool = False) -> None:
        if self._live is not None and (force or time.monotonic() - self._last > self.refresh_s):
            self._live.update(self._render())
            self._last = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._running.add(trial.trial_id)
        self._update()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        report = PackReport.from_tune(result)
        if report is not None:
            self._latest[trial.trial_id] = report
        self._update()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._running.discard(trial.trial_id)
        self._update(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._running.discard(trial.trial_id)
        self._update(force=True)

    def on_experiment_end(self, trials, **info):
        if self._live is not None:
            self._update(force=True)
            self._live.stop()
            self._live = None


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
