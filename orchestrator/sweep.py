"""Sweeps on Ray Tune: the Tuner, the trainable adapter over `trainers.run`, seeds, Optuna, resume.

Every (configuration, seed) is one Tune trial and one trial row. Grid and random sweeps expand their
configurations up front (`spec.points`) and grid-search over (point index, seed). Optuna sweeps wrap
OptunaSearch in `SeedRepeater`: each configuration Optuna proposes runs once per seed, as separate Tune
trials that can run in parallel and resume on their own, and Optuna is told the mean objective over
the seeds when the last one ends -- one Optuna trial per configuration, all COMPLETE (censored runs
count at their penalty).

A sweep's own files: <results>/sweeps/<name>/{spec.yaml, sweep.json, tune/, optuna.journal, logs/}.
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

import polars as pl

from orchestrator import UserError, store, trainer_process, tune_storage
from orchestrator.runtime import RaySession, ray_session
from orchestrator.spec import (
    CHECKPOINTED,
    CURVE,
    PRUNED,
    SweepSpec,
    load_spec,
    objectives,
    optuna_space,
    points,
    trial_train_config,
)
from orchestrator.trainer_process import Batch, Job, Started
from trainers.metrics import CENSORED

SPEC_FILE, META_FILE, TUNE_DIR, JOURNAL_FILE, LOG_DIR = "spec.yaml", "sweep.json", "tune", "optuna.journal", "logs"


# --- paths ---

def _is_remote(root: str) -> bool:
    return "://" in root


def _filesystem(root: str):
    """(pyarrow filesystem, base path) of a results root: local or a URI (s3://, gs://)."""
    import pyarrow.fs as pafs

    if _is_remote(root):
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), str(Path(root).resolve())


def resolve_root(results: str | Path | None) -> str:
    """The results root as an absolute path (or the URI as given)."""
    root = str(results) if results is not None else store.default_root()
    return root if _is_remote(root) else str(Path(root).resolve())


def sweep_exists(root: str, name: str) -> bool:
    import pyarrow.fs as pafs

    fs, base = _filesystem(root)
    return fs.get_file_info(f"{base}/sweeps/{name}/{META_FILE}").type == pafs.FileType.File


def _local_log_dir(root: str, name: str) -> str | None:
    return None if _is_remote(root) else str(Path(store.sweep_dir(root, name)) / LOG_DIR)


def remove_sweep_files(root: str, name: str) -> None:
    """Delete a sweep's tables and its own files (the results root itself stays)."""
    import pyarrow.fs as pafs

    store.check_name("sweep", name)
    fs, base = _filesystem(root)
    for path in (f"{base}/trials/sweep={name}", f"{base}/curves/sweep={name}", f"{base}/sweeps/{name}"):
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)


# --- the trainable: a thin adapter over trainers.run ---

def train_trial(config: dict[str, Any], spec: SweepSpec, log_dir: str | None = None) -> None:
    """One Tune trial: resume from Tune's checkpoint if any, send the evaluations in batches (see
    `trainer_process`), checkpoint every `spec.checkpoint_every` evaluations but at most one per
    `spec.checkpoint_every_s` (and one at the end); Tune keeps only the last one. The training itself
    runs in this actor's trainer process."""
    entered = time.perf_counter()
    import ray
    from ray import tune

    train_config = trial_train_config(spec, config, points(spec))
    trial_id = tune.get_context().get_trial_id()
    if not ray.get_gpu_ids():  # Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for gpu: 0 trials
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    work = Path(tempfile.mkdtemp(prefix=f"groksweep-{trial_id}-"))
    log = None
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(log_dir) / f"{trial_id}.log", "a")  # noqa: SIM115 - closed below
    trainer, finished = trainer_process.shared(), False
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            restored.to_directory(str(work))  # the trainer resumes from a checkpoint copied into its dir
        job = Job(config=train_config.to_dict(), checkpoint_dir=str(work), checkpoint_every=spec.checkpoint_every,
                  checkpoint_every_s=spec.checkpoint_every_s, report_every_s=spec.report_every_s,
                  prune_not_memorized_by=spec.prune_not_memorized_by)
        device = "?"
        for message in trainer.run(job):
            if isinstance(message, Started):
                device = message.device
                if log:
                    log.write(f"# trial {trial_id} on {device}, {'resumed' if restored else 'started'} "
                              f"{time.ctime()} (trainer pid {trainer.process.pid})\n"
                              f"# config {json.dumps(job.config)}\n")
            elif isinstance(message, Batch):
                if log:
                    _log_batch(log, message)
                metrics = {**message.metrics, **message.events, "step": message.step, "device": device,
                           CURVE: message.rows,
                           **objectives(spec, message.events, message.metrics, train_config.max_steps)}
                if message.done or message.pruned:
                    metrics[CENSORED] = message.events["steps_to_generalize"] is None
                if message.pruned:
                    metrics[PRUNED] = True
                if message.checkpoint is not None:
                    metrics[CHECKPOINTED] = True
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(message.checkpoint))
                    trainer.release()
                else:
                    tune.report(metrics)
            elif log:
                log.write(f"# done: steps {message.steps_run} censored {message.censored} events {message.events}; "
                          f"in this trial {time.perf_counter() - entered:.3f} s, training {message.wall_s:.3f} s\n")
        finished = True
    finally:
        if not finished:  # failed, or stopped by Tune mid-run: the child's state is unknown
            trainer_process.discard_shared()
        if log:
            log.close()
        shutil.rmtree(work, ignore_errors=True)


def _log_batch(log, batch: Batch) -> None:
    for row in batch.rows:
        log.write(f"step {row['step']} train_acc {row['train_acc']:.4f} val_acc {row['val_acc']:.4f}"
                  f" train_loss {row['train_loss']:.4g} val_loss {row['val_loss']:.4g}\n")
    if batch.pruned:
        log.write(f"step {batch.step} PRUNED: not memorised\n")
    log.flush()


# --- Optuna: every proposed configuration once per seed ---

def _make_seed_repeater():
    from ray.tune.search import Searcher

    class SeedRepeater(Searcher):
        """Each configuration the wrapped searcher proposes runs once per seed (separate Tune trials);
        the searcher is told the mean of each objective over the seeds when the last one ends. Unlike
        Ray's Repeater it handles metric lists and saves its own groups, so resume keeps them."""

        def __init__(self, searcher: Searcher, seeds: list[int]):
            self.searcher = searcher  # the attribute name Tune's save/restore walks through
            self.seeds = list(seeds)
            self.groups: dict[str, dict[str, Any]] = {}  # primary trial id -> config, members, scores
            self.member_of: dict[str, str] = {}  # trial id -> primary trial id
            self.open: str | None = None
            super().__init__(metric=searcher.metric, mode=searcher.mode)

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return self.searcher.set_search_properties(metric, mode, config, **spec)

        def suggest(self, trial_id: str):
            group = self.groups.get(self.open) if self.open else None
            if group is None or len(group["members"]) == len(self.seeds):
                config = self.searcher.suggest(trial_id)
                if config is None or config == Searcher.FINISHED:
                    return config
                self.open = trial_id
                group = self.groups[trial_id] = {"config": dict(config), "members": [], "scores": {}}
            group["members"].append(trial_id)
            self.member_of[trial_id] = self.open
            return {**group["config"], "seed": self.seeds[len(group["members"]) - 1]}

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            pass  # intermediate values would mix seeds; Optuna's pruner is off in Tune anyway

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            primary = self.member_of.get(trial_id)
            if primary is None:
                return
            group = self.groups[primary]
            keys = self.metric if isinstance(self.metric, list) else [self.metric]
            ok = result is not None and not error and all(k in result for k in keys)
            group["scores"][trial_id] = [float(result[k]) for k in keys] if ok else None
            if len(group["scores"]) < len(self.seeds):
                return
            scores = [s for s in group["scores"].values() if s is not None]
            if not scores:
                self.searcher.on_trial_complete(primary, result=None, error=True)
                return
            means = [sum(column) / len(column) for column in zip(*scores, strict=True)]
            mean_result = dict(zip(keys, means, strict=True))
            self.searcher.on_trial_complete(primary, result=mean_result, error=False)

        def get_state(self) -> dict:
            return {k: v for k, v in self.__dict__.items() if k != "searcher"}

        def set_state(self, state: dict) -> None:
            self.__dict__.update(state)

        def save(self, checkpoint_path: str) -> None:
            self.searcher.save(checkpoint_path)

        def restore(self, checkpoint_path: str) -> None:
            self.searcher.restore(checkpoint_path)

    return SeedRepeater


def optuna_sampler(spec: SweepSpec):
    import optuna

    samplers = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "random": optuna.samplers.RandomSampler,
                "nsga2": optuna.samplers.NSGAIISampler}
    return samplers[spec.sampler](seed=spec.search_seed)


def journal_storage(path: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(path))


def _search_alg(spec: SweepSpec, sweep_path: str):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    keys = spec.search_metric_keys()
    modes = [m.mode for m in spec.metrics]
    optuna_search = OptunaSearch(
        space=optuna_space(spec), metric=keys if spec.multi_objective else keys[0],
        mode=modes if spec.multi_objective else modes[0], sampler=optuna_sampler(spec),
        storage=journal_storage(f"{sweep_path}/{JOURNAL_FILE}"), study_name=spec.name)
    seed_repeater = _make_seed_repeater()(optuna_search, list(spec.seeds))
    return ConcurrencyLimiter(seed_repeater, max_concurrent=spec.max_concurrent)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    if spec.method == "optuna":
        return {}  # the searcher proposes every value (and SeedRepeater the seed)
    return {"point": tune.grid_search(list(range(len(points(spec))))), "seed": tune.grid_search(list(spec.seeds))}


# --- the Tuner ---

@dataclass
class SweepOutcome:
    name: str
    root: str
    n_trials: int  # trials the spec asks for
    finished: int  # trials with a final or failed row
    interrupted: bool  # stopped before every trial ended (Ctrl-C): `resume` continues it
    fit_s: float  # seconds in Tuner.fit
    ray: RaySession | None = None
    table: pl.DataFrame = field(default_factory=pl.DataFrame)

    @property
    def resume_command(self) -> str:
        return f"groksweep resume {self.name} --results {self.root}"


def _trainable(spec: SweepSpec, root: str):
    from ray import tune

    trainable = tune.with_parameters(train_trial, spec=spec, log_dir=_local_log_dir(root, spec.name))
    return tune.with_resources(trainable, {"cpu": spec.cpu, "gpu": spec.gpu})


def _callbacks(spec: SweepSpec, root: str, progress: bool) -> list:
    from orchestrator.callbacks import ProgressCallback, StoreCallback

    callbacks = [StoreCallback(spec, root)]
    if progress:
        callbacks.append(ProgressCallback(spec, spec.n_trials))
    return callbacks


def _tune_env() -> None:
    """Tune's own console output off (ours is rich), and its per-trial CSV/JSON/TensorBoard loggers off:
    the result store keeps every evaluation, and each logger write costs the driver time per report."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def _tuner(spec: SweepSpec, root: str, progress: bool):
    from ray import tune

    _tune_env()
    from orchestrator.stopping import scheduler

    optuna = spec.method == "optuna"
    tune_config = tune.TuneConfig(
        search_alg=_search_alg(spec, store.sweep_dir(root, spec.name)) if optuna else None,
        scheduler=scheduler(),
        num_samples=(spec.num_samples or 0) * len(spec.seeds) if optuna else 1,
        max_concurrent_trials=None if optuna else spec.max_concurrent,
        reuse_actors=os.environ.get("GS_REUSE", "1") == "1",
    )
    storage_path, storage_filesystem = tune_storage.location(store.sweep_dir(root, spec.name))
    run_config = tune.RunConfig(
        name=TUNE_DIR, storage_path=storage_path, storage_filesystem=storage_filesystem, verbose=0,
        callbacks=_callbacks(spec, root, progress),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # only the last checkpoint of each trial
    )
    return tune.Tuner(_trainable(spec, root), param_space=param_space(spec), tune_config=tune_config,
                      run_config=run_config)


def _write_sweep_files(spec: SweepSpec, root: str, spec_text: str) -> None:
    fs, base = _filesystem(root)
    directory = f"{base}/sweeps/{spec.name}"
    fs.create_dir(directory, recursive=True)
    with fs.open_output_stream(f"{directory}/{SPEC_FILE}") as out:
        out.write(spec_text.encode())
    meta = {"name": spec.name, "method": spec.method, "n_trials": spec.n_trials, "created": time.time()}
    with fs.open_output_stream(f"{directory}/{META_FILE}") as out:
        out.write(json.dumps(meta, indent=1).encode())


def load_sweep_spec(root: str, name: str) -> SweepSpec:
    """The spec a sweep was started with (as saved in its folder), under its sweep name."""
    if not sweep_exists(root, name):
        known = ", ".join(list_sweep_names(root)) or "none"
        raise UserError(f"no sweep named {name!r} under {root} (sweeps there: {known})")
    fs, base = _filesystem(root)
    with fs.open_input_stream(f"{base}/sweeps/{name}/{SPEC_FILE}") as f:
        text = f.read().decode()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        tmp.write(text)
    try:
        return load_spec(tmp.name, name=name)
    finally:
        os.unlink(tmp.name)


def _fit(tuner, spec: SweepSpec, root: str, session: RaySession | None) -> SweepOutcome:
    started = time.perf_counter()
    tuner.fit()
    fit_s = time.perf_counter() - started
    store.compact_sweep(root, spec.name)  # finished trials: one trial file and one curve file
    table = trials_table(root, spec.name)
    done = table.filter(pl.col("status") != store.RUNNING).height if table.height else 0
    if done >= spec.n_trials:
        _drop_stale_checkpoints(root, spec.name)
    return SweepOutcome(name=spec.name, root=root, n_trials=spec.n_trials, finished=done,
                        interrupted=done < spec.n_trials, fit_s=fit_s, ray=session, table=table)


def run_sweep(spec: SweepSpec | str | Path, results: str | Path | None = None, address: str | None = None,
              name: str | None = None, overwrite: bool = False, progress: bool = False,
              num_cpus: float | None = None) -> SweepOutcome:
    """Run a sweep to the end (or to Ctrl-C: then `interrupted` is True and `resume_sweep` continues it).
    `spec` is a SweepSpec or a spec file; `address` joins a Ray cluster (default: embedded on loopback,
    or the Ray already initialised in this process)."""
    root = resolve_root(results)
    if isinstance(spec, SweepSpec):
        import yaml

        spec_text = yaml.safe_dump({**spec.raw, "name": name or spec.name}, sort_keys=False)
        spec = load_spec_text(spec_text) if name else spec
    else:
        spec_text = Path(spec).read_text() if Path(spec).is_file() else ""
        spec = load_spec(spec, name=name)
    replace = refuse_existing(root, spec.name, overwrite)
    with ray_session(address, num_cpus=num_cpus) as session:  # joined first: a refused join writes nothing
        if replace:
            remove_sweep_files(root, spec.name)
        _write_sweep_files(spec, root, spec_text)
        return _fit(_tuner(spec, root, progress), spec, root, session)


def refuse_existing(root: str, name: str, overwrite: bool) -> bool:
    """UserError if sweep `name` exists and not `overwrite` (a new run would destroy the state needed to
    resume it); True if it exists and is to be replaced."""
    if not (sweep_exists(root, name) or _has_tables(root, name)):
        return False
    if not overwrite:
        raise UserError(f"sweep {name!r} already exists under {root}: continue it with "
                        f"`groksweep resume {name} --results {root}`, or start it over with --overwrite")
    return True


def load_spec_text(text: str) -> SweepSpec:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        tmp.write(text)
    try:
        return load_spec(tmp.name)
    finally:
        os.unlink(tmp.name)


def _has_tables(root: str, name: str) -> bool:
    return name in store.sweeps(root)


def _checkpoint_numbers(fs, trial_dir: str) -> list[int]:
    import pyarrow.fs as pafs

    return sorted(int(info.base_name.removeprefix("checkpoint_"))
                  for info in fs.get_file_info(pafs.FileSelector(trial_dir))
                  if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"))


def _trial_dirs(fs, tune_dir: str) -> list:
    import pyarrow.fs as pafs

    return [info for info in fs.get_file_info(pafs.FileSelector(tune_dir, allow_not_found=True))
            if info.type == pafs.FileType.Directory and info.base_name.startswith("train_trial_")]


def _restore_deleted_checkpoints(root: str, name: str) -> None:
    """Tune registers a trial's new checkpoint and deletes the previous ones (num_to_keep=1) before its
    experiment-state snapshot catches up, so a driver killed in between leaves a state naming a checkpoint
    that is gone, and restoring that trial fails. For each unfinished trial, put a copy of its last
    registered checkpoint under every missing lower number: the trainer resumes from that newer state,
    whose curve rows the store already holds. `_fit` drops the copies once the sweep has finished."""
    import pyarrow.fs as pafs

    fs, base = _filesystem(root)
    final = store.final_trial_ids(root, name)
    for trial_dir in _trial_dirs(fs, f"{base}/sweeps/{name}/{TUNE_DIR}"):
        # trial directories are named train_trial_<trial_id>_<index>_<params>_<time>
        if any(f"_{t}_" in trial_dir.base_name for t in final):
            continue
        numbers = _checkpoint_numbers(fs, trial_dir.path)
        if not numbers:
            continue
        # The lowest one left is the last the driver registered; any above it were written by the trial
        # but never reached the driver (nor their curve rows the store).
        registered = f"{trial_dir.path}/checkpoint_{numbers[0]:06d}"
        for missing in range(numbers[0]):
            # copied whole under a name Tune ignores, then renamed: a resume killed here leaves no half copy
            partial = f"{trial_dir.path}/{tune_storage.TEMP_MARK}checkpoint_{missing:06d}"
            if fs.get_file_info(partial).type == pafs.FileType.Directory:
                fs.delete_dir(partial)
            fs.create_dir(partial, recursive=True)
            pafs.copy_files(registered, partial, source_filesystem=fs, destination_filesystem=fs)
            fs.move(partial, f"{trial_dir.path}/checkpoint_{missing:06d}")


def _drop_stale_checkpoints(root: str, name: str) -> None:
    """Once every trial has ended, only each trial's newest checkpoint can be asked for again."""
    fs, base = _filesystem(root)
    for trial_dir in _trial_dirs(fs, f"{base}/sweeps/{name}/{TUNE_DIR}"):
        for number in _checkpoint_numbers(fs, trial_dir.path)[:-1]:
            fs.delete_dir(f"{trial_dir.path}/checkpoint_{number:06d}")


def resume_sweep(name: str, results: str | Path | None = None, address: str | None = None,
                 progress: bool = False, num_cpus: float | None = None) -> SweepOutcome:
    """Continue a sweep: unfinished and errored trials resume from their last checkpoints, the searcher
    state is restored, finished trials are not rerun."""
    from ray import tune

    root = resolve_root(results)
    spec = load_sweep_spec(root, name)
    sweep_path, storage_filesystem = tune_storage.location(store.sweep_dir(root, name))
    path = f"{sweep_path}/{TUNE_DIR}"
    _tune_env()
    with ray_session(address, num_cpus=num_cpus) as session:
        if not tune.Tuner.can_restore(path, storage_filesystem=storage_filesystem):
            raise UserError(f"sweep {name!r} has no Tune state to resume at {path}; start it again with "
                            f"`groksweep sweep SPEC --name {name} --overwrite`")
        _restore_deleted_checkpoints(root, name)
        tune_storage.remove_leftovers(path)
        tuner = tune.Tuner.restore(path, trainable=_trainable(spec, root), resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=storage_filesystem)
        # callbacks come back pickled from tuner.pkl: give them fresh state
        tuner._local_tuner.get_run_config().callbacks = _callbacks(spec, root, progress)
        return _fit(tuner, spec, root, session)


# --- reading a sweep back ---

def trials_table(root: str, name: str) -> pl.DataFrame:
    if name not in store.sweeps(root):
        return pl.DataFrame()
    return store.collect(lambda: store.trials(root, [name]).sort("trial_id"))


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


def list_sweep_names(root: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, base = _filesystem(root)
    selector = pafs.FileSelector(f"{base}/sweeps", allow_not_found=True)
    names = {info.base_name for info in fs.get_file_info(selector) if info.type == pafs.FileType.Directory}
    return sorted(names | set(store.sweeps(root)))


def sweeps_overview(results: str | Path | None = None) -> pl.DataFrame:
    """One row per sweep: method, trials asked for, and how many are running / completed / failed."""
    root = resolve_root(results)
    rows = []
    for name in list_sweep_names(root):
        meta: dict[str, Any] = {}
        if sweep_exists(root, name):
            fs, base = _filesystem(root)
            with fs.open_input_stream(f"{base}/sweeps/{name}/{META_FILE}") as f:
                meta = json.loads(f.read().decode())
        table = trials_table(root, name)
        statuses = table["status"].to_list() if table.height else []
        rows.append({"sweep": name, "method": meta.get("method"), "trials": meta.get("n_trials"),
                     **{status: statuses.count(status) for status in store.STATUSES},
                     "grokked": table.filter(pl.col(CENSORED) == False).height if table.height else 0})  # noqa: E712
    counts = {name: pl.Int64 for name in (*store.STATUSES, "grokked")}
    return pl.DataFrame(rows, schema={"sweep": pl.String, "method": pl.String, "trials": pl.Int64, **counts})


def sweep_status(name: str, results: str | Path | None = None) -> tuple[SweepSpec, pl.DataFrame]:
    """The sweep's spec and its trials (one row each: id, searched fields, seed, status, events)."""
    root = resolve_root(results)
    spec = load_sweep_spec(root, name)
    table = trials_table(root, name)
    return spec, table


def trial_log(name: str, trial_id: str, results: str | Path | None = None) -> str:
    """A trial's traceback (if it failed) and its log."""
    root = resolve_root(results)
    load_sweep_spec(root, name)  # a clear error for an unknown sweep
    if _is_remote(root):
        raise UserError("logs are kept only for local results roots")
    log_dir = Path(store.sweep_dir(root, name)) / LOG_DIR
    parts = []
    error, log = log_dir / f"{trial_id}.error.txt", log_dir / f"{trial_id}.log"
    if error.exists():
        parts.append(f"== traceback ==\n{error.read_text()}")
    if log.exists():
        parts.append(f"== log ==\n{log.read_text()}")
    if not parts:
        known = sorted({p.name.split(".")[0] for p in log_dir.glob("*.log")}) if log_dir.exists() else []
        raise UserError(f"no log for trial {trial_id!r} in sweep {name!r}; trials: {', '.join(known) or 'none'}")
    return "\n".join(parts)


def dry_run(spec: SweepSpec) -> list[dict[str, Any]]:
    """The trials the sweep would run (grid/random: every point x seed; optuna: its space and count)."""
    if spec.method == "optuna":
        space = {p.name: (p.kind, list(p.values) if p.values else [p.low, p.high]) for p in spec.parameters.values()}
        return [{"configurations": spec.num_samples, "seeds": list(spec.seeds), "sampler": spec.sampler,
                 "space": space}]
    return [{**point, "seed": seed} for point in points(spec) for seed in spec.seeds]

