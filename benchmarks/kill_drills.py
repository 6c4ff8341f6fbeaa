"""Kill drills: SIGKILL the sweep driver at seeded random moments, recover, and count what was lost,
duplicated or contradicted -- read straight from the Parquet files, not through groksweep's own
`check` / `reconcile` code. Not run in CI (about 30 s to 1 min a drill on 2 cores).

How to run (from the repository root; do NOT wrap it in `flock`: it takes /tmp/groksweep-cpu.lock itself,
once per drill, and releases it between drills so that other users of the shared CPUs can interleave):

    .venv/bin/python benchmarks/kill_drills.py                       # 10 drills x grid, random, optuna
    .venv/bin/python benchmarks/kill_drills.py --kills 3 --methods grid --seed 7 --results /tmp/kd --keep
    .venv/bin/python benchmarks/kill_drills.py --replay grid:4.2:7.5  # one drill with these kill moments
    .venv/bin/python benchmarks/kill_drills.py --source /tmp/groksweep-head  # drive another source tree
                                                                   # (e.g. `git archive HEAD` while editing)

What a drill does, per method (grid, random, optuna; a small sweep of the tiny p=23 MLP, 2 seeds, 2 at a
time, a checkpoint every 5 evaluations):
1. Calibration (once per method, under the lock): two uninterrupted `sweep`s (the first also warms
   bytecode and import caches) measure its duration T, the faster of the two (their tables are checked
   like a drill's). Each drill then draws its kill moments uniformly from [0, T] (--window LO:HI: from
   [LO*T, HI*T]) with an RNG seeded by (--seed, method, drill), so kills land during Python/Ray start-up,
   between jobs, during state writes and mid-training. `--replay METHOD:S1[:S2]` reruns one drill's kills.
2. `groksweep sweep SPEC` in its own process group, SIGKILLed (the whole group) at the first moment.
   For about half of the drills (seeded) the recovery command is then started and SIGKILLed too, at a
   second moment. The recovery command is what a user would run: `resume NAME` once the sweep exists
   (its sweeps/NAME/sweep.json is written), else `sweep SPEC` again (a kill before the sweep existed).
   Before each next command, every process of the killed driver must be gone: its descendants are
   collected from /proc (by PID and start time, so a reused PID is never touched) while it runs and at
   the kill; Ray's processes that outlive it are waited for, then SIGKILLed by PID after 30 s. Nothing is
   ever killed by name. (--no-wait skips that wait: the next command starts at once, beside whatever
   the killed driver's Ray workers still do -- what an automatic restart would do.)
3. The recovery command runs to the end (no kill); `resume` must exit 0. If that was `sweep` (the sweep
   did not exist yet), `resume` is run after it as well and must exit 0 too.
   A killed driver leaves its lease unreleased: the next command must take it over by itself and print
   a "took over" note. Every command that found an unreleased lease and ran to the end must have printed
   it ("took over: seen/required").
4. The tables are counted (each count must be 0, and the sweep complete):
   - missing: jobs owed (grid: every value x seed; random/optuna: num_samples x seeds) without a row whose
     status is completed / stopped / failed; `unexpected` counts the reverse (extra configurations,
     a job under two trial_ids, rows that never ended, curves without a row);
   - duplicate rows: raw rows per trial_id in all trial files, minus one, summed;
   - duplicate steps: raw (trial_id, step) pairs stored more than once in the curve files;
   - contradicting rows: completed/stopped rows whose steps_run, events (memorise at train_acc >= 0.99,
     generalise at val_acc >= 0.99 and >= 0.95, the delay), `censored` or final train_acc / val_acc
     differ from what the job's curve (sorted by step) says; `curve gaps` counts final rows whose curve
     is not every eval_every steps from 0 to steps_run;
   - optuna: every trial in sweeps/NAME/optuna.journal is COMPLETE or FAIL (none RUNNING), there are
     num_samples of them, and each COMPLETE value is the mean over its seeds' rows (linked by the
     `optuna_trial` column) of steps_to_generalize, or 2 x max_steps where that is null;
   - lease held: the sweep's lease file still unreleased once the last command has exited 0.
5. One line per drill (kill moments, what was running at each kill -- read from the files right after
   the kill --, takeover notes, exit codes, counts, how long the killed driver's processes outlived it when
   over 5 s), then a table per method; every drill also goes to <results>/drills.jsonl. Exit code 1 if any
   count is non-zero or any sweep is left incomplete. Roots of failing drills are always kept (their paths
   are printed); passing ones only with --keep. Each command's output is in <root>/<n>-<command>.log.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import polars as pl
import yaml

REPO = Path(__file__).resolve().parents[1]
WAIT = True  # --no-wait: start the next command right after a kill, while the killed driver's Ray still runs
SOURCE = REPO  # the groksweep tree the drivers run (--source): cwd and first on PYTHONPATH of every process
LOCK_PATH = "/tmp/groksweep-cpu.lock"
GRACE_S = 30.0  # how long the processes of a killed driver get to go by themselves
ENDED = {"completed", "stopped", "failed"}
FINAL = {"completed", "stopped"}
MEMORIZE_ACC, GENERALIZE_ACC, GENERALIZE_95_ACC = 0.99, 0.99, 0.95
METHODS = ("grid", "random", "optuna")

MLP23 = {"op": "x+y", "p": 23, "train_fraction": 0.5, "model": "mlp", "width": 128, "activation": "quadratic",
         "optimizer": "adamw", "lr": 0.01, "beta1": 0.9, "beta2": 0.98, "eval_every": 10}
COMMON = {"seeds": [0, 1], "max_concurrent": 2, "checkpoint_every": 5, "checkpoint_every_s": 0}
SPECS: dict[str, dict[str, Any]] = {
    "grid": {"name": "drill-grid", "base": {**MLP23, "max_steps": 900}, "method": "grid",
             "parameters": {"weight_decay": {"values": [0.5, 1.0, 2.0, 3.0]}}, **COMMON},
    "random": {"name": "drill-random", "base": {**MLP23, "max_steps": 700}, "method": "random", "num_samples": 3,
               "search_seed": 0, "parameters": {"weight_decay": {"distribution": "uniform", "min": 0.5, "max": 4.0}},
               **COMMON},
    "optuna": {"name": "drill-optuna", "base": {**MLP23, "max_steps": 800}, "method": "optuna", "num_samples": 3,
               "search_seed": 0, "metric": {"name": "steps_to_generalize", "goal": "minimize"},
               "parameters": {"weight_decay": {"distribution": "log_uniform_values", "min": 0.3, "max": 5.0}},
               **COMMON},
}


def n_jobs(spec: dict[str, Any]) -> int:
    if spec["method"] == "grid":
        return math.prod(len(p["values"]) for p in spec["parameters"].values() if "values" in p) * len(spec["seeds"])
    return spec["num_samples"] * len(spec["seeds"])


# --- the shared CPU lock: one drill at a time holds it ---

@contextlib.contextmanager
def cpu_lock() -> Iterator[float]:
    """Hold /tmp/groksweep-cpu.lock (flock, exclusive) for one drill; yields the seconds waited for it.
    The drivers started inside do not inherit the descriptor (close_fds), so a leftover process never holds it."""
    with open(LOCK_PATH, "a") as handle:
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield time.monotonic() - started
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- processes, by PID and start time, from /proc ---

Proc = tuple[int, int]  # (pid, start time in clock ticks since boot): a reused pid is a different Proc


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def descendants(pids: set[int]) -> set[Proc]:
    """Every live descendant of `pids` (and the pids themselves), following ppid links in /proc."""
    children: dict[int, list[Proc]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: set[Proc] = set()
    for pid in pids:
        stat = _stat(pid)
        if stat is not None:
            found.add((pid, stat[1]))
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def alive(proc: Proc) -> bool:
    stat = _stat(proc[0])
    return stat is not None and stat[1] == proc[1] and stat[2] not in ("Z", "X")


def comm(pid: int) -> str:
    """A process's name for the report: its comm, plus the script it runs for a `python` process."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    script = next((a.decode(errors="replace").rsplit("/", 1)[-1] for a in args[1:] if a.endswith(b".py")), None)
    return f"{name}:{script}" if name.startswith("python") and script else name


def reap(seen: set[Proc], lingering: dict[str, float], grace_s: float = GRACE_S) -> int:
    """Wait until every process in `seen` (and any child they start meanwhile) is gone; SIGKILL the ones
    left after `grace_s`, by PID. Returns how many had to be killed; `lingering` gets, per process name
    (for the report only), how long the slowest one outlived the driver."""
    started = time.monotonic()
    deadline = started + grace_s
    while True:
        live = {p for p in seen if alive(p)}
        for pid, _ in live:
            lingering[comm(pid)] = round(time.monotonic() - started, 1)
        if not live:
            return 0
        seen |= descendants({pid for pid, _ in live})
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    killed = 0
    for proc in sorted(seen):
        if alive(proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc[0], signal.SIGKILL)
                killed += 1
    deadline = time.monotonic() + 10
    while any(alive(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    return killed


# --- reading the result files directly ---

def parquet_files(directory: Path) -> list[Path]:
    """Every visible .parquet file under `directory` (names starting with '.' are in-flight temp files)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*.parquet") if not p.name.startswith("."))


def read_files(files: list[Path], columns: list[str], attempts: int = 5) -> pl.DataFrame:
    """The raw rows of `files` (no deduplication), `columns` only; missing columns read as nulls."""
    frames = []
    for path in files:
        for attempt in range(attempts):
            try:
                frame = pl.read_parquet(path)
                break
            except (FileNotFoundError, OSError):  # replaced or compacted away while a writer was still alive
                if attempt == attempts - 1 or not path.exists():
                    frame = None
                    break
                time.sleep(0.05)
        if frame is not None:
            frames.append(frame.select(pl.col(c) if c in frame.columns else pl.lit(None).alias(c) for c in columns))
    if not frames:
        return pl.DataFrame({c: [] for c in columns})
    return pl.concat(frames, how="diagonal_relaxed")


TRIAL_COLUMNS = ["trial_id", "status", "seed", "max_steps", "eval_every", "steps_run", "steps_to_memorize",
                 "steps_to_generalize", "steps_to_generalize_95", "grokking_delay", "censored", "train_acc",
                 "val_acc", "optuna_trial", "weight_decay"]
CURVE_COLUMNS = ["trial_id", "step", "train_acc", "val_acc"]


def trial_rows(root: Path, name: str) -> pl.DataFrame:
    return read_files(parquet_files(root / "trials" / name), TRIAL_COLUMNS)


def curve_rows(root: Path, name: str) -> pl.DataFrame:
    return read_files(parquet_files(root / "curves" / name), CURVE_COLUMNS)


def lease_unreleased(root: Path, name: str) -> bool:
    """The sweep's current lease (highest generation file) was never released: a killed holder."""
    files = sorted((root / "sweeps" / name).glob("lease.*.json"))
    if not files:
        return False
    try:
        return not json.loads(files[-1].read_text()).get("released", False)
    except (OSError, ValueError):
        return True


def sweep_exists(root: Path, name: str) -> bool:
    """What `resume` needs: the sweep's sweep.json (written right after its spec, before Ray runs anything)."""
    return (root / "sweeps" / name / "sweep.json").is_file()


def moment_state(root: Path, name: str, owed: int, log_text: str) -> str:
    """What the driver was doing when it was killed, from what it had written."""
    folder = root / "sweeps" / name
    if not sweep_exists(root, name):
        if list(folder.glob("lease.*.json")):
            return "start-up: lease taken, sweep not created"
        return "start-up: nothing written"
    rows = trial_rows(root, name)
    if rows.height == 0:
        return "Ray/Tune start-up: no job started"
    rank = {"running": 0, "interrupted": 0, "failed": 1, "stopped": 2, "completed": 2}
    best = (rows.with_columns(rank=pl.col("status").replace_strict(rank, default=0))
            .sort("rank").unique("trial_id", keep="last"))
    ended = best.filter(pl.col("status").is_in(list(ENDED))).height
    running = best.filter(pl.col("status") == "running").height
    if ended >= owed:
        return "shutdown: summary printed" if "jobs ended (" in log_text else f"wrap-up: {ended}/{owed} ended"
    return f"training: {ended}/{owed} ended, {running} running"


# --- one command, maybe killed ---

@dataclass
class Command:
    argv: list[str]  # after `python -m orchestrator.cli`
    kill_at: float | None  # seconds after start; None: run to the end
    killed: bool = False
    rc: int | None = None  # None when killed
    seconds: float = 0.0
    state: str = ""  # what it was doing when killed
    takeover_expected: bool = False  # an unreleased lease was there when it started
    takeover_seen: bool = False  # it printed "took over the lease"
    leftovers: int = 0  # its processes SIGKILLed by PID after the grace period
    reap_s: float = 0.0  # how long its processes outlived it
    lingering: dict[str, float] = field(default_factory=dict)  # process name -> seconds it outlived the driver
    overlapping: int = 0  # --no-wait: processes of killed drivers still alive when it started
    log: str = ""

    @property
    def verb(self) -> str:
        return self.argv[0]

    @property
    def must_take_over(self) -> bool:
        """It found a killed holder's lease and ran to the end: it must have said "took over"."""
        return self.takeover_expected and not self.killed

    def describe(self) -> str:
        if self.overlapping:
            return f"{self.verb} beside {self.overlapping} live processes of a killed driver: " + self._what()
        return self._what()

    def _what(self) -> str:
        if self.killed:
            return f"{self.verb} killed at {self.kill_at:.2f}s ({self.state})"
        if self.kill_at is not None:
            return f"{self.verb} ended rc {self.rc} at {self.seconds:.1f}s before its kill at {self.kill_at:.2f}s"
        return f"{self.verb} rc {self.rc} in {self.seconds:.1f}s"


def run_command(command: Command, root: Path, name: str, owed: int, index: int, orphans: set[Proc]) -> Command:
    """Run `groksweep <argv>` in its own process group; SIGKILL the group at `kill_at`; wait until every
    process it started is gone (see reap) -- or, killed under --no-wait, add them to `orphans` instead."""
    command.takeover_expected = lease_unreleased(root, name)
    command.overlapping = sum(alive(p) for p in orphans)
    log_path = root / f"{index}-{command.verb}.log"
    command.log = str(log_path)
    env = {**os.environ, "TERM": "dumb", "NO_COLOR": "1", "COLUMNS": "120"}
    env.pop("RAY_ADDRESS", None)  # always the embedded Ray on loopback
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE), env.get("PYTHONPATH", "")) if p)
    seen: set[Proc] = set()
    done = threading.Event()
    with open(log_path, "wb") as log:
        started = time.monotonic()
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *command.argv], cwd=SOURCE, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)

        def track() -> None:  # every process the driver starts, while it lives
            while not done.is_set():
                seen.update(descendants({driver.pid}))
                done.wait(0.25)

        tracker = threading.Thread(target=track, daemon=True)
        tracker.start()
        try:
            while driver.poll() is None:
                if command.kill_at is not None and time.monotonic() - started >= command.kill_at:
                    seen.update(descendants({driver.pid}))
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
                    command.killed = True
                    break
                time.sleep(0.01)
            driver.wait()
            command.seconds = time.monotonic() - started
        except BaseException:  # this script interrupted (Ctrl-C, SIGTERM): take the driver and its Ray down too
            seen.update(descendants({driver.pid}))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
            reap(seen, {}, grace_s=5)
            raise
        finally:
            done.set()
            tracker.join()
    text = log_path.read_text(errors="replace")
    if command.killed:
        command.state = moment_state(root, name, owed, text)
    else:
        command.rc = driver.returncode
    if command.killed and not WAIT:
        orphans |= seen
    else:
        reaped = time.monotonic()
        command.leftovers = reap(seen, command.lingering)
        command.reap_s = time.monotonic() - reaped
    command.takeover_seen = "took over the lease" in text
    return command


# --- the counts ---

@dataclass
class Counts:
    missing: int = 0
    unexpected: int = 0
    duplicate_rows: int = 0
    duplicate_steps: int = 0
    contradicting: int = 0
    curve_gaps: int = 0
    optuna_mismatches: int = 0
    lease_held: int = 0  # the sweep's lease still unreleased after the last command ended
    failed_rows: int = 0  # not an error by itself (no job should fail here): reported
    optuna_running: int = 0  # Optuna trials still RUNNING (also counted in optuna_mismatches)
    notes: list[str] = field(default_factory=list)

    NAMES = ("missing", "unexpected", "duplicate_rows", "duplicate_steps", "contradicting", "curve_gaps",
             "optuna_mismatches", "lease_held")

    @property
    def bad(self) -> int:
        return sum(getattr(self, n) for n in self.NAMES)

    def line(self) -> str:
        return (f"missing {self.missing} unexpected {self.unexpected} dup-rows {self.duplicate_rows} "
                f"dup-steps {self.duplicate_steps} contradicting {self.contradicting} gaps {self.curve_gaps} "
                f"optuna {self.optuna_mismatches}" + (" LEASE STILL HELD" if self.lease_held else "")
                + (f" failed-rows {self.failed_rows}" if self.failed_rows else ""))


def from_curve(curve: pl.DataFrame) -> dict[str, Any]:
    """The row fields a job's curve determines (curve sorted by step, one row per step)."""
    steps, train, val = curve["step"].to_list(), curve["train_acc"].to_list(), curve["val_acc"].to_list()

    def first(values: list[float], threshold: float) -> int | None:
        return next((s for s, v in zip(steps, values, strict=True) if v is not None and v >= threshold), None)

    memorize, generalize = first(train, MEMORIZE_ACC), first(val, GENERALIZE_ACC)
    return {"steps_run": steps[-1] if steps else None, "steps_to_memorize": memorize,
            "steps_to_generalize": generalize, "steps_to_generalize_95": first(val, GENERALIZE_95_ACC),
            "grokking_delay": None if memorize is None or generalize is None else generalize - memorize,
            "censored": generalize is None if steps else None,
            "train_acc": train[-1] if steps else None, "val_acc": val[-1] if steps else None}


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def count(root: Path, spec: dict[str, Any]) -> Counts:
    """Every count of the module docstring, from the files."""
    name, method, seeds = spec["name"], spec["method"], spec["seeds"]
    out = Counts()
    rows = trial_rows(root, name)
    curves = curve_rows(root, name)

    per_id = rows.group_by("trial_id").len()
    out.duplicate_rows = int((per_id["len"] - 1).sum()) if per_id.height else 0
    for trial_id, copies in per_id.filter(pl.col("len") > 1).iter_rows():
        statuses = rows.filter(pl.col("trial_id") == trial_id)["status"].to_list()
        out.notes.append(f"{copies} rows for {trial_id}: {statuses}")

    ended = rows.filter(pl.col("status").is_in(list(ENDED))).unique("trial_id", keep="first")
    out.failed_rows = ended.filter(pl.col("status") == "failed").height
    never_ended = set(rows["trial_id"]) - set(ended["trial_id"])
    if never_ended:
        out.notes.append(f"rows that never ended: {sorted(never_ended)}")
    params = list(spec["parameters"])

    def key(row: dict[str, Any]) -> tuple:
        if method == "optuna":
            return (row["optuna_trial"], row["seed"])
        return (*(row[p] for p in params), row["seed"])

    keys: dict[tuple, set[str]] = {}
    for row in ended.iter_rows(named=True):
        keys.setdefault(key(row), set()).add(row["trial_id"])
    if method == "grid":
        expected = set(product(*(spec["parameters"][p]["values"] for p in params), seeds))
    elif method == "optuna":
        expected = set(product(range(spec["num_samples"]), seeds))
    else:  # random: its points are only known from the rows
        expected = None
    if expected is None:
        configs = {k[:-1] for k in keys}
        out.missing = sum(1 for c in configs for s in seeds if (*c, s) not in keys)  # a configuration short a seed
        out.missing += max(0, spec["num_samples"] - len(configs)) * len(seeds)  # configurations never run
        out.unexpected = max(0, len(configs) - spec["num_samples"]) * len(seeds)
    else:
        out.missing = len(expected - set(keys))
        out.unexpected = len(set(keys) - expected)
    if out.missing:
        out.notes.append(f"{out.missing} missing; ended jobs (values..., seed): {sorted(keys)}")
    out.unexpected += sum(len(ids) - 1 for ids in keys.values()) + len(never_ended)
    orphans = set(curves["trial_id"]) - set(rows["trial_id"])
    out.unexpected += len(orphans)
    if orphans:
        out.notes.append(f"curves without a row: {sorted(orphans)}")

    per_step = curves.group_by("trial_id", "step").len()
    out.duplicate_steps = int((per_step["len"] - 1).sum()) if per_step.height else 0
    if out.duplicate_steps:
        dups = per_step.filter(pl.col("len") > 1)
        out.notes.append(f"duplicate steps: {dups.height} keys in {dups['trial_id'].n_unique()} jobs")

    by_job = {tid: g for (tid,), g in curves.unique(["trial_id", "step"]).sort("step").group_by("trial_id")}
    for row in ended.filter(pl.col("status").is_in(list(FINAL))).iter_rows(named=True):
        curve = by_job.get(row["trial_id"], pl.DataFrame({c: [] for c in CURVE_COLUMNS}))
        derived = from_curve(curve)
        wrong = [f for f, v in derived.items() if not same(row[f], v)]
        if wrong:
            out.contradicting += 1
            out.notes.append(f"{row['trial_id']} contradicts its curve: "
                             + ", ".join(f"{f} row {row[f]} curve {derived[f]}" for f in wrong))
        if row["steps_run"] is not None:
            whole = sorted(set(range(0, row["steps_run"] + 1, row["eval_every"])) | {row["steps_run"]})
            if curve["step"].to_list() != whole:
                out.curve_gaps += 1
                out.notes.append(f"{row['trial_id']}: curve steps {len(curve)} rows, expected {len(whole)}")

    if method == "optuna":
        optuna_counts(root, spec, ended, out)
    out.lease_held = int(lease_unreleased(root, name))
    return out


def optuna_counts(root: Path, spec: dict[str, Any], ended: pl.DataFrame, out: Counts) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = root / "sweeps" / spec["name"] / "optuna.journal"
    if not path.is_file():
        out.optuna_mismatches += 1
        out.notes.append("no optuna.journal")
        return
    study = optuna.load_study(study_name=spec["name"], storage=JournalStorage(JournalFileBackend(str(path))))
    trials = study.get_trials(deepcopy=False)
    if len(trials) != spec["num_samples"]:
        out.optuna_mismatches += 1
        out.notes.append(f"optuna: {len(trials)} trials in the journal, num_samples {spec['num_samples']}")
    for trial in trials:
        state = trial.state
        if state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
            out.optuna_mismatches += 1
            out.optuna_running += state == optuna.trial.TrialState.RUNNING
            out.notes.append(f"optuna trial {trial.number} is {state.name}")
            continue
        if state != optuna.trial.TrialState.COMPLETE:
            continue
        runs = ended.filter(pl.col("optuna_trial") == trial.number)
        scores = [float(s) if s is not None else 2.0 * m for s, m in zip(runs["steps_to_generalize"],
                                                                           runs["max_steps"], strict=True)]
        if runs.height != len(spec["seeds"]) or not math.isclose(trial.value, sum(scores) / len(scores)):
            out.optuna_mismatches += 1
            out.notes.append(f"optuna trial {trial.number}: value {trial.value}, its {runs.height} rows' mean "
                             f"{sum(scores) / max(1, len(scores))}")
    numbers = {t.number for t in trials}
    strays = set(ended["optuna_trial"].drop_nulls()) - numbers
    if strays:
        out.optuna_mismatches += len(strays)
        out.notes.append(f"rows name optuna trials not in the journal: {sorted(strays)}")


# --- drills ---

@dataclass
class Drill:
    method: str
    label: str  # "calibrate-<k>", the drill's index, or "replay"
    moments: list[float]
    commands: list[Command] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    complete: bool = False
    final_rc: int | None = None
    recovered_by_sweep: bool = False  # a kill landed before the sweep existed: `sweep` was run again
    seconds: float = 0.0
    waited_s: float = 0.0  # for the CPU lock
    orphans_killed: int = 0  # --no-wait: processes of killed drivers still alive at the end, SIGKILLed by PID
    root: str = ""

    @property
    def ok(self) -> bool:
        return self.complete and self.final_rc == 0 and self.counts.bad == 0

    def line(self) -> str:
        kills = ", ".join(c.describe() for c in self.commands if c.kill_at is not None) or "no kill"
        must = [c for c in self.commands if c.must_take_over]
        takeover = f"{sum(c.takeover_seen for c in must)}/{len(must)}"
        left = sum(c.leftovers for c in self.commands)
        return (f"{self.method:6} {self.label:>11} | {kills} | recovery "
                + " -> ".join(c.describe() if c.overlapping else f"{c.verb} rc {c.rc}"
                              for c in self.commands if c.kill_at is None)
                + f" | took over: seen/required {takeover}"
                + (f" | {self.orphans_killed} orphans SIGKILLed at the end" if self.orphans_killed else "")
                + (" | recovered by re-running sweep" if self.recovered_by_sweep else "")
                + (f" | {left} processes SIGKILLed after {GRACE_S:.0f}s" if left else "")
                + f" | {'complete' if self.complete else 'INCOMPLETE'}, {self.counts.line()} | {self.seconds:.0f}s"
                + ("" if self.ok else "  <-- FAILED"))


def write_spec(root: Path, spec: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_drill(method: str, label: str, moments: list[float], root: Path) -> Drill:
    """sweep killed at moments[0]; the recovery command killed at moments[1] (if any); then the recovery
    run to the end, and the counts."""
    spec = SPECS[method]
    name, owed = spec["name"], n_jobs(spec)
    if root.exists():
        shutil.rmtree(root)
    spec_path = write_spec(root, spec)
    drill = Drill(method, label, moments, root=str(root))
    with cpu_lock() as waited:
        drill.waited_s = waited
        started = time.monotonic()

        orphans: set[Proc] = set()

        def step(argv: list[str], kill_at: float | None) -> Command:
            return run_command(Command(argv, kill_at), root, name, owed, len(drill.commands) + 1, orphans)

        def recovery() -> list[str]:
            if sweep_exists(root, name):
                return ["resume", name, "--results", str(root)]
            drill.recovered_by_sweep = True
            return ["sweep", str(spec_path), "--results", str(root)]

        drill.commands.append(step(["sweep", str(spec_path), "--results", str(root)], moments[0] if moments else None))
        for moment in moments[1:]:
            drill.commands.append(step(recovery(), moment))
        if moments:  # the uninterrupted run: whatever the sweep needs, then `resume` must say it is complete
            last = step(recovery(), None)
            drill.commands.append(last)
            if last.verb == "sweep":
                drill.commands.append(step(["resume", name, "--results", str(root)], None))
        drill.final_rc = drill.commands[-1].rc
        drill.orphans_killed = reap(orphans, {})  # --no-wait: whatever the killed drivers left, before counting
        drill.counts = count(root, spec)
        drill.complete = drill.counts.missing == 0 and drill.final_rc == 0 and drill.counts.optuna_running == 0
        drill.seconds = time.monotonic() - started
    return drill


def summary(drills: list[Drill]) -> str:
    head = ("method", "drills", "complete", "missing", "unexpected", "dup rows", "dup steps", "contradicting",
            "curve gaps", "optuna mism.", "lease held", "took over: seen/required", "pre-sweep kills", "final rc!=0")
    lines = [" | ".join(head)]
    for method in METHODS:
        mine = [d for d in drills if d.method == method and not d.label.startswith("calibrate")]
        if not mine:
            continue
        total = {n: sum(getattr(d.counts, n) for d in mine) for n in Counts.NAMES}
        commands = [c for d in mine for c in d.commands]
        cells = (method, len(mine), sum(d.complete for d in mine), total["missing"], total["unexpected"],
                 total["duplicate_rows"], total["duplicate_steps"], total["contradicting"], total["curve_gaps"],
                 total["optuna_mismatches"], total["lease_held"],
                 f"{sum(c.takeover_seen for c in commands if c.must_take_over)}/"
                 f"{sum(c.must_take_over for c in commands)}",
                 sum(d.recovered_by_sweep for d in mine), sum(d.final_rc != 0 for d in mine))
        lines.append(" | ".join(str(c).rjust(len(h)) for c, h in zip(cells, head, strict=True)))
    return "\n".join(lines)


def report(drill: Drill, journal: Path | None) -> None:
    print(drill.line(), flush=True)
    for note in drill.counts.notes[:8]:
        print(f"        {note}", flush=True)
    for command in drill.commands:
        if command.reap_s > 5:
            slow = sorted(command.lingering.items(), key=lambda kv: -kv[1])[:4]
            print(f"        {command.verb}'s processes outlived it by {command.reap_s:.0f}s: {slow}", flush=True)
        if command.must_take_over != command.takeover_seen and not command.killed:
            print(f"        takeover note {'missing' if command.must_take_over else 'unexpected'}: "
                  f"{command.describe()} ({command.log})", flush=True)
    if not drill.ok:
        print(f"        kept: {drill.root}", flush=True)
    if journal is not None:
        with journal.open("a") as out:
            out.write(json.dumps({**asdict(drill), "ok": drill.ok}, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="drills per method (default 10)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: grid,random,optuna")
    parser.add_argument("--seed", type=int, default=0, help="seeds every drill's kill moments")
    parser.add_argument("--results", help="where the drills' results roots go (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep every drill's root (failing ones always stay)")
    parser.add_argument("--window", default="0:1", help="kill moments drawn from [LO*T, HI*T] (fractions of "
                        "the calibrated duration T; default 0:1; e.g. 0.8:1.05 aims at the end of a run)")
    parser.add_argument("--durations", default="", help="skip calibration: e.g. grid=18,random=15,optuna=20 (s)")
    parser.add_argument("--replay", help="one drill: METHOD:SWEEP_KILL_S[:RECOVERY_KILL_S]")
    parser.add_argument("--no-wait", action="store_true", help="start each recovery right after the kill, "
                        "while the killed driver's Ray workers may still train and write (a harsher drill)")
    parser.add_argument("--source", default=str(REPO), help="groksweep source tree the drivers run (default: "
                        "this checkout; e.g. a `git archive HEAD` copy while the checkout is being edited)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through run_command: drivers go too
    global SOURCE, WAIT
    SOURCE = Path(args.source).resolve()
    WAIT = not args.no_wait

    base = Path(args.results) if args.results else Path(tempfile.mkdtemp(prefix="kill-drills-"))
    base.mkdir(parents=True, exist_ok=True)
    journal = base / "drills.jsonl"
    print(f"kill drills: groksweep from {SOURCE}; results under {base}; one line per drill in {journal}",
          flush=True)
    drills: list[Drill] = []
    if args.replay:
        method, *moments = args.replay.split(":")
        drill = run_drill(method, "replay", [float(m) for m in moments], base / f"{method}-replay")
        report(drill, journal)
        return 0 if drill.ok else 1

    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"--methods: unknown {sorted(unknown)}")
    window = tuple(float(f) for f in args.window.split(":"))
    durations = {k: float(v) for k, v in (item.split("=") for item in args.durations.split(",") if item)}
    for method in methods:
        if method not in durations:  # twice: the first run also warms caches (bytecode, imports); T = the faster
            for run in (1, 2):
                drill = run_drill(method, f"calibrate-{run}", [], base / f"{method}-calibration-{run}")
                durations[method] = min(durations.get(method, math.inf), drill.commands[0].seconds)
                drills.append(drill)
                report(drill, journal)
                if drill.ok and not args.keep:
                    shutil.rmtree(drill.root, ignore_errors=True)
            print(f"{method}: an uninterrupted sweep takes {durations[method]:.1f} s", flush=True)
        print(f"{method}: kill moments in [{window[0] * durations[method]:.1f}, {window[1] * durations[method]:.1f}] s",
              flush=True)
        for index in range(args.kills):
            rng = random.Random(f"{args.seed}:{method}:{index}")
            low, high = (durations[method] * f for f in window)
            moments = [rng.uniform(low, high)]
            if rng.random() < 0.5:
                moments.append(rng.uniform(low, high))
            drill = run_drill(method, f"#{index}", moments, base / f"{method}-{index:02d}")
            drills.append(drill)
            report(drill, journal)
            if drill.ok and not args.keep:
                shutil.rmtree(drill.root, ignore_errors=True)
    print("\n" + summary(drills), flush=True)
    failed = [d for d in drills if not d.ok]
    if failed:
        print(f"\n{len(failed)} drill(s) failed:", flush=True)
        for drill in failed:
            print(f"  {drill.method} {drill.label} moments {[round(m, 2) for m in drill.moments]}: {drill.root}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
