"""Reading a sweep back for people: status, ls, logs and the per-configuration summary. Ray-free.

Statuses tell the truth: a `running` row of a sweep that no live lease holds is shown `interrupted`
(its writer is gone); the stored row changes at Ctrl-C, at a takeover, or with `check --repair`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from orchestrator import UserError, lease, reconcile, store
from orchestrator.results_root import ResultsRoot
from orchestrator.spec import SweepSpec
from orchestrator.sweep import META_FILE, lease_dir, list_sweep_names, load_sweep_spec, resolve_root
from trainers.metrics import CENSORED


def writer(root: str, name: str) -> lease.LeaseRecord | None:
    """The live process writing the sweep, if any (remote roots: not known)."""
    if ResultsRoot.of(root).remote:
        return None
    return lease.live_holder(lease_dir(root, name))


def trials_table(root: str, name: str) -> pl.DataFrame:
    """The sweep's rows, with `running` shown as `interrupted` when no live writer holds the sweep."""
    return shown_status(root, name, reconcile.rows(root, name).sort("trial_id"))


def shown_status(root: str, name: str, table: pl.DataFrame) -> pl.DataFrame:
    """The sweep's stored rows `table`, with `running` shown as `interrupted` when no live writer holds it."""
    if table.height and writer(root, name) is None:
        table = table.with_columns(pl.when(pl.col("status") == store.RUNNING).then(pl.lit(store.INTERRUPTED))
                                   .otherwise(pl.col("status")).alias("status"))
    return table


def summary(spec: SweepSpec, table: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration (the searched fields): runs, grokked, censored, failed, and the median
    steps to memorise / generalise over the runs that got there."""
    if table.height == 0:
        return table
    keys = [k for k, p in spec.parameters.items() if p.kind != "value"] or ["sweep"]
    grokked = (pl.col("status").is_in(list(store.FINAL))) & (pl.col(CENSORED) == False)  # noqa: E712
    return (table.group_by(keys).agg(
        pl.len().alias("runs"),
        grokked.sum().alias("grokked"),
        (pl.col(CENSORED) == True).sum().alias("censored"),  # noqa: E712
        (pl.col("status") == store.FAILED).sum().alias("failed"),
        pl.col("steps_to_memorize").median().alias("median_steps_to_memorize"),
        pl.col("steps_to_generalize").median().alias("median_steps_to_generalize"),
    ).sort(keys))


def sweeps_overview(results: str | Path | None = None) -> pl.DataFrame:
    """One row per sweep: method, jobs owed, and how many are running / completed / failed / ..."""
    root = resolve_root(results)
    rows = []
    for name in list_sweep_names(root):
        meta = json.loads((store.read_sweep_file(root, name, META_FILE) or b"{}").decode())
        table = trials_table(root, name)
        statuses = table["status"].to_list() if table.height else []
        rows.append({"sweep": name, "method": meta.get("method"), "trials": meta.get("n_jobs", meta.get("n_trials")),
                     **{status: statuses.count(status) for status in store.STATUSES},
                     "grokked": table.filter(pl.col(CENSORED) == False).height if table.height else 0,  # noqa: E712
                     "writer": None if writer(root, name) is None else f"pid {writer(root, name).pid}"})
    counts = {name: pl.Int64 for name in (*store.STATUSES, "grokked")}
    return pl.DataFrame(rows, schema={"sweep": pl.String, "method": pl.String, "trials": pl.Int64, **counts,
                                      "writer": pl.String})


def sweep_status(name: str, results: str | Path | None = None) -> tuple[SweepSpec, pl.DataFrame]:
    """The sweep's spec and its jobs (one row each: id, searched fields, seed, status, events)."""
    root = resolve_root(results)
    spec = load_sweep_spec(root, name)
    return spec, trials_table(root, name)


def trial_log(name: str, trial_id: str, results: str | Path | None = None) -> str:
    """A job's traceback (if it failed) and its log, on local and remote roots alike."""
    root = resolve_root(results)
    load_sweep_spec(root, name)  # a clear error for an unknown sweep
    store.check_name("trial id", trial_id)
    error, log = store.read_job_log(root, name, trial_id)
    parts = []
    if error is not None:
        parts.append(f"== traceback ==\n{error}")
    if log is not None:
        parts.append(f"== log ==\n{log}")
    if not parts:
        known = store.logged_jobs(root, name)
        raise UserError(f"no log for job {trial_id!r} in sweep {name!r}; jobs: {', '.join(known[:20]) or 'none'}"
                        f"{' ...' if len(known) > 20 else ''}")
    return "\n".join(parts)


def dry_run(spec: SweepSpec) -> list[dict[str, Any]]:
    """The jobs the sweep would run, with their ids and packs (optuna: its space and count)."""
    from orchestrator.jobs import expected_jobs, make_packs, pack_sizes

    if spec.method == "optuna":
        space = {p.name: (p.kind, list(p.values) if p.values else [p.low, p.high]) for p in spec.parameters.values()}
        return [{"configurations": spec.num_samples, "seeds": list(spec.seeds), "sampler": spec.sampler,
                 "space": space}]
    packs = make_packs(expected_jobs(spec), pack_sizes(spec, spec.n_jobs))
    return [{"trial_id": job.job_id, **job.values, "seed": job.seed, "pack": i} for i, pack in enumerate(packs)
            for job in pack]
