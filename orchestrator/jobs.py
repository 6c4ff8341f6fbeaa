"""Jobs: the unit of everything users see. One job = one (configuration, seed) training = one row in
`trials` = one curve. A Tune trial carries a *pack* of jobs. Ray-free, torch-free.

A job's id is deterministic -- the same after any resume -- and is stored in the `trial_id` column:

    c<configuration>-s<seed>-<hash>        e.g.  c0007-s2-4be1a0

`<configuration>` is the grid/random point's index (zero-padded to at least 4 digits) or, for Optuna, the
Optuna trial number that proposed it; `<hash>` is 6 hex digits of sha1 over the sweep name, that number,
the configuration's searched values and the seed, so ids of different sweeps or specs never collide.

Packing (spec key `pack`, jobs per Tune trial): a Tune trial costs the driver ~25 ms however long it
trains, so small jobs are packed. Default for grid/random: decreasing sizes (guided self-scheduling), so
that big packs keep the driver idle early and small ones balance the end: each pack takes
`ceil(left / (8 * max_concurrent))` of the jobs left, but at least `ceil(jobs / (128 * max_concurrent))`
and at most 100,000 training steps (`100_000 // max_steps` jobs). A sweep of 12 jobs at 2 at a time gets
packs of 1; 2,000 `tiny` jobs (60 steps) 125, 118, ... down to 8 (61 Tune trials); 10,000 of them 625
down to 40. Trials that batch (a GPU in `resources` with `batched: auto`, or `batched: on`) train a pack's
jobs of one shape at once, so a pack lasts about one job however many it holds: their cap is BATCHED_PACK
members instead of the steps cap (1,000 gromov jobs on one GPU: packs of 64, 64, ..., the last ones
smaller). Optuna packs are always one proposed configuration x all its seeds: the mean over seeds is what
Optuna is told, so seeds are never split. A fixed `pack: N` gives packs of N.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from trainers.config import TrainConfig
from trainers.metrics import BUMP, CENSORED, EVENTS, METRICS, EventTracker, val_loss_bump

MAX_PACK_STEPS = 100_000
PACKS_PER_SLOT = 8  # a pack takes at most 1/8 of what is left per concurrent slot ...
TAIL_PACKS_PER_SLOT = 128  # ... and at least 1/128 of the whole sweep per slot
BATCHED_PACK = 64  # the cap for trials that batch: members per batched model (issue 12's largest K)


@dataclass(frozen=True)
class Job:
    job_id: str
    configuration: int  # point index (grid/random) or Optuna trial number
    values: dict[str, Any]  # the configuration's spec parameters (searched and constant)
    seed: int
    optuna_trial: int | None = None
    max_steps: int | None = None  # an extended budget (orchestrator.budgets); None: the spec's


def job_id(sweep: str, configuration: int, values: dict[str, Any], seed: int, width: int = 4) -> str:
    digest = hashlib.sha1(json.dumps([sweep, configuration, values, seed], sort_keys=True, default=str)
                          .encode()).hexdigest()[:6]
    return f"c{configuration:0{width}d}-s{seed}-{digest}"


def make_job(spec: Any, configuration: int, values: dict[str, Any], seed: int,
             optuna_trial: int | None = None) -> Job:
    return Job(job_id(spec.name, configuration, values, seed), configuration, dict(values), seed, optuna_trial)


def expected_jobs(spec: Any) -> list[Job]:
    """Grid/random: every (point, seed), in run order. Optuna sweeps learn theirs from the journal."""
    from orchestrator.spec import points

    if spec.method == "optuna":
        raise ValueError("an Optuna sweep's jobs come from its journal (orchestrator.optuna_search)")
    return [make_job(spec, index, point, seed) for index, point in enumerate(points(spec)) for seed in spec.seeds]


def optuna_jobs(spec: Any, number: int, params: dict[str, Any]) -> list[Job]:
    """The jobs of Optuna trial `number`: its proposed values (plus the constants) once per seed."""
    from orchestrator.spec import points

    values = {**points(spec)[0], **params}
    return [make_job(spec, number, values, seed, optuna_trial=number) for seed in spec.seeds]


def train_config(spec: Any, job: Job) -> TrainConfig:
    """The job's TrainConfig. `threads` left null becomes the trial's whole-CPU count (Ray sets
    OMP_NUM_THREADS=1 in its workers, which would leave a multi-CPU trial on one thread)."""
    config = spec.trial_config(job.values, job.seed)
    if job.max_steps is not None:
        config = dataclasses.replace(config, max_steps=job.max_steps)
    if config.threads is None:
        config = dataclasses.replace(config, threads=max(1, int(spec.cpu)))
    return config


def pack_sizes(spec: Any, n_jobs: int, max_steps: int | None = None) -> list[int]:
    """Jobs per Tune trial, in run order (see the module docstring): a fixed `pack`, or decreasing sizes.
    `max_steps`: the largest budget among the jobs, when extended budgets exceed the spec's."""
    if spec.method == "optuna":
        return [len(spec.seeds)] * -(-n_jobs // len(spec.seeds))
    if spec.pack is not None:
        return [spec.pack] * (n_jobs // spec.pack) + ([n_jobs % spec.pack] if n_jobs % spec.pack else [])
    from orchestrator.spec import points

    max_steps = max(max_steps or 0, *(spec.trial_config(p, spec.seeds[0]).max_steps for p in points(spec)[:1000]))
    batches = spec.batched == "on" or (spec.batched == "auto" and spec.gpu > 0)
    cap = BATCHED_PACK if batches else max(1, MAX_PACK_STEPS // max(1, max_steps))
    slots = PACKS_PER_SLOT * spec.max_concurrent
    smallest = max(1, min(cap, math.ceil(n_jobs / (TAIL_PACKS_PER_SLOT * spec.max_concurrent))))
    sizes, left = [], n_jobs
    while left:
        size = min(left, cap, max(smallest, math.ceil(left / slots)))
        sizes.append(size)
        left -= size
    return sizes


def pack_size(spec: Any, n_jobs: int) -> int:
    """The largest pack (the first)."""
    return max(pack_sizes(spec, n_jobs), default=1)


def make_packs(jobs: list[Job], sizes: list[int] | int) -> list[list[Job]]:
    if isinstance(sizes, int):
        sizes = [sizes] * -(-len(jobs) // sizes)
    packs, at = [], 0
    for size in sizes:
        if at < len(jobs):
            packs.append(jobs[at:at + size])
            at += size
    return packs


# --- what a job's curve says: the row is always derived from it ---

def outcome_from_curve(history: list[dict[str, Any]], p: int | None = None) -> dict[str, Any]:
    """The row fields that a job's curve determines: steps_run, every event, censored, the final metrics
    and the validation-loss bump, recomputed with the documented thresholds (trainers.metrics; `p`, the
    modulus, for circuit_step). Writing rows and `check` both use this, so a row never contradicts its curve."""
    ordered = sorted(history, key=lambda r: r["step"])
    tracker = EventTracker.replay(ordered, p=p)
    last = ordered[-1] if history else {}
    return {"steps_run": int(last["step"]) if history else None, **tracker.events,
            CENSORED: tracker.censored if history else None,
            **{name: last.get(name) for name in METRICS},
            **val_loss_bump(ordered, tracker.events["steps_to_memorize"])}


def row_fields(outcome: dict[str, Any]) -> dict[str, Any]:
    """`outcome_from_curve` shaped as `store.trial_row` keyword arguments."""
    return {"steps_run": outcome["steps_run"], "events": {name: outcome[name] for name in EVENTS},
            "bump": {name: outcome[name] for name in BUMP},
            "censored": outcome[CENSORED], "final_metrics": {name: outcome[name] for name in METRICS}}


def objective_of_row(spec: Any, row: dict[str, Any]) -> list[float]:
    """Each search metric's value for a finished job's row: an event's step or the penalty
    (2 x max_steps) when it did not happen; a metric's final value."""
    from orchestrator.spec import objective_value

    events = {name: row.get(name) for name in EVENTS}
    metrics = {name: row.get(name) for name in METRICS}
    return [objective_value(m, events, metrics, int(row["max_steps"])) for m in spec.metrics]
