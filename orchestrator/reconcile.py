"""What a sweep owes, what it holds, and whether the two agree. Ray-free: `resume` plans with it, `check`
verifies with it, `check --repair` fixes with it.

The store is the source of truth; Tune is only the engine that runs the jobs still owed. Invariants,
per job (one (configuration, seed) training, one `trials` row, one curve; see orchestrator.jobs):

1. Owed. Grid/random: every (point, seed) of the spec. Optuna: every seed of every trial in the
   journal. A job is *ended* when its row is `completed`, `stopped` or `failed` (a job that raised
   `max_failures` + 1 times; `resume` does not retry it). `resume` runs every owed job that has not ended
   -- whatever Tune's own saved state says -- so nothing is dropped, and skips ended ones, so nothing is
   trained twice; a sweep is complete when every owed job has ended and (Optuna) no trial is RUNNING.
   An extension round (orchestrator.budgets) owes each job it names that budget: a row that ended
   censored below it is not done.
2. One row per job, one curve row per (job, step) -- after deduplication by the readers, and, once
   compacted, in the files too.
3. A row never contradicts its curve: steps_run, the events, `censored` and the final metrics are what
   `jobs.outcome_from_curve` computes from the job's stored curve. A final row is never replaced (the
   trainable checks before it writes), except by `check --repair` rederiving it from its curve and by an
   extension (the row turns `running` first, its curve is replaced by the longer history, then its row).
4. `running` only while a live lease holds the sweep: a writer that stops (Ctrl-C, takeover, repair)
   turns its rows `interrupted`; readers show `interrupted` for `running` rows of an unheld sweep.
5. An unfinished job with curve rows has its checkpoint (rows are stored only up to a checkpoint), so
   it resumes where its curve ends.
6. Optuna: a COMPLETE trial's value(s) equal the mean objective(s) of its seed jobs' rows
   (`jobs.objective_of_row`), its user attributes name its jobs' ids and seeds, and each job row names
   its Optuna trial number; no trial stays RUNNING once `resume` has ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from orchestrator import budgets, lease, store
from orchestrator.jobs import Job, expected_jobs, objective_of_row, optuna_jobs, outcome_from_curve
from orchestrator.spec import SweepSpec
from trainers.metrics import (
    CENSORED,
    CIRCUIT_FRACTION,
    EVENTS,
    GENERALIZE_95_ACC,
    GENERALIZE_ACC,
    MEMORIZE_ACC,
    METRICS,
)

JOURNAL_FILE = "optuna.journal"


def journal_path(root: Any, name: str) -> str:
    return f"{store.sweep_dir(root, name)}/{JOURNAL_FILE}"


def owed_jobs(root: Any, spec: SweepSpec) -> list[Job]:
    """Every job the sweep owes so far (Optuna: those of the trials proposed so far)."""
    if spec.method != "optuna":
        return expected_jobs(spec)
    study = _study(root, spec)
    if study is None:
        return []
    return [job for t in study.get_trials(deepcopy=False) for job in optuna_jobs(spec, t.number, t.params)]


def _study(root: Any, spec: SweepSpec):
    from orchestrator.optuna_search import open_study

    if store.read_sweep_file(root, spec.name, JOURNAL_FILE) is None:
        return None
    try:
        return open_study(spec, journal_path(root, spec.name), create=False)
    except KeyError:  # a journal without the study yet
        return None


def rows(root: Any, name: str) -> pl.DataFrame:
    if name not in store.sweeps(root):
        return pl.DataFrame(schema=store.TRIAL_SCHEMA)
    return store.collect(lambda: store.trials(root, [name]))


def _ended_rows(root: Any, name: str) -> pl.DataFrame:
    """The ended rows' (trial_id, status, censored, max_steps), reading only those columns (10,000 row
    files: ~50 MB, not ~600)."""
    if name not in store.sweeps(root):
        return pl.DataFrame(schema={k: store.TRIAL_SCHEMA[k] for k in ("trial_id", "status", "censored",
                                                                        "max_steps")})
    return store.collect(lambda: store.trials(root, [name]).select("trial_id", "status", "censored", "max_steps")
                         .filter(pl.col("status").is_in(list(store.ENDED))))


def _budgeted(jobs: list[Job], budget: dict[str, int]) -> list[Job]:
    """The jobs with the budgets extension rounds gave them (orchestrator.budgets)."""
    if not budget:
        return jobs
    return [replace(job, max_steps=budget[job.job_id]) if job.job_id in budget else job for job in jobs]


@dataclass
class Plan:
    n_owed: int  # jobs owed (Optuna: including those of the proposals still to make)
    pending: list[Job]  # grid/random: owed jobs not ended
    optuna_unfinished: int = 0  # Optuna trials RUNNING in the journal
    optuna_to_ask: int = 0  # Optuna trials still to propose

    @property
    def complete(self) -> bool:
        return not self.pending and not self.optuna_unfinished and not self.optuna_to_ask


def plan(root: Any, spec: SweepSpec) -> Plan:
    """What a run must still do: owed jobs not ended, and jobs an extension round owes a larger budget."""
    ended = _ended_rows(root, spec.name)
    if spec.method != "optuna":
        budget = budgets.targets(root, spec.name)
        owed = _budgeted(expected_jobs(spec), budget)
        rows_by_id = {row["trial_id"]: row for row in ended.iter_rows(named=True)}
        pending = [job for job in owed if job.job_id not in rows_by_id
                   or budgets.owes_extension(rows_by_id[job.job_id], job.max_steps)]
        return Plan(len(owed), pending)
    study = _study(root, spec)
    from orchestrator.optuna_search import unfinished_proposals

    proposed = 0 if study is None else len(study.trials)
    unfinished = [] if study is None else unfinished_proposals(study)
    return Plan(spec.n_jobs, [], len(unfinished), max(0, (spec.num_samples or 0) - proposed))


# --- check ---

@dataclass(frozen=True)
class Violation:
    kind: str  # missing | duplicate_row | duplicate_step | contradicts_curve | orphan_running | no_checkpoint
    #            | unexpected_row | optuna_running | optuna_value | optuna_attrs | optuna_row
    job: str | None  # the job's trial_id (or the Optuna trial, as `optuna:<number>`)
    message: str
    repairable: bool  # fixable by `check --repair` without training; else `resume` fixes it

    def line(self) -> str:
        return f"{self.kind} {self.job or '-'}: {self.message}"


@dataclass
class Report:
    sweep: str
    violations: list[Violation] = field(default_factory=list)
    holder: str | None = None  # the live writer, if any

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "ok": self.ok, "writer": self.holder,
                "violations": [v.__dict__ for v in self.violations]}


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def check(root: Any, spec: SweepSpec, holding_lease: bool = False) -> Report:
    """Every invariant in the module docstring, each violation naming its job. `holding_lease`: the caller
    holds the sweep's lease (`check --repair`), so no other writer is running."""
    name = spec.name
    holder = None if holding_lease or store.ResultsRoot.of(root).remote else lease.live_holder(
        store.sweep_dir(root, name))
    report = Report(name, holder=None if holder is None else lease.describe(holder))
    out = report.violations
    table = rows(root, name)
    by_id = {row["trial_id"]: row for row in table.iter_rows(named=True)}
    owed = owed_jobs(root, spec)
    owed_ids = {job.job_id for job in owed}
    live = holder is not None
    budget = budgets.targets(root, name) if spec.method != "optuna" else {}

    for job in owed:
        row = by_id.get(job.job_id)
        if row is None or row["status"] not in store.ENDED:
            if not live:
                status = "no row" if row is None else f"row is {row['status']}"
                out.append(Violation("missing", job.job_id, f"owed but not ended ({status}); run `resume`", False))
        elif budgets.owes_extension(row, budget.get(job.job_id)) and not live:
            out.append(Violation("missing", job.job_id, f"owed an extension to {budget[job.job_id]} steps (row ended"
                                 f" censored at {row['steps_run']}); run `resume`", False))
        elif row["status"] in store.FINAL and row["steps_run"] is not None and row["steps_run"] > row["max_steps"]:
            out.append(Violation("contradicts_curve", job.job_id, f"steps_run {row['steps_run']} is above its "
                                 f"max_steps {row['max_steps']}", False))
    for trial_id in sorted(set(by_id) - owed_ids):
        out.append(Violation("unexpected_row", trial_id, "a row for a job the sweep does not owe", False))

    raw = store.raw_trial_ids(root, name)
    for trial_id, copies in raw.group_by("trial_id").len().filter(pl.col("len") > 1).iter_rows():
        out.append(Violation("duplicate_row", trial_id, f"{copies} stored rows", True))
    duplicates = store.raw_curve_duplicates(root, name)
    for (trial_id,), group in duplicates.group_by("trial_id", maintain_order=True):
        out.append(Violation("duplicate_step", trial_id, f"{group.height} step(s) stored more than once, e.g. "
                             f"step {group['step'][0]}", True))

    derived = _derived_from_curves(root, name)
    final = table.filter(pl.col("status").is_in(list(store.FINAL)))
    compared = final.select("trial_id", *_DERIVED).join(derived, on="trial_id", how="left")
    with_curve = set(derived["trial_id"].to_list())
    for row in compared.iter_rows(named=True):
        if row["trial_id"] not in with_curve:
            out.append(Violation("contradicts_curve", row["trial_id"], "a final row without a curve", False))
            continue
        wrong = [key for key in _DERIVED if not _close(row[key], row[f"{key}_curve"])]
        if wrong:
            shown = ", ".join(f"{k} {row[k]} (curve: {row[k + '_curve']})" for k in wrong[:3])
            out.append(Violation("contradicts_curve", row["trial_id"], f"row disagrees with its curve: {shown}", True))
    checkpointed = store.checkpointed_jobs(root, name)
    for trial_id, row in by_id.items():
        status = row["status"]
        if status == store.RUNNING and not live:
            out.append(Violation("orphan_running", trial_id, "`running` but no live writer holds the sweep", True))
        if status not in store.ENDED and trial_id in with_curve and trial_id not in checkpointed:
            out.append(Violation("no_checkpoint", trial_id, "unfinished with curve rows but no checkpoint: resume "
                                 "would retrain it from step 0", False))

    if spec.method == "optuna":
        _check_optuna(root, spec, by_id, live, out)
    return report


def _check_optuna(root: Any, spec: SweepSpec, by_id: dict[str, dict[str, Any]], live: bool,
                  out: list[Violation]) -> None:
    import optuna

    study = _study(root, spec)
    if study is None:
        if by_id:
            out.append(Violation("optuna_running", None, "rows exist but the Optuna journal has no study", False))
        return
    for trial in study.get_trials(deepcopy=False):
        where = f"optuna:{trial.number}"
        jobs = optuna_jobs(spec, trial.number, trial.params)
        ids = [job.job_id for job in jobs]
        if trial.user_attrs.get("trial_ids") != ids or trial.user_attrs.get("seeds") != [j.seed for j in jobs]:
            out.append(Violation("optuna_attrs", where, f"user attributes do not name its jobs {ids}", False))
        for job in jobs:
            row = by_id.get(job.job_id)
            if row is not None and row.get("optuna_trial") != trial.number:
                out.append(Violation("optuna_row", job.job_id, f"row names Optuna trial {row.get('optuna_trial')},"
                                     f" not {trial.number}", False))
        if trial.state == optuna.trial.TrialState.RUNNING and not live:
            out.append(Violation("optuna_running", where, "proposed but never told; run `resume`", False))
        if trial.state == optuna.trial.TrialState.COMPLETE:
            job_rows = [by_id.get(i) for i in ids]
            if any(r is None or r["status"] not in store.FINAL for r in job_rows):
                out.append(Violation("optuna_value", where, "COMPLETE but not every seed's job has a final row",
                                     False))
                continue
            scores = [objective_of_row(spec, r) for r in job_rows]
            means = [sum(c) / len(c) for c in zip(*scores, strict=True)]
            if not all(_close(a, b) for a, b in zip(trial.values, means, strict=True)):
                out.append(Violation("optuna_value", where, f"value {trial.values} is not the mean objective of its"
                                     f" seed jobs' rows {means}", False))


_DERIVED = ("steps_run", *EVENTS, CENSORED, *METRICS)


def _derived_from_curves(root: Any, name: str) -> pl.DataFrame:
    """Per job, what its stored curve says (as `jobs.outcome_from_curve`, written again in polars so that a
    10,000-job sweep is checked in one pass, and so that `check` does not trust the writer's own code)."""
    if name not in store.sweeps(root):
        return pl.DataFrame(schema={"trial_id": pl.String, **{f"{k}_curve": pl.Float64 for k in _DERIVED}})
    step = pl.col("step")
    memorized = step.filter(pl.col("train_acc") >= MEMORIZE_ACC).min()
    moduli = store.trials(root, [name]).select("trial_id", "p")
    frame = store.collect(lambda: store.curves(root, [name]).join(moduli, on="trial_id", how="left")
                          .sort("trial_id", "step").group_by("trial_id").agg(
        step.max().alias("steps_run"),
        memorized.alias("steps_to_memorize"),
        step.filter(pl.col("val_acc") >= GENERALIZE_ACC).min().alias("steps_to_generalize"),
        step.filter(pl.col("val_acc") >= GENERALIZE_95_ACC).min().alias("steps_to_generalize_95"),
        step.filter((step >= memorized) & (pl.col("restricted_loss")
                                           <= CIRCUIT_FRACTION * pl.col("p").cast(pl.Float64).log())).min()
        .alias("circuit_step"),
        *[pl.col(m).last().alias(m) for m in METRICS],
    ).with_columns(
        (pl.col("steps_to_generalize") - pl.col("steps_to_memorize")).alias("grokking_delay"),
        pl.col("steps_to_generalize").is_null().alias(CENSORED),
    ))
    return frame.select("trial_id", *[pl.col(k).alias(f"{k}_curve") for k in _DERIVED])


# --- repair ---

def repair(root: Any, spec: SweepSpec, report: Report) -> list[str]:
    """Fix what needs no training (call under the lease); returns one line per action."""
    done: list[str] = []
    kinds = {v.kind for v in report.violations}
    if kinds & {"duplicate_row", "duplicate_step"}:
        store.rewrite_sweep_tables(root, spec.name)
        done.append("rewrote the tables without duplicate rows")
    if "orphan_running" in kinds:
        for trial_id in store.mark_interrupted(root, spec.name):
            done.append(f"marked {trial_id} interrupted")
    contradicting = [v.job for v in report.violations if v.kind == "contradicts_curve" and v.repairable]
    if contradicting:
        table = rows(root, spec.name)
        for trial_id in contradicting:
            history = store.collect(lambda t=trial_id: store.curves(root, [spec.name])
                                    .filter(pl.col("trial_id") == t).sort("step")).to_dicts()
            row = table.filter(pl.col("trial_id") == trial_id).row(0, named=True)
            store.replace_trial_row(root, {**row, **outcome_from_curve(history, p=row['p'])})
            done.append(f"rederived {trial_id}'s row from its curve")
    return done
