"""A pack's jobs as batched models: the jobs that share a batching key (trainers.batched.batching_key) train
together as one stacked model in the trial's trainer process; a job alone in its key trains as before.

Spec key `batched: auto | on | off`: `auto` (default) batches in trials that were given a GPU (there one
small job leaves the card idle), `on` also on CPU (tests, and to measure it), `off` never.

Each member keeps everything a job has in `orchestrator.trainable`: a final row is never retrained; its
own log, checkpoint directory (from which it resumes, alone or in any batch), `running` row, curve parts at
its checkpoints, and its final row written the moment it ends -- its pack-mates train on. Rows say
`batched: true` and `pack_size`. If the batched model fails `max_failures` + 1 times, the members not yet
ended train one after another as plain jobs from their checkpoints, each with its own retries, so a
failing member ends `failed` with its own traceback and does not take its pack-mates with it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from typing import Any

from orchestrator import store, trainer_process
from orchestrator.jobs import Job, train_config
from orchestrator.spec import SweepSpec
from orchestrator.trainable import (
    JobRun,
    _finish,
    _has_local_checkpoint,
    _Pack,
    _stop_requested,
    common_fields,
    on_batch,
    trainer_checkpoint_dir,
    trainer_job,
)
from orchestrator.trainer_process import Batch, BatchedJob, Finished, Member, Started, TrainerFailed
from trainers.batching import batching_key


def wants_batched(spec: SweepSpec) -> bool:
    """Whether this trial batches (called in the trial's actor: `auto` asks Ray for the trial's GPUs)."""
    if spec.batched != "auto":
        return spec.batched == "on"
    import ray

    return bool(ray.get_gpu_ids())


def run_jobs(pack: _Pack, jobs: list[Job]) -> list[dict[str, Any]]:
    """Every job of the pack, grouped by batching key (in pack order); their rows in `jobs` order."""
    spec, root = pack.spec, pack.root
    rows: dict[str, dict[str, Any]] = {}
    groups: dict[Any, list[Job]] = {}
    for job in jobs:
        if _stop_requested():
            raise SystemExit(0)
        if job.max_steps is not None:  # an extension (orchestrator.budgets) replaces a final row: trainable's path
            groups[job.job_id] = [job]
            continue
        if store.read_trial_status(root, spec.name, job.job_id) in store.FINAL:
            rows[job.job_id] = store.read_trial_row(root, spec.name, job.job_id)
            pack._ended(job, rows[job.job_id])
            continue
        key = batching_key(train_config(spec, job))
        groups.setdefault(job.job_id if key is None else key, []).append(job)
    for group in groups.values():
        if len(group) == 1:
            rows[group[0].job_id] = pack.run(group[0])
        else:
            rows.update(_run_group(pack, group))
    return [rows[job.job_id] for job in jobs]


@dataclass
class _Member(JobRun):
    """A member's JobRun (trainable's per-job bookkeeping), and its final row once it has ended."""

    row: dict[str, Any] | None = None


def _run_group(pack: _Pack, jobs: list[Job]) -> dict[str, dict[str, Any]]:
    spec, root = pack.spec, pack.root
    where = store.ResultsRoot.of(root)
    members = []
    for job in jobs:
        members.append(_Member(job, train_config(spec, job), trainer_checkpoint_dir(pack, job),
                               store.JobLog(root, spec.name, job.job_id),
                               common_fields(pack, job, batched=True)))
    trainer = trainer_process.shared()
    attempt, finished_ok = 0, False
    try:
        while True:
            live = [m for m in members if m.row is None]
            for m in live:
                m.resumed_from = _has_local_checkpoint(m.checkpoint_dir)
            group = BatchedJob([trainer_job(spec, m) for m in live])
            try:
                for message in trainer.run(group):
                    if isinstance(message, Started):
                        for m in live:
                            assert m.log is not None
                            how = "started" if m.resumed_from is None else f"resumed from step {m.resumed_from}"
                            m.log.write(f"# job {m.job.job_id} on {message.device}, {how} {time.ctime()} "
                                        f"(attempt {attempt + 1}, batched with {len(live) - 1} pack-mates, "
                                        f"trainer pid {trainer.process.pid})\n"
                                        f"# config {json.dumps(m.config.to_dict())}\n")
                    elif isinstance(message, Member):
                        _on_member(pack, live[message.index], message.message, trainer)
                finished_ok = True
                return {m.job.job_id: m.row for m in members if m.row is not None}
            except TrainerFailed as error:
                trainer_process.discard_shared()
                trainer = trainer_process.shared()
                attempt += 1
                for m in members:
                    if m.row is None and m.log is not None:
                        m.pending.clear()
                        m.log.write(f"# attempt {attempt} (batched) failed:\n{store.strip_ansi(str(error))}\n")
                if attempt > spec.max_failures:
                    break
        for m in members:  # the batched model kept failing: the rest train alone, each with its own retries
            if m.row is None:
                m.log.write("# training it alone from its checkpoint\n")
                m.log.close()
                m.log = None  # _run_job appends to the same log
                m.row = pack.run(m.job)
        finished_ok = True
        return {m.job.job_id: m.row for m in members}
    finally:
        if not finished_ok:  # stopped by Tune mid-group: the trainer's state is unknown
            trainer_process.discard_shared()
        for m in members:
            if m.log is not None:
                m.log.close()
            if where.remote:
                shutil.rmtree(m.checkpoint_dir, ignore_errors=True)


def _on_member(pack: _Pack, m: _Member, message: Batch | Finished, trainer: trainer_process.TrainerProcess) -> None:
    """trainable's handling of one Batch or the Finished, for member `m`."""
    if isinstance(message, Finished):
        m.row = _finish(pack, m, message)
        pack._ended(m.job, m.row)
    else:
        on_batch(pack, m, message, trainer)
