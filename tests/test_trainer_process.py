"""The trainer process that runs each Tune trial's training: same history as running in-process, errors
come back as tracebacks, and it never outlives the process that started it. (Real child processes,
real training; no Ray needed.)"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.trainer_process import Batch, Finished, Job, Started, TrainerFailed, TrainerProcess
from trainers.config import preset
from trainers.loop import run

CONFIG = dataclasses.replace(preset("tiny"), max_steps=300, stop_on_generalize=False, threads=1)


def job(checkpoint_dir: Path, config=CONFIG, **overrides) -> Job:
    values = dict(config=config.to_dict(), checkpoint_dir=str(checkpoint_dir), checkpoint_every=10,
                  checkpoint_every_s=0.0, report_every_s=60.0, prune_not_memorized_by=None)
    return Job(**{**values, **overrides})


def drain(trainer: TrainerProcess, a_job: Job) -> list:
    messages = []
    for message in trainer.run(a_job):
        messages.append(message)
        if isinstance(message, Batch) and message.checkpoint is not None:
            assert Path(message.checkpoint).is_dir()  # still there until released
            trainer.release()
    return messages


def test_same_history_as_in_process_and_reusable(tmp_path):
    trainer = TrainerProcess()
    try:
        for attempt in range(2):  # the second job runs in the same child
            messages = drain(trainer, job(tmp_path / f"run{attempt}"))
            assert isinstance(messages[0], Started) and messages[0].device == "cpu"
            batches = [m for m in messages if isinstance(m, Batch)]
            finished = messages[-1]
            assert isinstance(finished, Finished) and finished.steps_run == CONFIG.max_steps
            # a batch per checkpoint (every 10 evaluations) and the last one done, with its checkpoint
            assert [b.step for b in batches] == list(range(90, 300, 100)) + [300]
            assert batches[-1].done and batches[-1].checkpoint is not None and not batches[-1].pruned
            rows = [row for b in batches for row in b.rows]
            assert rows == run(CONFIG).history  # bit for bit, across the process boundary
        assert trainer.usable()
    finally:
        trainer.close()
    assert trainer.process.returncode is not None


def test_a_failing_job_comes_back_as_its_traceback(tmp_path):
    trainer = TrainerProcess()
    try:
        drain(trainer, job(tmp_path))  # leaves a checkpoint of CONFIG there
        other = dataclasses.replace(CONFIG, weight_decay=0.123)
        with pytest.raises(TrainerFailed, match="holds a checkpoint of another config"):
            drain(trainer, job(tmp_path, other))
        assert isinstance(drain(trainer, job(tmp_path / "fresh"))[-1], Finished)  # the child carries on
    finally:
        trainer.close()


def test_pruned_in_the_child(tmp_path):
    slow = dataclasses.replace(CONFIG, lr=1e-6)  # cannot memorise in 50 steps
    trainer = TrainerProcess()
    try:
        messages = drain(trainer, job(tmp_path, slow, prune_not_memorized_by=50))
    finally:
        trainer.close()
    last = [m for m in messages if isinstance(m, Batch)][-1]
    assert last.pruned and last.step == 50 and not last.done
    assert messages[-1].steps_run == 50


def test_a_dead_child_is_an_error_not_a_hang(tmp_path):
    trainer = TrainerProcess()
    try:
        messages = trainer.run(job(tmp_path, dataclasses.replace(CONFIG, max_steps=10**6)))
        assert isinstance(next(messages), Started)
        os.kill(trainer.process.pid, signal.SIGKILL)  # the child this test started
        with pytest.raises(TrainerFailed, match="died"):
            list(messages)
        assert not trainer.usable()
    finally:
        trainer.close()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_child_exits_with_its_parent():
    parent = subprocess.Popen(
        [sys.executable, "-c", "import time; from orchestrator.trainer_process import TrainerProcess; "
         "t = TrainerProcess(); print(t.process.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child)
        parent.kill()  # the process this test started; its trainer child must notice on its own
        parent.wait()
        deadline = time.monotonic() + 30
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(child)
    finally:
        if parent.poll() is None:
            parent.kill()
