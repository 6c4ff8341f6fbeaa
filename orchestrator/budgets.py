"""Budgets spent where they change the answer: `groksweep extend` continues censored jobs from their kept
checkpoints, and the spec key `budget` does so in rounds until every configuration's Kaplan-Meier median
time-to-grok is known. Ray-free.

A job's budget is its config's `max_steps` unless an extension round names it. The rounds are recorded in
`<root>/sweeps/<name>/budgets.json`, written whole under the sweep's lease *before* any job of the round
runs, so that a crash at any instant leaves a record that `resume` finishes (reconcile.plan owes every
job of a round whose row is still censored below the round's budget):

    {"rounds": [{"round": 1, "max_steps": 8000, "reason": "extend", "where": "train_fraction < 0.25",
                 "jobs": ["c0000-s0-1a2b3c", ...], "rerun_missing": ["c0001-s0-4d5e6f"], "created": ...}]}

An extended job continues from its final checkpoint; the trainer accepts a checkpoint whose config differs
only by a smaller `max_steps` (trainers.loop.extends_budget), and the continued run is bit-identical to
the job run with the larger budget from the start. Its final row is then replaced -- the one case where a
final row is -- by the longer run's, with `budget_history` (every budget it ran under) and
`extended_from_steps`. Optuna sweeps are refused: a COMPLETE Optuna trial's value cannot change.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from orchestrator import UserError, store
from orchestrator.spec import SweepSpec, points

BUDGETS_FILE = "budgets.json"


def rounds(root: Any, name: str) -> list[dict[str, Any]]:
    data = store.read_sweep_file(root, name, BUDGETS_FILE)
    return [] if data is None else json.loads(data)["rounds"]


def targets(root: Any, name: str) -> dict[str, int]:
    """Each extended job's budget: that of the last round naming it."""
    budget: dict[str, int] = {}
    for record in rounds(root, name):
        for trial_id in [*record["jobs"], *record.get("rerun_missing", [])]:
            budget[trial_id] = int(record["max_steps"])
    return budget


def record_round(root: Any, name: str, max_steps: int, jobs: list[str], rerun_missing: list[str],
                 reason: str, where: str | None = None) -> None:
    """Append a round (call under the sweep's lease, before its jobs run)."""
    existing = rounds(root, name)
    existing.append({"round": len(existing) + 1, "max_steps": int(max_steps), "reason": reason, "where": where,
                     "jobs": sorted(jobs), "rerun_missing": sorted(rerun_missing), "created": time.time()})
    store.write_sweep_file(root, name, BUDGETS_FILE, json.dumps({"rounds": existing}, indent=1).encode())


def owes_extension(row: dict[str, Any] | None, target: int | None) -> bool:
    """A job whose stored row ended censored below the budget a round gave it."""
    return (target is not None and row is not None and row["status"] == store.COMPLETED and bool(row["censored"])
            and row["max_steps"] is not None and int(row["max_steps"]) < target)


def extension_fields(row: dict[str, Any] | None, target: int) -> dict[str, Any]:
    """`budget_history` and `extended_from_steps` for a job being extended to `target`, from its stored row
    (the censored final row, or the running/interrupted row of an extension already under way)."""
    if row is None:
        return {"budget_history": None, "extended_from_steps": None}
    if owes_extension(row, target):
        history = list(row.get("budget_history") or [int(row["max_steps"])])
        return {"budget_history": [*history, target], "extended_from_steps": row["steps_run"]}
    return {"budget_history": row.get("budget_history"), "extended_from_steps": row.get("extended_from_steps")}


# --- groksweep extend ---

@dataclass
class Selection:
    max_steps: int
    jobs: list[str]  # censored jobs that kept a checkpoint: continued from it
    missing: list[str]  # censored jobs without a checkpoint: rerun from step 0 with --rerun-missing, else left
    rerun_missing: bool
    where: str | None

    @property
    def to_run(self) -> list[str]:
        return self.jobs + (self.missing if self.rerun_missing else [])


def select(root: Any, spec: SweepSpec, max_steps: int, where: str | None, rerun_missing: bool) -> Selection:
    """The censored jobs `extend` continues; UserError (nothing written) for what it refuses."""
    if spec.method == "optuna":
        raise UserError(f"extend: sweep {spec.name!r} is an Optuna sweep; a COMPLETE Optuna trial's value cannot "
                        "change, so only grid and random sweeps can be extended")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise UserError(f"--max-steps: an integer >= 1, got {max_steps!r}")
    censored = censored_rows(root, spec.name, where)
    if censored.is_empty():
        scope = f" matching --where {where!r}" if where else ""
        raise UserError(f"extend: sweep {spec.name!r} has no censored completed job{scope}; nothing to extend")
    highest = int(censored["max_steps"].max())
    if max_steps <= highest:
        raise UserError(f"--max-steps: {max_steps} is not above the selected jobs' budget ({highest}); give a "
                        f"larger --max-steps, or select jobs below it with --where \"max_steps < {max_steps}\"")
    kept = store.checkpointed_jobs(root, spec.name)
    ids = censored["trial_id"].to_list()
    return Selection(max_steps, [i for i in ids if i in kept], [i for i in ids if i not in kept], rerun_missing, where)


def censored_rows(root: Any, name: str, where: str | None) -> pl.DataFrame:
    """The sweep's completed, censored rows (those `where`, a SQL predicate over `trials`, selects)."""
    frame = store.collect(lambda: store.trials(root, [name]))
    if where is not None and where.strip():
        if ";" in where:
            raise UserError("--where: one SQL predicate over trials columns (no ';'), e.g. \"train_fraction < 0.25\"")
        try:
            frame = pl.SQLContext(trials=frame).execute(f"SELECT * FROM trials WHERE {where}", eager=True)
        except (pl.exceptions.PolarsError, ValueError, TypeError) as error:
            raise UserError(f"--where: {store._one_line(error)} (columns: {', '.join(store.TRIAL_SCHEMA)})") from None
    return frame.filter((pl.col("status") == store.COMPLETED) & pl.col("censored").fill_null(False)).sort("trial_id")


# --- the spec's `budget`: rounds until every configuration's median is known ---

def _rows_by_configuration(root: Any, name: str) -> pl.DataFrame:
    """The sweep's rows with `configuration`, read off each job id (`c0007-s2-...` -> 7): the group whose
    seeds are pooled."""
    return store.collect(lambda: store.trials(root, [name]).with_columns(
        pl.col("trial_id").str.extract(r"^c(\d+)-", 1).cast(pl.Int64).alias("configuration")))


def group_budgets(root: Any, spec: SweepSpec, table: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per configuration (seeds pooled): its values, jobs, how many grokked / are censored, its budget (the
    largest max_steps of its jobs), trial-steps spent, Kaplan-Meier median of steps_to_generalize (null when
    not known), and its budget state: `median known`, `extend_to reached`, `extending` or `running`.
    `table`: the rows from `_rows_by_configuration`, if already read."""
    from orchestrator.studies import km_median

    table = _rows_by_configuration(root, spec.name) if table is None else table
    if table.is_empty():
        return pl.DataFrame()
    grid = points(spec)
    extend_to = spec.budget.extend_to if spec.budget is not None else None
    out = []
    for (configuration,), group in table.sort("configuration").group_by("configuration", maintain_order=True):
        done = group.filter(pl.col("status").is_in(list(store.FINAL)))  # pruned jobs count, censored
        observed = (~done["censored"].fill_null(True)).to_numpy()
        times = np.where(observed, done["steps_to_generalize"].fill_null(0).to_numpy(),
                         done["steps_run"].fill_null(0).to_numpy()).astype(float)
        median = km_median(times, observed).median if done.height else None
        budget = int(group["max_steps"].max())
        if not group["status"].is_in(list(store.ENDED)).all():
            state = "running"
        elif median is not None:
            state = "median known"
        elif extend_to is not None and budget >= extend_to:
            state = "extend_to reached"
        elif extend_to is None:
            state = "median not known"
        else:
            state = "extending"
        values = grid[configuration] if configuration < len(grid) else {}
        out.append({"configuration": configuration, **{k: str(v) for k, v in values.items()
                                                       if k in spec.parameters},
                    "jobs": group.height, "grokked": int(observed.sum()), "censored": int((~observed).sum()),
                    "budget": budget, "trial_steps": int(group["steps_run"].fill_null(0).sum()),
                    "km_median": median, "state": state})
    return pl.DataFrame(out)


def due_rounds(root: Any, spec: SweepSpec) -> list[tuple[int, list[str]]]:
    """The next budget round(s) of a `budget` sweep, as (max_steps, censored job ids): the censored jobs of
    every configuration whose median is not known, at twice its budget (capped at extend_to). Empty when
    every median is known or extend_to is reached -- or while jobs are still running."""
    if spec.budget is None:
        return []
    table = _rows_by_configuration(root, spec.name)
    groups = group_budgets(root, spec, table)
    if groups.is_empty() or (groups["state"] == "running").any():
        return []
    extending = groups.filter(pl.col("state") == "extending")
    if extending.is_empty():
        return []
    by_budget: dict[int, list[str]] = {}
    for configuration, budget in extending.select("configuration", "budget").iter_rows():
        target = min(2 * budget, spec.budget.extend_to)
        jobs = table.filter((pl.col("configuration") == configuration) & (pl.col("status") == store.COMPLETED)
                            & pl.col("censored").fill_null(False) & (pl.col("max_steps") < target))
        by_budget.setdefault(target, []).extend(jobs["trial_id"].to_list())
    return sorted((target, sorted(ids)) for target, ids in by_budget.items() if ids)


def start_due_rounds(root: Any, spec: SweepSpec) -> int:
    """Record the due rounds (under the lease) and move their jobs out of the compacted files; jobs owed."""
    started = 0
    for target, ids in due_rounds(root, spec):
        record_round(root, spec.name, target, ids, [], reason="budget")
        store.uncompact(root, spec.name, set(ids))
        started += len(ids)
    return started
