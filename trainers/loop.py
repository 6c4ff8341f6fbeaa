"""The training loop -- `run(config, report, checkpoint_dir)`: one grokking training job, from a config to its
events (public as `trainers.run`).

The interface (`run`, `Evaluation`, `TrialResult`) is pinned: the orchestrator's Tune adapter builds on it.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainers import checkpoint
from trainers.config import ConfigError, TrainConfig, with_defaults
from trainers.metrics import EventTracker, evaluate
from trainers.models import build_model
from trainers.optim import GradientFilter, learning_rate, make_optimizer, mean_loss
from trainers.progress import ProgressMeter
from trainers.tasks import MODULAR, make_dataset


@dataclass(frozen=True)
class Evaluation:
    """What `report` receives at every evaluation."""

    step: int  # optimiser steps taken so far
    metrics: dict[str, Any]  # every name in trainers.metrics.METRICS (NaN where not defined for the task), and
    # unless progress_measures is none every name in PROGRESS and PROGRESS_LISTS (None where not defined)
    events: dict[str, int | None]  # every name in trainers.metrics.EVENTS, as known so far
    checkpoint: Path | None  # the checkpoint directory written at this evaluation, if one was
    done: bool  # the last evaluation of this run (budget spent, or generalisation confirmed)


@dataclass
class TrialResult:
    config: TrainConfig
    events: dict[str, int | None]  # trainers.metrics.EVENTS; generalisation events None when censored
    censored: bool
    steps_run: int
    wall_s: float  # the job's training time, summed over every process that trained it (kept in checkpoints)
    final_metrics: dict[str, float]  # the last evaluation's METRICS
    device: str  # the device actually used, e.g. "cpu" or "cuda:0"
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per evaluation: step + METRICS
    stopped_by_report: bool = False  # `report` asked to stop


Report = Callable[[Evaluation], bool | None]  # return True to stop the run


def pick_device() -> torch.device:
    """CUDA when present, with deterministic kernels: by default CUDA's index_add_ and scatter_add_ (the MLP's
    input-weight gradient, the restricted loss) sum in a different order each run, so the same config would
    not give the same curve, nor a resumed run its uninterrupted one. CPU kernels here already are."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any product
    torch.use_deterministic_algorithms(True, warn_only=True)  # ops with no deterministic kernel warn, not fail
    torch.utils.deterministic.fill_uninitialized_memory = False  # nothing reads it: skip the fill (a memory pass)
    return torch.device("cuda:0")


def batch_indices(config: TrainConfig, n_train: int, step: int) -> torch.Tensor | None:
    """The training rows of minibatch `step` (None: full batch). Each epoch is a permutation seeded by
    (seed, epoch), so a resumed run draws the same batches without saving a sampler state."""
    if config.batch_size is None or config.batch_size >= n_train:
        return None
    per_epoch = -(-n_train // config.batch_size)
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
    return order[i * config.batch_size:(i + 1) * config.batch_size]


def extends_budget(saved: dict[str, Any], config: TrainConfig) -> bool:
    """A checkpoint of `saved` may continue under `config` when only `max_steps` differs and grows: nothing
    in a run depends on its budget except where it stops (the warm-up is fixed, batches are drawn per step),
    so the continued run is the run that had the larger budget from the start."""
    wanted = config.to_dict()
    return (saved.keys() == wanted.keys() and saved["max_steps"] < wanted["max_steps"]
            and all(saved[k] == wanted[k] for k in wanted if k != "max_steps"))


def resumed_history(saved: Path, state: dict[str, Any], config: TrainConfig) -> list[dict[str, Any]]:
    """The evaluations a run resumed from checkpoint `state` (at `saved`) under `config` keeps; ConfigError
    unless the checkpoint's config is `config`, or differs only by a smaller max_steps (`extends_budget`:
    then the evaluation at the old budget's end, off the grid, goes -- the longer run never made it)."""
    saved_config = with_defaults(state["config"])
    if saved_config == config.to_dict():
        return state["history"]
    if not extends_budget(saved_config, config):
        raise ConfigError(f"checkpoint_dir: {saved} holds a checkpoint of another config (only a larger "
                          "max_steps may differ); use a new directory")
    return [row for row in state["history"] if row["step"] % config.eval_every == 0]


def keep_freed_memory() -> None:
    """Let glibc reuse freed large blocks instead of returning them to the OS: every step allocates the
    same multi-MB activations, and fresh pages cost a page fault each (measured: gromov 16 -> 10 ms/step).
    Process-wide, so `run()` never calls it: the processes groksweep owns do (the trainer child, `train`);
    call it yourself in a notebook or script that only trains. A no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap
    libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: serve blocks up to 32 MiB (glibc's maximum) from the heap


def run(config: TrainConfig, report: Report | None = None, checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 10, checkpoint_every_s: float = 0.0) -> TrialResult:
    """Train one job. With `checkpoint_dir`, resume from the checkpoint there if any, and write one
    every `checkpoint_every` evaluations but at most one per `checkpoint_every_s` seconds (and always one
    at the end), replacing the previous one atomically. Saving never touches the RNG: when checkpoints
    happen does not change the run."""
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, report, checkpoint_dir, checkpoint_every, checkpoint_every_s, started)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config: TrainConfig, report: Report | None, checkpoint_dir: str | Path | None, checkpoint_every: int,
         checkpoint_every_s: float, started: float) -> TrialResult:
    device, dtype = pick_device(), getattr(torch, config.dtype)
    data = make_dataset(config.op, config.p, config.train_fraction, config.seed, device)
    model = build_model(config, data.n_symbols).to(device=device, dtype=dtype)
    parameters = list(model.parameters())
    optimizer = make_optimizer(config, parameters)
    grad_filter = None if config.grokfast == "none" else GradientFilter(
        config.grokfast, config.grokfast_alpha, config.grokfast_lambda, config.grokfast_window)
    inputs = model.inputs(data.a, data.b)
    train_inputs, train_labels = inputs[data.train_idx], data.labels[data.train_idx]
    val = (inputs[data.val_idx], data.labels[data.val_idx])
    modular = config.op in MODULAR
    progress = ProgressMeter(config.progress_measures, config.op, data.n_symbols, config.loss, config.model,
                             data.labels, data.train_idx, data.val_idx, inputs, dtype)

    step, history, wall_before = 0, [], 0.0
    saved = checkpoint.latest(checkpoint_dir) if checkpoint_dir is not None else None
    if saved is not None:
        state = checkpoint.load(saved)
        kept = resumed_history(saved, state, config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if grad_filter is not None:
            grad_filter.load_state_dict(state["grad_filter"])
        step, history, wall_before = state["step"], kept, float(state.get("wall_s", 0.0))
    tracker = EventTracker.replay(history, p=config.p)

    def finished() -> bool:
        return step >= config.max_steps or (config.stop_on_generalize and tracker.streak >= config.confirm_evals)

    def save() -> Path:
        state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                     grad_filter=grad_filter.state_dict() if grad_filter else None, step=step, history=history,
                     config=config.to_dict(), wall_s=wall_before + time.perf_counter() - started)
        return checkpoint.save(checkpoint_dir, state, config.to_dict())

    stopped_by_report = False
    evaluations_since_save, last_save = 0, time.monotonic()

    def evaluation_due() -> bool:  # not when resuming at the step the checkpoint already evaluated
        if history and history[-1]["step"] == step:
            return False
        return step % config.eval_every == 0 or step == config.max_steps

    while True:
        rows, logits = batch_indices(config, len(train_labels), step), None
        if evaluation_due():
            if rows is None:  # full batch: this step's training forward; evaluation reads the train metrics off it
                logits = model(train_inputs)
            metrics = evaluate(model, (train_inputs, train_labels), val, config.loss, modular, train_logits=logits,
                               progress=progress)
            history.append({"step": step, **metrics})
            tracker.update(step, metrics)
            done = finished()
            evaluations_since_save += 1
            written = None
            if checkpoint_dir is not None and (done or (evaluations_since_save >= checkpoint_every
                                                        and time.monotonic() - last_save >= checkpoint_every_s)):
                written, evaluations_since_save, last_save = save(), 0, time.monotonic()
            if report is not None and report(Evaluation(step, metrics, dict(tracker.events), written, done)):
                stopped_by_report = not done
                break
            if done:
                break
        elif finished():  # resumed from the final checkpoint of a finished run
            break
        x, y = (train_inputs, train_labels) if rows is None else (train_inputs[rows], train_labels[rows])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = mean_loss(config.loss, model(x) if logits is None else logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_filter is not None:
            grad_filter.apply(parameters)
        optimizer.step()
        step += 1

    final_metrics = {name: value for name, value in history[-1].items() if name != "step"}
    return TrialResult(config=config, events=dict(tracker.events), censored=tracker.censored, steps_run=step,
                       wall_s=wall_before + time.perf_counter() - started, final_metrics=final_metrics,
                       device=str(device),
                       history=history, stopped_by_report=stopped_by_report)
