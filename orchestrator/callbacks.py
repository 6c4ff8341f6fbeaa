"""Driver-side Tune callbacks: marking the jobs of a pack Tune gave up on, and the live progress view.

Neither reads the store per report: the live view sums the small `PackReport`s trials send (at most one
per trial every `report_every_s`), so the driver's cost per report does not grow with the sweep.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass
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


@dataclass
class RunningJob:
    job_id: str
    values: str  # the job's swept values, short: "weight_decay=0.3 lr=0.001 s1"
    step: int
    max_steps: int | None
    train_acc: float | None
    val_acc: float | None


def _eta(remaining: int, job_times: list[float], concurrency: int) -> float | None:
    """Remaining jobs x the median time of the jobs ended so far / jobs training at once; None before any ended."""
    if not job_times or remaining <= 0:
        return None if remaining > 0 else 0.0
    return remaining * statistics.median(job_times) / max(concurrency, 1)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _fit_line(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def render_progress(title: str, ended: int, this_run: int, counts: dict[str, int], running: list[RunningJob],
                    elapsed_s: float, eta_s: float | None, best: str, width: int = 80, height: int = 24) -> list[str]:
    """The live view as plain lines, each at most `width` columns, at most `height` lines: a header, the counts,
    time and ETA, the best so far with its values, then one line per running job ("+N more" past the height)."""
    lines = [_fit_line(title, width),
             _fit_line(f"ended {ended}/{this_run} · running {len(running)} · "
                       + " · ".join(f"{o} {n}" for o, n in counts.items()), width),
             _fit_line(f"elapsed {_clock(elapsed_s)} · ETA {_clock(eta_s)} (remaining × median job time ÷ "
                       "concurrency)", width),
             _fit_line(f"best: {best}", width)]
    room = max(1, height - len(lines))
    shown = running if len(running) <= room else running[:room - 1]
    for job in shown:
        budget = f"/{job.max_steps}" if job.max_steps else ""
        tail = f" {job.step:>6}{budget:<7} tr {_acc(job.train_acc)} val {_acc(job.val_acc)}"
        head_room = max(8, width - len(tail) - 1)
        head = f"{job.job_id} {job.values}"
        head = head if len(head) <= head_room else head[:head_room - 1] + "…"
        lines.append(_fit_line(f"{head:<{head_room}} {tail.strip()}", width))
    if len(shown) < len(running):
        lines.append(f"+{len(running) - len(shown)} more running")
    return lines


class ProgressCallback(Callback):
    """The live view of a run (see `render_progress`): counts by outcome, elapsed time and an ETA, the best
    job so far with its hyperparameters, and one line per running job with its swept values, step / max_steps
    and accuracies, fitted to the terminal. Optuna's and Ray's log lines are held back while it shows."""

    def __init__(self, spec: SweepSpec, owed: int, this_run: int, refresh_s: float = 0.5,
                 packs: list[list[Job]] | None = None):
        self.spec, self.owed, self.this_run, self.refresh_s = spec, owed, this_run, refresh_s
        self._live = None
        self._latest: dict[str, PackReport] = {}  # Tune trial id -> its latest report
        self._running: set[str] = set()
        self._last = 0.0
        self._jobs: dict[str, Job] = {job.job_id: job for pack in packs or [] for job in pack}
        self._budgets: dict[str, int | None] = {}
        self._started = time.monotonic()
        self._marks: dict[str, tuple[float, int]] = {}  # Tune trial id -> (time of its last job end, jobs ended)
        self._job_times: list[float] = []
        self._quiet: list[tuple[Any, int]] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None}

    def setup(self, **info):
        from rich.live import Live

        self._silence_loggers()
        self._started = time.monotonic()
        self._live = Live(self._render(), refresh_per_second=4, transient=False)
        self._live.start()

    def _silence_loggers(self) -> None:
        import logging

        for name in ("optuna", "ray", "ray.tune"):
            logger = logging.getLogger(name)
            self._quiet.append((logger, logger.level))
            logger.setLevel(logging.ERROR)

    def _values(self, job_id: str) -> str:
        job = self._jobs.get(job_id)
        if job is None:
            return ""
        searched = [k for k, p in self.spec.parameters.items() if p.kind != "value"]
        return " ".join(f"{k}={_short(job.values.get(k))}" for k in searched) + f" s{job.seed}"

    def _budget(self, job_id: str) -> int | None:
        if job_id not in self._budgets:
            job = self._jobs.get(job_id)
            try:
                self._budgets[job_id] = None if job is None else (job.max_steps
                                                                  or train_config(self.spec, job).max_steps)
            except Exception:  # a config the trainer will refuse: its failure is reported elsewhere
                self._budgets[job_id] = None
        return self._budgets[job_id]

    def _render(self):
        from rich.console import Console
        from rich.text import Text

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
        running = [RunningJob(r.job_id, self._values(r.job_id), r.step, self._budget(r.job_id), r.train_acc, r.val_acc)
                   for trial_id in sorted(self._running) if (r := self._latest.get(trial_id)) is not None
                   and not r.pack_done]
        shown = "–" if best is None else f"{self.spec.metrics[0].name} {best[0]:g}: {self._values(best[1]) or best[1]}"
        size = Console().size
        concurrency = max(1, min(self.spec.max_concurrent, len(self._running) or self.spec.max_concurrent))
        lines = render_progress(
            f"sweep {self.spec.name} ({self.spec.method}): {self.owed} jobs, {self.this_run} this run", ended,
            self.this_run, counts, running, time.monotonic() - self._started,
            _eta(self.this_run - ended, self._job_times, concurrency), shown, width=size.width,
            height=max(6, size.height - 2))
        return Text("\n".join(lines))

    def _update(self, force: bool = False) -> None:
        if self._live is not None and (force or time.monotonic() - self._last > self.refresh_s):
            self._live.update(self._render())
            self._last = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._running.add(trial.trial_id)
        self._marks[trial.trial_id] = (time.monotonic(), 0)
        config = trial.config
        if "optuna_trial" in config:  # an Optuna proposal: its seed jobs, for their values
            params = {k: v for k, v in config.items() if k in self.spec.parameters}
            for job in optuna_jobs(self.spec, int(config["optuna_trial"]), params):
                self._jobs[job.job_id] = job
        self._update()

    def _job_ended(self, trial_id: str, report: PackReport) -> None:
        mark, seen = self._marks.get(trial_id, (self._started, 0))
        if report.jobs_ended > seen:
            now = time.monotonic()
            self._job_times += [(now - mark) / (report.jobs_ended - seen)] * (report.jobs_ended - seen)
            self._marks[trial_id] = (now, report.jobs_ended)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        report = PackReport.from_tune(result)
        if report is not None:
            self._latest[trial.trial_id] = report
            self._job_ended(trial.trial_id, report)
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
        for logger, level in self._quiet:
            logger.setLevel(level)
        self._quiet.clear()


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
