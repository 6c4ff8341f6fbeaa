"""Running and resuming sweeps: the driver.

`run_sweep` and `resume_sweep` take the sweep's lease (orchestrator.lease: one writer per sweep), ask
`reconcile.plan` what the sweep still owes, and run exactly that as one Ray Tune experiment
(`<root>/sweeps/<name>/tune/run-<k>/`): grid/random jobs grouped into packs (orchestrator.jobs), one Tune
trial per pack; Optuna proposals one Tune trial each, with all their seeds. Tune schedules, places and
retries trials (`max_failures`, node loss); each trial writes its jobs' rows and curves itself
(orchestrator.trainable). Tune's saved state is never read back: what is owed comes from the spec, the
Optuna journal and the store, so a driver killed at any instant loses nothing a `resume` cannot see.
If a run ends with jobs still owed and nothing interrupted it, it runs again over those (a follow-up
pass). Ctrl-C leaves the rows of the jobs it stopped `interrupted`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from orchestrator import UserError, budgets, lease, live_report, reconcile, store, tune_storage
from orchestrator.jobs import make_packs, pack_sizes
from orchestrator.results_root import ResultsRoot
from orchestrator.runtime import RaySession, ray_session
from orchestrator.spec import SweepSpec, load_spec, load_yaml, parse_spec

SPEC_FILE, META_FILE, TUNE_DIR = "spec.yaml", "sweep.json", "tune"
JOURNAL_FILE = reconcile.JOURNAL_FILE
MAX_PASSES = 3  # a run and up to two follow-up passes over jobs a run ended without


@dataclass
class SweepOutcome:
    name: str
    root: str
    n_jobs: int  # jobs the spec owes
    finished: int  # jobs with an ended row (completed, stopped, failed)
    interrupted: bool  # stopped before every job ended (Ctrl-C): `resume` continues it
    fit_s: float  # seconds in Tuner.fit, over every pass
    ray: RaySession | None = None
    table: pl.DataFrame = field(default_factory=pl.DataFrame)
    already_complete: bool = False  # `resume` found nothing owed: Ray was not started
    passes: int = 0
    interrupted_jobs: list[str] = field(default_factory=list)

    @property
    def n_trials(self) -> int:  # jobs (each one `trials` row); kept for scripts written before packs
        return self.n_jobs

    @property
    def resume_command(self) -> str:
        return f"groksweep resume {self.name} --results {self.root}"


def resolve_root(results: str | Path | None) -> str:
    """The results root as an absolute path (or the URI as given)."""
    return ResultsRoot.of(results).uri


def lease_dir(root: str, name: str) -> str:
    return store.sweep_dir(root, store.check_name("sweep", name))


def sweep_exists(root: str, name: str) -> bool:
    return store.read_sweep_file(root, name, META_FILE) is not None


def load_spec_text(text: str, name: str | None = None) -> SweepSpec:
    raw = load_yaml(text)
    if not isinstance(raw, dict):
        raise UserError("a sweep spec is a YAML mapping (name, base, method, parameters, ...)")
    return parse_spec(raw if name is None else {**raw, "name": name})


def load_sweep_spec(root: str, name: str) -> SweepSpec:
    """The spec a sweep was started with (as saved in its folder), under its sweep name."""
    store.check_name("sweep", name)
    text = store.read_sweep_file(root, name, SPEC_FILE)
    if text is None or not sweep_exists(root, name):
        raise store.unknown_sweep(name, root, list_sweep_names(root))
    return load_spec_text(text.decode(), name=name)


def list_sweep_names(root: str) -> list[str]:
    return sorted(set(store.sweep_folders(root)) | set(store.sweeps(root)))


def refuse_untrusted(root: str, name: str) -> None:
    """`resume` restores and runs what the sweep's folder holds (Tune's restore unpickles code), and
    `check --repair` / `rm` rewrite or delete it: refuse a sweep whose files or folders are not this
    user's, are group- or world-writable, or resolve (through a link) outside the results root, and the
    folders above them when another user could swap them. Local roots only (object stores have no owner
    bits)."""
    where = ResultsRoot.of(root)
    if where.remote:
        return
    base = os.path.realpath(where.base)
    uid = os.geteuid()

    def refuse(path: str, why: str, fix: str) -> None:
        raise UserError(f"sweep {name!r}: {path} {why}; refusing to act on files another user could have "
                        f"written ({fix})")

    def check(path: str, info: os.stat_result) -> None:
        if stat.S_ISLNK(info.st_mode):
            real = os.path.realpath(path)
            if real != base and not real.startswith(base + os.sep):
                refuse(path, f"resolves outside the results root (to {real})", "replace the link by the files")
            info = os.stat(path)
        if info.st_uid != uid:
            refuse(path, f"belongs to uid {info.st_uid}, not to you (uid {uid})", "copy what you trust into a "
                   "root of your own")
        if info.st_mode & 0o022 and not (stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX):
            refuse(path, f"is group- or world-writable (mode {stat.S_IMODE(info.st_mode):o})",
                   f"if you trust it: chmod -R go-w {path}")

    for folder in (base, *(f"{base}/{part}" for part in ("sweeps", "trials", "curves"))):
        if os.path.lexists(folder):
            check(folder, os.lstat(folder))
    for top in (f"{base}/sweeps/{name}", f"{base}/trials/{name}", f"{base}/curves/{name}",
                f"{base}/trials/{store.LEGACY}{name}", f"{base}/curves/{store.LEGACY}{name}"):
        if not os.path.lexists(top):
            continue
        check(top, os.lstat(top))
        for directory, folders, files in os.walk(top):
            for entry in (*folders, *files):
                path = os.path.join(directory, entry)
                check(path, os.lstat(path))


def migrate_root(results: str | Path | None = None, notice: Any = None) -> list[str]:
    """Bring every sweep under the root to the current layout and schema (store.migrate_sweep), each
    under its own lease, then mark the root migrated. A sweep another live process writes is skipped
    (with a notice; the root stays unmarked, so the next writer tries again). Returns what changed."""
    root = resolve_root(results)
    changed: list[str] = []
    complete = True
    for name in store.sweeps(root):
        try:
            spec_hash = load_sweep_spec(root, name).spec_hash
        except UserError:  # rows written by `train --results`, or a spec this version cannot read
            spec_hash = None
        try:
            with lease.acquire(lease_dir(root, name), f"migrate {name}", name=name, notice=notice):
                changed += store.migrate_sweep(root, name, spec_hash)
        except lease.LeaseHeld as held:
            (notice or print)(f"migrate: skipped sweep {name!r}: {held}")
            complete = False
    if complete:
        store.mark_migrated(root)
    return changed


def ensure_migrated(root: str, notice: Any = None) -> None:
    """Before a command writes: migrate the root if its mark says it is not at the current schema."""
    if not store.root_migrated(root):
        migrate_root(root, notice)


def refuse_existing(root: str, name: str, overwrite: bool) -> bool:
    """Refuse while another process writes the sweep (LeaseHeld), or when it exists and not `overwrite`
    (a new run would destroy it); True if it exists and is to be replaced."""
    holder = None if ResultsRoot.of(root).remote else lease.live_holder(lease_dir(root, name))
    if holder is not None:
        raise lease.LeaseHeld(f"sweep {name!r} is being written by {lease.describe(holder)}; wait for it to end, "
                              "or stop that process", holder)
    if not (sweep_exists(root, name) or name in store.sweeps(root)):
        return False
    if not overwrite:
        raise UserError(f"sweep {name!r} already exists under {root}: continue it with "
                        f"`groksweep resume {name} --results {root}`, or start it over with --overwrite")
    return True


def _spec_and_text(spec: SweepSpec | str | Path, name: str | None) -> tuple[SweepSpec, str]:
    import yaml

    if isinstance(spec, SweepSpec):
        text = yaml.safe_dump({**spec.raw, "name": name or spec.name}, sort_keys=False)
        return (load_spec_text(text) if name else spec), text
    text = Path(spec).read_text() if Path(spec).is_file() else ""
    return load_spec(spec, name=name), text


def run_sweep(spec: SweepSpec | str | Path, results: str | Path | None = None, address: str | None = None,
              name: str | None = None, overwrite: bool = False, progress: bool = False,
              num_cpus: float | None = None, notice: Any = None) -> SweepOutcome:
    """Run a sweep to the end (or to Ctrl-C: then `interrupted` is True and `resume_sweep` continues it).
    `spec` is a SweepSpec or a spec file; `address` joins a Ray cluster (default: embedded on loopback,
    or the Ray already initialised in this process)."""
    root = resolve_root(results)
    spec, spec_text = _spec_and_text(spec, name)
    if refuse_existing(root, spec.name, overwrite):
        refuse_untrusted(root, spec.name)
    ensure_migrated(root, notice)
    written = False
    try:
        with lease.acquire(lease_dir(root, spec.name), f"sweep {spec.name}", name=spec.name, notice=notice) as held:
            replace = refuse_existing_under_lease(root, spec.name, overwrite)
            with ray_session(address, num_cpus=num_cpus) as session:  # joined first: a refused join writes nothing
                if replace:
                    store.remove_sweep(root, spec.name)
                _write_sweep_files(spec, root, spec_text)
                written = True
                return _drive(spec, root, session, progress, held)
    finally:
        if not written:
            _discard_lease_only_dir(root, spec.name)


def _discard_lease_only_dir(root: str, name: str) -> None:
    """A `sweep` that stopped before writing anything (a refused cluster join) leaves no folder behind:
    only its released lease would be there."""
    directory = ResultsRoot.of(root).local("sweeps", name)
    if directory is None or not directory.is_dir():
        return
    entries = list(directory.iterdir())
    if all(e.name.startswith(("lease.", ".lease.")) for e in entries) and lease.live_holder(str(directory)) is None:
        for entry in entries:
            entry.unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError:
            pass


def refuse_existing_under_lease(root: str, name: str, overwrite: bool) -> bool:
    """The existence check again, now that no other writer can create or delete the sweep."""
    exists = sweep_exists(root, name) or name in store.sweeps(root)
    if exists and not overwrite:
        raise UserError(f"sweep {name!r} already exists under {root}: continue it with "
                        f"`groksweep resume {name} --results {root}`, or start it over with --overwrite")
    return exists


def resume_sweep(name: str, results: str | Path | None = None, address: str | None = None,
                 progress: bool = False, num_cpus: float | None = None, notice: Any = None) -> SweepOutcome:
    """Run what the sweep still owes (reconcile.plan). A complete sweep returns at once, without Ray."""
    root = resolve_root(results)
    spec = load_sweep_spec(root, name)
    refuse_untrusted(root, name)
    ensure_migrated(root, notice)
    with lease.acquire(lease_dir(root, name), f"resume {name}", name=name, notice=notice) as held:
        store.mark_interrupted(root, name)  # rows a dead writer left running
        tune_storage.remove_leftovers(store.sweep_dir(root, name))  # Tune's half-written records, if any
        if reconcile.plan(root, spec).complete and not budgets.due_rounds(root, spec):
            store.compact_sweep(root, name)
            table = reconcile.rows(root, name)
            return SweepOutcome(name=name, root=root, n_jobs=spec.n_jobs, finished=_ended(table),
                                interrupted=False, fit_s=0.0, table=table, already_complete=True)
        with ray_session(address, num_cpus=num_cpus) as session:
            return _drive(spec, root, session, progress, held)


def _ended(table: pl.DataFrame) -> int:
    return table.filter(pl.col("status").is_in(list(store.ENDED))).height if table.height else 0


def _drive(spec: SweepSpec, root: str, session: RaySession | None, progress: bool,
           held: lease.Lease) -> SweepOutcome:
    """Tune runs over what is owed until nothing is, or until something stops them (Ctrl-C, or the lease
    taken over by another process: then this one stops writing)."""
    fit_s, passes, interrupted = 0.0, 0, False
    live_report.start(root, spec.name)  # its own low-priority process; ends when this run's lease does
    try:
        while not interrupted:
            for _ in range(MAX_PASSES):
                plan = reconcile.plan(root, spec)
                if plan.complete:
                    break
                passes += 1
                started = time.perf_counter()
                store.uncompact(root, spec.name, {job.job_id for job in plan.pending if job.max_steps is not None})
                stopped_early = _fit(spec, root, plan, progress, held)
                fit_s += time.perf_counter() - started
                if stopped_early:
                    interrupted = True
                    break
            if interrupted or held.lost or not reconcile.plan(root, spec).complete \
                    or not budgets.start_due_rounds(root, spec):
                break  # a `budget` sweep goes on while a round is due (orchestrator.budgets)
    except KeyboardInterrupt:
        if not held.lost:
            store.mark_interrupted(root, spec.name)
        raise
    if held.lost:
        raise UserError(f"sweep {spec.name!r}: another process took over its lease (this one's heartbeat had "
                        "stopped); this run stopped writing and leaves the sweep to it")
    store.compact_sweep(root, spec.name)  # first: the reads below then open a few files, not one per job
    complete = reconcile.plan(root, spec).complete
    stopped = store.mark_interrupted(root, spec.name) if not complete else []
    table = reconcile.rows(root, spec.name)
    return SweepOutcome(name=spec.name, root=root, n_jobs=spec.n_jobs, finished=_ended(table),
                        interrupted=not complete or interrupted, fit_s=fit_s, ray=session, table=table,
                        passes=passes, interrupted_jobs=stopped)


def _tune_env() -> None:
    """Tune's own console output off (ours is rich), and its per-trial CSV/JSON/TensorBoard loggers off:
    the result store keeps every evaluation, and each logger write costs the driver time per report."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours: _ctrl_c_stops


def _run_name(root: str, name: str) -> str:
    """A new Tune experiment per run, so a run never overwrites the record of another."""
    fs, base = ResultsRoot.of(root).fs, ResultsRoot.of(root).path("sweeps", name, TUNE_DIR)
    import pyarrow.fs as pafs

    runs = [i.base_name for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
            if i.base_name.startswith("run-")]
    return f"run-{len(runs) + 1:03d}"


def _fit(spec: SweepSpec, root: str, plan: reconcile.Plan, progress: bool, held: lease.Lease) -> bool:
    """One Tune experiment over the plan; True when it stopped before its trials ended (Ctrl-C)."""
    from ray import tune

    from orchestrator.callbacks import WATCHED_LEASES, FailedPackCallback, InterruptStopper, ProgressCallback
    from orchestrator.stopping import scheduler
    from orchestrator.trainable import train_pack

    _tune_env()
    optuna = spec.method == "optuna"
    if optuna:
        from orchestrator.optuna_search import make_searcher

        search_alg, _ = make_searcher(spec, reconcile.journal_path(root, spec.name), root)
        n_trials = plan.optuna_unfinished + plan.optuna_to_ask
        packs: list = []
        param_space: dict[str, Any] = {}
        jobs_this_run = n_trials * len(spec.seeds)
    else:
        search_alg = None
        extended = max((job.max_steps for job in plan.pending if job.max_steps is not None), default=None)
        packs = make_packs(plan.pending, pack_sizes(spec, len(plan.pending), max_steps=extended))
        n_trials = 1
        param_space = {"pack": tune.grid_search(list(range(len(packs))))}
        jobs_this_run = len(plan.pending)
    trainable = tune.with_resources(tune.with_parameters(train_pack, spec=spec, root=root, packs=packs),
                                    {"cpu": spec.cpu, "gpu": spec.gpu})
    callbacks: list = [FailedPackCallback(spec, root, packs)]
    if progress:
        callbacks.append(ProgressCallback(spec, plan.n_owed, jobs_this_run, packs=packs))
    storage_path, storage_filesystem = tune_storage.location(store.sweep_dir(root, spec.name))
    stopper = InterruptStopper()
    WATCHED_LEASES[stopper.key] = held
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler(), num_samples=n_trials,
                                    max_concurrent_trials=None if optuna else spec.max_concurrent,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=f"{TUNE_DIR}/{_run_name(root, spec.name)}", storage_path=storage_path,
                                  storage_filesystem=storage_filesystem, verbose=0, callbacks=callbacks, stop=stopper,
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    try:
        with _ctrl_c_stops(stopper):
            tuner.fit()
    finally:
        WATCHED_LEASES.pop(stopper.key, None)
    return stopper.interrupted


@contextmanager
def _ctrl_c_stops(stopper) -> Iterator[None]:
    """The first Ctrl-C stops the Tune experiment gracefully (its trials end, Tuner.fit returns, the
    driver marks what it stopped `interrupted`); a second one raises KeyboardInterrupt at once. Tune's own
    SIGINT handler is off (TUNE_DISABLE_SIGINT_HANDLER), so groksweep knows that it was interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def first(sig: int, frame: Any) -> None:
        stopper.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_sweep_files(spec: SweepSpec, root: str, spec_text: str) -> None:
    store.mark_new_root(root)
    store.write_sweep_file(root, spec.name, SPEC_FILE, spec_text.encode())
    meta = {"name": spec.name, "method": spec.method, "n_jobs": spec.n_jobs, "n_trials": spec.n_jobs,
            "created": time.time(), "host": socket.gethostname()}
    store.write_sweep_file(root, spec.name, META_FILE, json.dumps(meta, indent=1).encode())


def extend_sweep(name: str, max_steps: int, where: str | None = None, rerun_missing: bool = False,
                 results: str | Path | None = None, address: str | None = None, progress: bool = False,
                 num_cpus: float | None = None, notice: Any = None) -> tuple[budgets.Selection, SweepOutcome]:
    """Continue the sweep's censored jobs (those `where` selects) from their checkpoints up to `max_steps`,
    under the lease, as a run like `resume` (which finishes an interrupted extension). Jobs without a
    checkpoint rerun from step 0 with `rerun_missing`, else they are left (Selection.missing)."""
    root = resolve_root(results)
    spec = load_sweep_spec(root, name)
    refuse_untrusted(root, name)  # what runs is read from the sweep's folder, as for `resume`
    budgets.select(root, spec, max_steps, where, rerun_missing)  # refusals before the lease: nothing written
    ensure_migrated(root, notice)
    with lease.acquire(lease_dir(root, name), f"extend {name}", name=name, notice=notice) as held:
        selection = budgets.select(root, spec, max_steps, where, rerun_missing)  # again, as the only writer
        if selection.to_run:
            budgets.record_round(root, name, max_steps, selection.jobs,
                                 selection.missing if rerun_missing else [], reason="extend", where=where)
        store.mark_interrupted(root, name)
        tune_storage.remove_leftovers(store.sweep_dir(root, name))
        if reconcile.plan(root, spec).complete:
            table = reconcile.rows(root, name)
            return selection, SweepOutcome(name=name, root=root, n_jobs=spec.n_jobs, finished=_ended(table),
                                           interrupted=False, fit_s=0.0, table=table, already_complete=True)
        with ray_session(address, num_cpus=num_cpus) as session:
            return selection, _drive(spec, root, session, progress, held)


def remove_sweep(name: str, results: str | Path | None = None, notice: Any = None) -> None:
    """Delete a sweep (tables, Tune records, journal, logs, checkpoints), under its lease."""
    root = resolve_root(results)
    store.check_name("sweep", name)
    if name not in list_sweep_names(root):
        raise store.unknown_sweep(name, root, list_sweep_names(root))
    refuse_untrusted(root, name)
    directory = lease_dir(root, name)
    with lease.acquire(directory, f"rm {name}", name=name, notice=notice) as held:
        store.remove_sweep(root, name)
        held.release()
    store.remove_sweep(root, name, keep_lease=False)
    if not ResultsRoot.of(root).remote:
        try:
            os.rmdir(directory)
        except OSError:
            pass


def check_sweep(name: str, results: str | Path | None = None, repair: bool = False,
                notice: Any = None) -> tuple[reconcile.Report, list[str]]:
    """`check`: the sweep's invariants (reconcile); with `repair`, under the lease, fix what needs no
    training and check again. Returns (the report after any repair, what was repaired)."""
    root = resolve_root(results)
    spec = load_sweep_spec(root, name)
    if repair:
        refuse_untrusted(root, name)
    report = reconcile.check(root, spec)
    if not repair or report.ok:
        return report, []
    ensure_migrated(root, notice)
    with lease.acquire(lease_dir(root, name), f"check --repair {name}", name=name, notice=notice):
        done = reconcile.repair(root, spec, reconcile.check(root, spec, holding_lease=True))
    return reconcile.check(root, spec), done  # checked again once no writer holds it
