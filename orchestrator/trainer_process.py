"""A trial's training runs in a child process of its Tune actor, not in the actor itself.

Why: the same `trainers.run` takes ~5 % more CPU time inside a Ray worker process than in a plain
process, and ~7 % more wall time. Under perf every library is equally slower (not any one call), so
the likely cause is the ~25 Ray threads the worker process carries and their wake-ups. In a child
that the worker starts it runs as fast as in a plain process pool (`benchmarks/tune_overhead.py`
prints all three). The child lives as long
as its actor, and Tune reuses actors across trials, so torch is imported once per actor, as before.

The child decides locally when a batch of evaluations is due (every `report_every_s`, at each
checkpoint, at the end, or when the grokking policy prunes) and sends it down a pipe; the actor turns
each batch into one `tune.report`. Batches without a checkpoint do not wait for the driver; a batch
with one waits until the actor has handed the checkpoint to Tune, because the trainer replaces its
checkpoint at the next save. The child exits when its actor dies (a lifeline pipe reaches EOF).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

# what the child inherits that changes how it trains: a change means a new child
_ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Job:
    config: dict[str, Any]  # TrainConfig.to_dict()
    checkpoint_dir: str
    checkpoint_every: int
    checkpoint_every_s: float
    report_every_s: float  # 0: a batch per evaluation
    prune_not_memorized_by: int | None


@dataclass(frozen=True)
class Started:
    device: str


@dataclass(frozen=True)
class Batch:
    """The evaluations since the previous batch, and the state at the last of them."""

    rows: list[dict[str, Any]]  # step + trainers.metrics.METRICS, one per evaluation
    step: int
    metrics: dict[str, float]
    events: dict[str, int | None]
    checkpoint: str | None  # a checkpoint directory written at `step`: call `TrainerProcess.release` after
    done: bool
    pruned: bool


@dataclass(frozen=True)
class Finished:
    steps_run: int
    censored: bool
    events: dict[str, int | None]
    wall_s: float  # the job's own training time, over every process that trained it
    history: list[dict[str, Any]]  # the whole curve: step + METRICS per evaluation
    pruned: bool  # the grokking policy ended it (not memorised in time)
    device: str


@dataclass(frozen=True)
class BatchedJob:
    """Jobs of one batching key, trained as one batched model (trainers.batched.run_batched)."""

    jobs: list[Job]  # one per member; each its own config and checkpoint directory, the rest as the first's


@dataclass(frozen=True)
class Member:
    """A batched job's message about its member `index`: a Batch of its evaluations, or its Finished."""

    index: int
    message: Batch | Finished


@dataclass(frozen=True)
class GroupDone:
    """A batched job's last message: every member has finished."""


@dataclass(frozen=True)
class _Failure:
    traceback: str


class TrainerFailed(RuntimeError):
    """The training job raised (the message is the child's traceback) or the child died."""


class TrainerProcess:
    """A child Python process that runs `trainers.run` jobs one after another."""

    def __init__(self) -> None:
        job_read, job_write = os.pipe()
        out_read, out_write = os.pipe()
        life_read, self._lifeline = os.pipe()  # never written: the child sees EOF when this process dies
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
        fds = (job_read, out_write, life_read)
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from orchestrator.trainer_process import serve; serve{fds}"],
            pass_fds=fds, env=env)
        for fd in fds:
            os.close(fd)
        self._jobs, self._out = Connection(job_write, readable=False), Connection(out_read, writable=False)
        self.env = _env()

    def usable(self) -> bool:
        """Alive, and started under the environment this process has now."""
        return self.process.poll() is None and self.env == _env()

    def run(self, job: Job | BatchedJob) -> Iterator[Started | Batch | Finished | Member | GroupDone]:
        """Start `job`; yield what the child sends until it has finished. Raises TrainerFailed."""
        self._jobs.send(job)
        while True:
            try:
                message = self._out.recv()
            except (EOFError, OSError):
                raise TrainerFailed(f"the training process (pid {self.process.pid}) died with exit code "
                                    f"{self.process.wait()}") from None
            if isinstance(message, _Failure):
                raise TrainerFailed(message.traceback)
            yield message
            if isinstance(message, Finished | GroupDone):
                return

    def release(self) -> None:
        """The last batch's checkpoint has been handed on: the trainer may go on."""
        self._jobs.send(None)

    def close(self) -> None:
        """End the child (by its PID) and wait for it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for handle in (self._jobs, self._out):
            handle.close()
        os.close(self._lifeline)


def _env() -> tuple[str | None, ...]:
    return tuple(os.environ.get(key) for key in _ENV_KEYS)


_SHARED: TrainerProcess | None = None  # this process's (a Tune actor's) trainer, kept across its trials


def shared() -> TrainerProcess:
    """This process's trainer process: the one already running if still usable, else a new one."""
    global _SHARED
    if _SHARED is None or not _SHARED.usable():
        discard_shared()
        _SHARED = TrainerProcess()
    return _SHARED


def discard_shared() -> None:
    """End this process's trainer process (after a failure its state is unknown); the next `shared()`
    starts a new one."""
    global _SHARED
    if _SHARED is not None:
        _SHARED.close()
        _SHARED = None


# --- the child ---

def serve(job_fd: int, out_fd: int, lifeline_fd: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(lifeline_fd,), daemon=True).start()
    jobs, out = Connection(job_fd, writable=False), Connection(out_fd, readable=False)
    from trainers.loop import keep_freed_memory, run  # torch: once per child

    keep_freed_memory()  # this process only trains (trainers.loop.keep_freed_memory)

    while True:
        try:
            job = jobs.recv()
        except EOFError:
            return
        try:
            out.send(_train_batched(job, jobs, out) if isinstance(job, BatchedJob) else _train(job, run, jobs, out))
        except Exception:
            out.send(_Failure(traceback.format_exc()))


def _exit_with_parent(lifeline_fd: int) -> None:
    """Exit when the parent (the Tune actor) is gone: the lifeline pipe reaches EOF, or -- should another
    process have inherited the pipe's write end -- this process has been re-parented."""
    parent = os.getppid()
    while True:
        ready, _, _ = select.select([lifeline_fd], [], [], 0.5)
        if ready or os.getppid() != parent:
            os._exit(1)


def _reporter(job: Job, jobs: Connection, send: Any) -> Any:
    """The `report` callback of one job: batches its evaluations (see the module docstring) and sends them
    with `send`; a batch with a checkpoint waits until the actor has released it."""
    from orchestrator.stopping import GrokkingPolicy

    policy = GrokkingPolicy(job.prune_not_memorized_by)
    pending: list[dict[str, Any]] = []
    last_sent = time.monotonic()

    def report(ev) -> bool:
        nonlocal last_sent
        pruned = not ev.done and policy.should_prune(ev.step, ev.events["steps_to_memorize"])
        pending.append({"step": ev.step, **ev.metrics})
        due = time.monotonic() - last_sent >= job.report_every_s
        if ev.checkpoint is None and not (ev.done or pruned or due):
            return False
        send(Batch(list(pending), ev.step, dict(ev.metrics), dict(ev.events),
                   None if ev.checkpoint is None else str(ev.checkpoint), ev.done, pruned))
        pending.clear()
        last_sent = time.monotonic()
        if ev.checkpoint is not None:
            jobs.recv()  # released: the checkpoint is with Tune
        return pruned

    return report


def _finished(result: Any) -> Finished:
    return Finished(result.steps_run, result.censored, dict(result.events), result.wall_s, result.history,
                    result.stopped_by_report, result.device)


def _train(job: Job, run: Any, jobs: Connection, out: Connection) -> Finished:
    from trainers.config import from_dict
    from trainers.loop import pick_device

    out.send(Started(str(pick_device())))
    result = run(from_dict(job.config), _reporter(job, jobs, out.send), checkpoint_dir=job.checkpoint_dir,
                 checkpoint_every=job.checkpoint_every, checkpoint_every_s=job.checkpoint_every_s)
    return _finished(result)


def _train_batched(group: BatchedJob, jobs: Connection, out: Connection) -> GroupDone:
    """Each member's batches and its Finished (the moment it ends) as `Member` messages, then GroupDone."""
    from trainers.batched import run_batched
    from trainers.config import from_dict
    from trainers.loop import pick_device

    out.send(Started(str(pick_device())))
    first = group.jobs[0]
    reports = [_reporter(job, jobs, lambda message, i=i: out.send(Member(i, message)))
               for i, job in enumerate(group.jobs)]
    run_batched([from_dict(job.config) for job in group.jobs], reports, [job.checkpoint_dir for job in group.jobs],
                checkpoint_every=first.checkpoint_every, checkpoint_every_s=first.checkpoint_every_s,
                on_end=lambda i, result: out.send(Member(i, _finished(result))))
    return GroupDone()
