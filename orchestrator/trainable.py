"""The Tune trainable: one Tune trial trains a pack of jobs, one after another, in its actor's trainer
process (`trainer_process`), and writes each job's rows, curve, log and checkpoint to the store itself.
On a GPU (spec key `batched`) a pack's jobs of one shape train together as one batched model instead:
`orchestrator.batched_pack`, which keeps this module's per-job rules for each member.

Per job (see `orchestrator.reconcile` for the invariants this keeps):
- a job whose row is already final is skipped (a retried pack, or a resume, never trains it twice);
- a `running` row once it has trained for `report_every_s` (its first batch; shorter jobs go straight to
  their final row); its checkpoint in `<root>/sweeps/<name>/checkpoints/<job id>/`, from
  which it resumes wherever it runs next; curve rows stored at each checkpoint (never past it), and the
  whole curve when it ends, then its final row derived from that curve (`jobs.outcome_from_curve`);
- a job that raises is retried from its checkpoint up to `max_failures` times, then its row is `failed`
  with the traceback, and the pack goes on with its next job.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import store, trainer_process
from orchestrator.budgets import extension_fields, owes_extension
from orchestrator.jobs import Job, objective_of_row, optuna_jobs, outcome_from_curve, row_fields, train_config
from orchestrator.optuna_search import mean_curve
from orchestrator.reports import PackReport
from orchestrator.spec import SweepSpec
from orchestrator.trainer_process import Batch, Finished, Started, TrainerFailed
from orchestrator.trainer_process import Job as TrainerJob


def pack_jobs(config: dict[str, Any], spec: SweepSpec, packs: list[list[Job]]) -> list[Job]:
    """A Tune trial's jobs: grid/random trials carry a pack index, Optuna trials their proposal."""
    if "pack" in config:
        return packs[int(config["pack"])]
    params = {k: v for k, v in config.items() if k in spec.parameters}
    return optuna_jobs(spec, int(config["optuna_trial"]), params)


def train_pack(config: dict[str, Any], spec: SweepSpec, root: str, packs: list[list[Job]]) -> None:
    import ray
    from ray import tune

    if not ray.get_gpu_ids():  # Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for gpu: 0 trials
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    jobs = pack_jobs(config, spec, packs)
    pack = _Pack(spec, root, len(jobs), tune.report)
    from orchestrator import batched_pack  # it builds on this module

    if batched_pack.wants_batched(spec):  # jobs of one batching key as one batched model (spec key `batched`)
        rows = batched_pack.run_jobs(pack, jobs)
    else:
        rows = [pack.run(job) for job in jobs]
    pack.finish(rows)


class _Pack:
    """One pack's progress, reported to Tune at most every `report_every_s` (and once at the end)."""

    def __init__(self, spec: SweepSpec, root: str, size: int, report: Any):
        self.spec, self.root, self.size, self.report_to_tune = spec, root, size, report
        self.ended: dict[str, int] = {}
        self.jobs_ended = 0
        self.best: tuple[float, str] | None = None
        self.last_report = 0.0
        self.last_job, self.last_step, self.last_acc = "", 0, (None, None)
        self.curves: dict[str, list[tuple[int, float | None]]] = {}  # Optuna: (step, val_acc) of jobs trained here

    def _report(self, force: bool = False, **final: Any) -> None:
        if not force and time.monotonic() - self.last_report < self.spec.report_every_s:
            return
        self.report_to_tune(PackReport(self.last_job, self.last_step, *self.last_acc, self.jobs_ended, self.size,
                                       dict(self.ended), self.best, **final).to_tune())
        self.last_report = time.monotonic()

    def run(self, job: Job) -> dict[str, Any]:
        if _stop_requested():
            raise SystemExit(0)
        if job.max_steps is not None:  # an extension round names it (orchestrator.budgets)
            stored = store.read_trial_row(self.root, self.spec.name, job.job_id)
            final = stored is not None and stored["status"] in store.FINAL and not owes_extension(stored, job.max_steps)
            row = stored if final else _run_job(self, job, stored)
        elif store.read_trial_status(self.root, self.spec.name, job.job_id) in store.FINAL:
            row = store.read_trial_row(self.root, self.spec.name, job.job_id)
        else:
            row = _run_job(self, job)
        self._ended(job, row)
        return row

    def progress(self, job: Job, step: int, metrics: dict[str, float]) -> None:
        self.last_job, self.last_step = job.job_id, step
        self.last_acc = (metrics.get("train_acc"), metrics.get("val_acc"))
        self._report()

    def _ended(self, job: Job, row: dict[str, Any]) -> None:
        self.jobs_ended += 1
        outcome = ("failed" if row["status"] == store.FAILED else "pruned" if row["status"] == store.STOPPED
                   else "censored" if row["censored"] else "grokked")
        self.ended[outcome] = self.ended.get(outcome, 0) + 1
        if outcome == "grokked":
            value = objective_of_row(self.spec, row)[0]
            sign = 1 if self.spec.metrics[0].goal == "minimize" else -1
            if self.best is None or sign * value < sign * self.best[0]:
                self.best = (value, job.job_id)
        self.last_job, self.last_step = job.job_id, row["steps_run"] or 0
        self.last_acc = (row["train_acc"], row["val_acc"])
        self._report()

    def finish(self, rows: list[dict[str, Any]]) -> None:
        """The last report: for Optuna, the mean of each objective over the pack's jobs (its seeds);
        a pack with a failed job reports no objectives (the proposal is marked failed)."""
        failed = sum(row["status"] == store.FAILED for row in rows)
        scores = [objective_of_row(self.spec, row) for row in rows if row["status"] != store.FAILED]
        means = None if failed or not scores else [sum(c) / len(c) for c in zip(*scores, strict=True)]
        every_curve = self.spec.method == "optuna" and all(row["trial_id"] in self.curves for row in rows)
        curve = mean_curve([self.curves[row["trial_id"]] for row in rows]) if every_curve else None
        self._report(force=True, pack_done=True, objectives=means, failed_jobs=failed, learning_curve=curve)


def _stop_requested() -> bool:
    """Tune has asked this trial to stop (Ctrl-C, a scheduler): Tune itself only notices at the trial's next
    `tune.report`, which may be a whole job away in a pack. Ray 2.60 keeps the flag on the trial's session."""
    try:
        from ray.train._internal.session import get_session

        session = get_session()
        return session is not None and session.stop_event.is_set()
    except (ImportError, AttributeError):
        return False


def _has_local_checkpoint(directory: str) -> int | None:
    """The step of the newest complete checkpoint in a job's folder, without importing torch here."""
    steps = [int(p.read_text()) for p in Path(directory).glob("step-*/step") if (p.parent / "state.pt").exists()]
    return max(steps, default=None)


@dataclass
class JobRun:
    """One job's bookkeeping while it trains, alone or as a batched model's member: its trainer's batches
    become its log lines, its `running` row, its curve parts at checkpoints and the driver's live view."""

    job: Job
    config: Any
    checkpoint_dir: str
    log: store.JobLog | None  # None once closed
    common: dict[str, Any]  # the row fields every row of this job carries (pack, batching, provenance)
    started: float = field(default_factory=time.time)
    pending: list[dict[str, Any]] = field(default_factory=list)  # evaluations since the last checkpoint
    shown_running: bool = False  # the `running` row is written at the job's first batch: a job shorter than
    #                              report_every_s goes straight to its final row (one row write, not two)
    parts_written: bool = False  # curve parts stored at checkpoints (the final curve is merged with them)
    resumed_from: int | None = None  # the step of the checkpoint this attempt resumed from


def common_fields(pack: _Pack, job: Job, batched: bool) -> dict[str, Any]:
    return {"optuna_trial": job.optuna_trial, "pack_size": pack.size, "batched": batched,
            "spec_hash": pack.spec.spec_hash}


def trainer_checkpoint_dir(pack: _Pack, job: Job) -> str:
    """Where the trainer keeps the job's checkpoint: its folder in the store, or on a remote root a local
    copy (downloaded here; each checkpoint is uploaded before the trainer goes on, see on_batch)."""
    spec, root = pack.spec, pack.root
    if not store.ResultsRoot.of(root).remote:
        return store.checkpoint_path(root, spec.name, job.job_id)
    directory = tempfile.mkdtemp(prefix=f"groksweep-{job.job_id}-")
    store.download_checkpoint(root, spec.name, job.job_id, directory)
    return directory


def trainer_job(spec: SweepSpec, run: JobRun) -> TrainerJob:
    """What the trainer process is sent for this job (alone, or as a member of a BatchedJob)."""
    return TrainerJob(config=run.config.to_dict(), checkpoint_dir=run.checkpoint_dir,
                      checkpoint_every=spec.checkpoint_every, checkpoint_every_s=spec.checkpoint_every_s,
                      report_every_s=spec.report_every_s, prune_not_memorized_by=spec.prune_not_memorized_by)


def on_batch(pack: _Pack, run: JobRun, message: Batch, trainer: trainer_process.TrainerProcess) -> None:
    """One Batch of the job's evaluations: log it, show the job running, store its curve up to a
    checkpoint (then let the trainer go on), and tell the driver's live view."""
    spec, root, log = pack.spec, pack.root, run.log
    assert log is not None
    if _stop_requested():
        raise SystemExit(0)  # as Tune would at the next report; the caller's `finally` ends the trainer
    if not run.shown_running and not message.done:
        store.write_trial_row(root, store.trial_row(spec.name, run.job.job_id, run.config, store.RUNNING,
                                                    started_at=run.started, **run.common), known_not_final=True)
        run.shown_running = True
    _log_batch(log, message)
    run.pending.extend(message.rows)
    if message.checkpoint is not None:
        if store.ResultsRoot.of(root).remote:
            store.upload_checkpoint(root, spec.name, run.job.job_id, run.checkpoint_dir)
        if not message.done:  # at the end the whole curve is written at once, by _finish
            store.write_curve_rows(root, spec.name, run.job.job_id, run.pending)  # durable up to here
            run.parts_written = True
        run.pending.clear()
        trainer.release()
    pack.progress(run.job, message.step, message.metrics)


def _run_job(pack: _Pack, job: Job, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one job (or, with `job.max_steps`, continue it to its extended budget: `stored` is its row)."""
    spec, root = pack.spec, pack.root
    where = store.ResultsRoot.of(root)
    config = train_config(spec, job)
    common = common_fields(pack, job, batched=False)
    extending = job.max_steps is not None and stored is not None
    if extending:
        common.update(extension_fields(stored, job.max_steps))
    checkpoint_dir = trainer_checkpoint_dir(pack, job)
    run = JobRun(job, config, checkpoint_dir, store.JobLog(root, spec.name, job.job_id), common)
    if extending:  # its final row gives way to a running one first: a crash from here on leaves it owed
        store.write_trial_row(root, store.trial_row(spec.name, job.job_id, config, store.RUNNING,
                                                    started_at=run.started, **common), known_not_final=True)
        run.shown_running = True
    log = run.log
    assert log is not None
    trainer = trainer_process.shared()
    attempt, finished_ok = 0, False
    try:
        while True:
            run.resumed_from = _has_local_checkpoint(checkpoint_dir)
            try:
                sent = trainer_job(spec, run)
                for message in trainer.run(sent):
                    if isinstance(message, Started):
                        how = "started" if run.resumed_from is None else f"resumed from step {run.resumed_from}"
                        log.write(f"# job {job.job_id} on {message.device}, {how} {time.ctime()} "
                                  f"(attempt {attempt + 1}, trainer pid {trainer.process.pid})\n"
                                  f"# config {json.dumps(sent.config)}\n")
                    elif isinstance(message, Batch):
                        on_batch(pack, run, message, trainer)
                    elif isinstance(message, Finished):
                        row = _finish(pack, run, message, replace=extending)
                finished_ok = True
                return row
            except TrainerFailed as error:
                trainer_process.discard_shared()
                trainer = trainer_process.shared()
                run.pending.clear()
                attempt += 1
                log.write(f"# attempt {attempt} failed:\n{store.strip_ansi(str(error))}\n")
                if attempt > spec.max_failures:
                    finished_ok = True
                    return _failed(pack, job, config, str(error), run.started, common, log)
    finally:
        if not finished_ok:  # stopped by Tune mid-job: the trainer's state is unknown
            trainer_process.discard_shared()
        log.close()
        if where.remote:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _finish(pack: _Pack, run: JobRun, finished: Finished, replace: bool = False) -> dict[str, Any]:
    """The whole curve as one file (merged with the parts stored at earlier checkpoints, if any; `replace`:
    an extended job's, instead of every step stored before), then the row derived from it."""
    spec, root, job, config, log = pack.spec, pack.root, run.job, run.config, run.log
    assert log is not None
    compact = run.parts_written or run.resumed_from is not None
    if replace:
        store.replace_curve(root, spec.name, job.job_id, finished.history)
    else:
        store.write_curve_rows(root, spec.name, job.job_id, finished.history)
        if compact:
            store.compact_curves(root, spec.name, job.job_id)
    if spec.method == "optuna":  # the proposal's learning curve travels in the pack's last report
        pack.curves[job.job_id] = [(r["step"], r["val_acc"]) for r in finished.history]
    fields = row_fields(outcome_from_curve(finished.history, p=config.p))
    row = store.trial_row(spec.name, job.job_id, config, store.STOPPED if finished.pruned else store.COMPLETED,
                          wall_s=finished.wall_s, device=finished.device, started_at=run.started,
                          ended_at=time.time(), **fields, **run.common)
    store.write_trial_row(root, row, known_not_final=True)  # checked not final when the job started
    keep = spec.keep_checkpoints == "all" or (spec.keep_checkpoints == "censored" and row["censored"])
    if not keep:
        store.delete_checkpoint(root, spec.name, job.job_id)
    log.write(f"# done: steps {finished.steps_run} censored {finished.censored} events {finished.events}; "
              f"training {finished.wall_s:.3f} s{'; PRUNED: not memorised' if finished.pruned else ''}\n")
    return row


def _failed(pack: _Pack, job: Job, config: Any, error: str, started: float, common: dict[str, Any],
            log: store.JobLog) -> dict[str, Any]:
    spec, root = pack.spec, pack.root
    store.write_job_error(root, spec.name, job.job_id, error)
    row = store.trial_row(spec.name, job.job_id, config, store.FAILED, started_at=started, ended_at=time.time(),
                          error=error[-4000:], **common)
    store.write_trial_row(root, row, known_not_final=True)
    log.write(f"# failed after {spec.max_failures + 1} attempt(s)\n")
    return row


def _log_batch(log: store.JobLog, batch: Batch) -> None:
    for row in batch.rows:
        log.write(f"step {row['step']} train_acc {row['train_acc']:.4f} val_acc {row['val_acc']:.4f}"
                  f" train_loss {row['train_loss']:.4g} val_loss {row['val_loss']:.4g}\n")
    if batch.pruned:
        log.write(f"step {batch.step} PRUNED: not memorised\n")
    log.flush()
