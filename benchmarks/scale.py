"""How groksweep scales to thousands of small jobs: the same jobs through `groksweep sweep` and through a
plain process pool, at 400, 2,000 and (with --full) 10,000 jobs.

The sweep: the `tiny` preset with max_steps 60, eval_every 20, stop_on_generalize off, 1 torch thread;
10 weight decays x 5 learning rates (grid) x S seeds (S = jobs / 50), max_concurrent 2, 1 CPU per trial.
Each job trains ~45 ms, so what the sweep adds per job (store writes, Tune, the driver) is what shows.

For each size, inside one hold of the team's CPU lock (/tmp/groksweep-cpu.lock, flock) so that nothing
else runs meanwhile:
1. groksweep: `python -m orchestrator.cli sweep SPEC --results ROOT` as a subprocess. Timed as the whole
   command, and from the first job's start to the last job's end (the rows' started_at / ended_at).
   Driver peak RSS: VmHWM of the driver process, polled from /proc; its CPU seconds from /proc/<pid>/stat.
   Then the files and bytes left under the results root.
2. A plain pool: multiprocessing (spawn), 2 processes, chunksize 1, `trainers.run(config)` for each of the
   sweep's job configs (orchestrator.jobs.train_config, so exactly the same jobs), writing nothing; timed
   from the first job start to the last job end (each worker's first job pays the torch import, as a
   trial's trainer process does: the start is taken before the import).
Printed: both times and their ratio (target <= 1.25 at 2,000 and 10,000 jobs); seconds per 200 jobs in
the first and the last block of 200 by end time (target: last within 1.2x of first); how the slot time
splits into training, the rest of each job (store writes, IPC) and the gaps between jobs; driver peak RSS
(target <= 1 GB at 10,000); files and bytes left.

--random adds a random sweep of 2,000 jobs over the grid's ranges (log-uniform, 200 configurations x 10
seeds), timed the same way against the pool over its jobs.

--optuna adds an Optuna (TPE) sweep of 200 configurations x 10 seeds = 2,000 jobs over the same ranges
(log-uniform), timed the same way against a pool over the configurations it chose, and the sampler's own
cost measured in this process: ask + tell on a TPE study with the same space and a journal file, as the
study grows to 10, 100 and 200 trials.

--gpu: batched models on one GPU. For gromov and nanda2023 and K = 1, 8, 32, 64: 4K jobs that grok at
different steps (a random sweep over log-uniform weight decay and lr, stop_on_generalize on, each preset's
own budget) through `groksweep sweep` twice -- packs of K trained as one batched model (`pack: K`,
`batched: on`, one trial at a time holding {gpu: 1, cpu: <cores>}), and K separate trials sharing the GPU
(`pack: 1`, `batched: off`, max_concurrent K at {gpu: 1/K, cpu: <cores>/K}) -- and prints jobs per second
(jobs / first start -> last end) of both and their ratio (target >= 10x at K = 64 for gromov).
--gpu-smoke runs the same path forced onto the CPU (tiny preset, 300 steps, K = 1, 4): it shows the path
works, not a speed-up.

Run (it takes the CPU lock itself; run it normally):

    .venv/bin/python benchmarks/scale.py                     # 400 and 2,000 jobs (about 15 minutes on 2 cores)
    .venv/bin/python benchmarks/scale.py --full --optuna     # + 10,000 jobs and the Optuna sweep
    .venv/bin/python benchmarks/scale.py --sizes 2000 --pack 25 --keep --results /tmp/scale
    .venv/bin/python benchmarks/scale.py --sizes none --gpu            # on a GPU machine (hours for nanda2023)
    .venv/bin/python benchmarks/scale.py --sizes none --gpu-smoke      # the same path on CPU, ~2 minutes
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from orchestrator import store
from orchestrator.jobs import expected_jobs, pack_size, pack_sizes, train_config
from orchestrator.spec import SweepSpec, parse_spec
from trainers.config import TrainConfig, resolve

LOCK_FILE = "/tmp/groksweep-cpu.lock"
REPO = Path(__file__).resolve().parent.parent
WEIGHT_DECAYS = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0]
LEARNING_RATES = [1e-3, 2e-3, 5e-3, 1e-2, 2e-2]
BASE = {"preset": "tiny", "max_steps": 60, "eval_every": 20, "stop_on_generalize": False, "threads": 1}
CONCURRENCY = 2
BLOCK = 200
OPTUNA_SAMPLES, OPTUNA_SEEDS = 200, 10


# --- the CPU lock ---

@contextmanager
def cpu_lock() -> Iterator[None]:
    """Hold the team's CPU lock (flock on LOCK_FILE) for a timed section."""
    with open(LOCK_FILE, "a") as handle:
        waited = time.monotonic()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  (waiting for {LOCK_FILE} ...)", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
            print(f"  (got the lock after {time.monotonic() - waited:.0f} s)", flush=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (user + nice + system + irq + softirq + steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


# --- specs ---

def grid_spec(name: str, jobs: int, pack: int | None) -> dict[str, Any]:
    n_configs = len(WEIGHT_DECAYS) * len(LEARNING_RATES)
    if jobs % n_configs:
        raise SystemExit(f"--sizes: {jobs} is not a multiple of {n_configs} (10 weight decays x 5 learning rates)")
    raw: dict[str, Any] = {
        "name": name, "base": BASE, "method": "grid",
        "metric": {"name": "steps_to_generalize", "goal": "minimize"},
        "parameters": {"weight_decay": {"values": WEIGHT_DECAYS}, "lr": {"values": LEARNING_RATES}},
        "seeds": list(range(jobs // n_configs)), "max_concurrent": CONCURRENCY, "resources": {"cpu": 1},
    }
    if pack is not None:
        raw["pack"] = pack
    return raw


def log_uniform(values: list[float]) -> dict[str, Any]:
    return {"distribution": "log_uniform_values", "min": min(values), "max": max(values)}


def random_spec(name: str, jobs: int) -> dict[str, Any]:
    """The grid's ranges drawn at random (log-uniform): jobs / 10 configurations x 10 seeds."""
    return {
        "name": name, "base": BASE, "method": "random", "num_samples": jobs // OPTUNA_SEEDS, "search_seed": 0,
        "metric": {"name": "steps_to_generalize", "goal": "minimize"},
        "parameters": {"weight_decay": log_uniform(WEIGHT_DECAYS), "lr": log_uniform(LEARNING_RATES)},
        "seeds": list(range(OPTUNA_SEEDS)), "max_concurrent": CONCURRENCY, "resources": {"cpu": 1},
    }


def optuna_spec(name: str) -> dict[str, Any]:
    return {
        "name": name, "base": BASE, "method": "optuna", "sampler": "tpe", "num_samples": OPTUNA_SAMPLES,
        "search_seed": 0, "metric": {"name": "steps_to_generalize", "goal": "minimize"},
        "parameters": {"weight_decay": log_uniform(WEIGHT_DECAYS), "lr": log_uniform(LEARNING_RATES)},
        "seeds": list(range(OPTUNA_SEEDS)), "max_concurrent": CONCURRENCY, "resources": {"cpu": 1},
    }


# --- the sweep, as a user runs it ---

@dataclass
class SweepRun:
    command_s: float
    driver_hwm_kb: int  # VmHWM of the driver process, last value polled
    driver_rss: list[tuple[float, int]]  # (epoch seconds, VmRSS kB) of the driver, every poll
    driver_cpu_s: float  # the driver's own user + system CPU seconds, last value polled
    children_maxrss_kb: int  # getrusage(RUSAGE_CHILDREN).ru_maxrss after it exited (Ray's processes included)
    machine_cpu_s: float
    fit_s: float | None  # "(X s in Tune)" as the command printed it
    cpu_by_role: dict[str, float] = field(default_factory=dict)  # CPU seconds per kind of process (PROCESS_ROLES)
    rows: pl.DataFrame = field(default_factory=pl.DataFrame)


def _poll_driver(pid: int, out: dict[str, float], rss: list[tuple[float, int]], stop: threading.Event) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    while not stop.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            out["hwm_kb"] = max(out.get("hwm_kb", 0), int(match.group(1)))
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            rss.append((time.time(), int(match.group(1))))
        out["cpu_s"] = (int(stat[11]) + int(stat[12])) / ticks  # utime, stime (fields 14, 15)
        stop.wait(0.1)


# what each process of a sweep is, by its command line (first match); the rest of the machine is "other"
PROCESS_ROLES = [("trainer_process import serve", "trainer processes"), ("ImplicitFunc", "trial workers"),
                 ("orchestrator.cli sweep", "driver"), ("orchestrator.live_report", "live report"),
                 ("ray", "Ray's own processes")]


def _cpu_by_pid() -> dict[int, tuple[str, float]]:
    """Each process's role and CPU seconds so far."""
    ticks, out = os.sysconf("SC_CLK_TCK"), {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{entry.name}/cmdline").read_text(errors="replace").replace("\0", " ")
        except (OSError, IndexError):  # gone meanwhile
            continue
        role = next((name for key, name in PROCESS_ROLES if key in command), "other")
        out[int(entry.name)] = (role, (int(stat[11]) + int(stat[12])) / ticks)
    return out


def _poll_cpu_by_role(out: dict[int, tuple[str, float]], stop: threading.Event) -> None:
    """Every second, each process's CPU so far (the last value seen is kept after it exits): where the
    machine's CPU went -- the sweep is CPU-bound, so the trainers' share of it sets the pace."""
    while not stop.is_set():
        for pid, (role, cpu) in _cpu_by_pid().items():  # an exiting process has no command line: keep its role
            out[pid] = (out[pid][0] if pid in out and role == "other" else role, cpu)
        stop.wait(1.0)


def run_groksweep(raw: dict[str, Any], root: str, log_path: str, repo: Path) -> SweepRun:
    """`groksweep sweep` over `raw` into `root`, as a subprocess running groksweep from `repo`; its rows."""
    import resource

    spec_path = f"{root}.spec.yaml"
    Path(spec_path).write_text(yaml.safe_dump(raw, sort_keys=False))
    command = [sys.executable, "-m", "orchestrator.cli", "sweep", spec_path, "--results", root, "--overwrite"]
    polled: dict[str, float] = {}
    rss: list[tuple[float, int]] = []
    stop = threading.Event()
    by_pid: dict[int, tuple[str, float]] = {}
    baseline = {pid: cpu for pid, (_, cpu) in _cpu_by_pid().items()}  # what each had used before the sweep
    roles = threading.Thread(target=_poll_cpu_by_role, args=(by_pid, stop), daemon=True)
    roles.start()
    cpu_before = machine_cpu_s()
    with open(log_path, "w") as log:
        started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        poller = threading.Thread(target=_poll_driver, args=(process.pid, polled, rss, stop), daemon=True)
        poller.start()
        code = process.wait()
        command_s = time.perf_counter() - started
    stop.set()
    poller.join()
    roles.join()
    machine = machine_cpu_s() - cpu_before
    cpu_by_role: dict[str, float] = {}
    for pid, (role, cpu) in by_pid.items():
        cpu_by_role[role] = cpu_by_role.get(role, 0.0) + cpu - baseline.get(pid, 0.0)
    output = Path(log_path).read_text(errors="replace")
    if code != 0:
        raise SystemExit(f"groksweep sweep exited {code}; its output ({log_path}) ends:\n{output[-3000:]}")
    fit = re.search(r"jobs ended \(([\d.]+) s in Tune\)", output)
    rows = store.trials(root, [raw["name"]]).collect()
    return SweepRun(command_s=command_s, driver_hwm_kb=int(polled.get("hwm_kb", 0)), driver_rss=rss,
                    driver_cpu_s=polled.get("cpu_s", float("nan")),
                    children_maxrss_kb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                    machine_cpu_s=machine, fit_s=float(fit.group(1)) if fit else None, rows=rows,
                    cpu_by_role=cpu_by_role)


# --- the same jobs in a plain pool ---

def _train(config: TrainConfig) -> tuple[float, float, float]:
    started = time.time()  # before the import: a trial's trainer process imports torch in its first job too
    from trainers.loop import keep_freed_memory, run

    keep_freed_memory()  # as a trial's trainer process does
    result = run(config)
    return started, time.time(), result.wall_s


def run_pool(configs: list[TrainConfig]) -> tuple[list[tuple[float, float, float]], float]:
    """(start, end, training seconds) per job, in a fresh spawn pool; and the machine's busy CPU seconds."""
    cpu_before = machine_cpu_s()
    with mp.get_context("spawn").Pool(CONCURRENCY) as pool:
        spans = pool.map(_train, configs, chunksize=1)
    return spans, machine_cpu_s() - cpu_before


# --- what to print ---

def blocks(ends: list[float]) -> list[float]:
    """Seconds per BLOCK jobs, by end time: block k runs from the end of block k-1's last job to the end of
    its own last job; block 0 from the first job's end (start-up left out), scaled to BLOCK jobs."""
    ends = sorted(ends)
    if len(ends) < BLOCK:
        return [(ends[-1] - ends[0]) * BLOCK / max(1, len(ends) - 1)]
    out = [(ends[BLOCK - 1] - ends[0]) * BLOCK / (BLOCK - 1)]
    for k in range(1, len(ends) // BLOCK):
        out.append(ends[(k + 1) * BLOCK - 1] - ends[k * BLOCK - 1])
    return out


def files_left(root: str) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """(files, bytes) under root, and per part: trials, curves, checkpoints, logs, tune, other."""
    total_files = total_bytes = 0
    parts: dict[str, tuple[int, int]] = {}
    for directory, _, names in os.walk(root):
        relative = Path(directory).relative_to(root).parts
        part = relative[0] if relative else "."
        if part == "sweeps" and len(relative) >= 3:
            part = relative[2]  # sweeps/<name>/{checkpoints,logs,tune}
        elif part == "sweeps":
            part = "sweeps (own files)"
        for name in names:
            size = os.lstat(os.path.join(directory, name)).st_size
            total_files, total_bytes = total_files + 1, total_bytes + size
            files, nbytes = parts.get(part, (0, 0))
            parts[part] = (files + 1, nbytes + size)
    return total_files, total_bytes, parts


def _epoch(column: pl.Series) -> list[float]:
    return (column.dt.epoch("us") / 1e6).to_list()


def report(label: str, n_jobs: int, sweep: SweepRun, pool: list[tuple[float, float, float]], pool_cpu_s: float,
           root: str, trials: int, packing: int, target_ratio: bool) -> float:
    rows = sweep.rows
    assert rows.height == n_jobs, f"{rows.height} rows for {n_jobs} jobs"
    assert (rows["status"] == store.COMPLETED).all(), rows["status"].value_counts()
    assert (rows["steps_run"] == BASE["max_steps"]).all(), rows["steps_run"].value_counts()
    starts, ends = _epoch(rows["started_at"]), _epoch(rows["ended_at"])
    sweep_s = max(ends) - min(starts)
    pool_s = max(e for _, e, _ in pool) - min(s for s, _, _ in pool)
    ratio = sweep_s / pool_s
    sweep_blocks, pool_blocks = blocks(ends), blocks([e for _, e, _ in pool])
    train_s = float(rows["wall_s"].sum())
    job_s = sum(e - s for s, e in zip(starts, ends, strict=True))
    slot_s = CONCURRENCY * sweep_s
    pool_train = sum(w for _, _, w in pool)
    pool_job = sum(e - s for s, e, _ in pool)
    n_files, n_bytes, parts = files_left(root)

    print(f"\n== {label}: {n_jobs} jobs in {trials} Tune trials (packs of {packing}), {CONCURRENCY} at a time ==")
    target = " (target <= 1.25)" if target_ratio else ""
    print(f"  groksweep   first start -> last end {sweep_s:8.2f} s   whole command {sweep.command_s:8.2f} s"
          + (f"   (Tuner.fit {sweep.fit_s:.1f} s)" if sweep.fit_s is not None else ""))
    print(f"  plain pool  first start -> last end {pool_s:8.2f} s")
    print(f"  ratio groksweep / pool (first start -> last end): {ratio:.3f}{target};  whole command / pool "
          f"{sweep.command_s / pool_s:.3f}")
    print(f"  per job: groksweep {1000 * sweep_s / n_jobs * CONCURRENCY:.1f} ms of slot time, pool "
          f"{1000 * pool_s / n_jobs * CONCURRENCY:.1f} ms  (+{1000 * (sweep_s - pool_s) / n_jobs * CONCURRENCY:.1f} "
          "ms per job)")
    print(f"  s per {BLOCK} jobs by end time: groksweep first {sweep_blocks[0]:.2f}, last {sweep_blocks[-1]:.2f} "
          f"(last/first {sweep_blocks[-1] / sweep_blocks[0]:.2f}, target <= 1.2); pool first {pool_blocks[0]:.2f}, "
          f"last {pool_blocks[-1]:.2f}")
    if len(sweep_blocks) > 2:
        print("    every block, groksweep: " + " ".join(f"{b:.1f}" for b in sweep_blocks))
    print(f"  slot time {slot_s:.1f} s (= {CONCURRENCY} x first start -> last end): training {train_s:.1f} s "
          f"({train_s / n_jobs * 1000:.1f} ms/job), rest of each job (store, IPC) {job_s - train_s:.1f} s "
          f"({(job_s - train_s) / n_jobs * 1000:.1f} ms/job), between jobs {slot_s - job_s:.1f} s "
          f"({(slot_s - job_s) / n_jobs * 1000:.1f} ms/job)")
    print(f"  pool slot time {CONCURRENCY * pool_s:.1f} s: training {pool_train:.1f} s "
          f"({pool_train / n_jobs * 1000:.1f} ms/job), rest {pool_job - pool_train:.1f} s (first-job torch imports), "
          f"between jobs {CONCURRENCY * pool_s - pool_job:.1f} s")
    print(f"  machine CPU busy: groksweep command {sweep.machine_cpu_s:.1f} s, pool {pool_cpu_s:.1f} s; "
          f"driver process CPU {sweep.driver_cpu_s:.1f} s")
    if sweep.cpu_by_role:
        print("    groksweep's CPU by process (whole command): " + ", ".join(
            f"{role} {cpu:.1f} s" for role, cpu in sorted(sweep.cpu_by_role.items(), key=lambda item: -item[1])))
    target = " (target <= 1 GB at 10,000 jobs)" if n_jobs >= 10_000 else ""
    print(f"  driver peak RSS (VmHWM) {sweep.driver_hwm_kb / 1024:.0f} MB{target}; largest child incl. Ray "
          f"(ru_maxrss) {sweep.children_maxrss_kb / 1024:.0f} MB")
    if sweep.driver_rss:
        def rss_at(when: float) -> float:
            return min(sweep.driver_rss, key=lambda sample: abs(sample[0] - when))[1] / 1024

        top_at, top = max(sweep.driver_rss, key=lambda sample: sample[1])
        print(f"    driver RSS at the first job's start {rss_at(min(starts)):.0f} MB, halfway "
              f"{rss_at((min(starts) + max(ends)) / 2):.0f} MB, at the last job's end {rss_at(max(ends)):.0f} MB; "
              f"highest polled {top / 1024:.0f} MB, {top_at - max(ends):+.1f} s from the last job's end")
    print(f"  left in the results root: {n_files} files, {n_bytes / 1e6:.1f} MB")
    for part, (files, nbytes) in sorted(parts.items(), key=lambda kv: -kv[1][1]):
        print(f"    {part:20s} {files:7d} files {nbytes / 1e6:9.2f} MB")
    return ratio


# --- the sizes ---

def grid_size(n_jobs: int, pack: int | None, base_root: str, repo: Path, method: str = "grid") -> float:
    name = f"scale-{n_jobs}"
    raw = grid_spec(name, n_jobs, pack) if method == "grid" else random_spec(name, n_jobs)
    spec: SweepSpec = parse_spec(raw)
    jobs = expected_jobs(spec)
    configs = [train_config(spec, job) for job in jobs]
    size = pack_size(spec, len(jobs))
    root = os.path.join(base_root, f"{method}-{n_jobs}")
    shutil.rmtree(root, ignore_errors=True)
    print(f"\n{n_jobs} jobs ({method}): groksweep sweep, then the pool (CPU lock held for both) ...", flush=True)
    with cpu_lock():
        sweep = run_groksweep(raw, root, f"{root}.log", repo)
        pool, pool_cpu = run_pool(configs)
    return report(f"{method}, {n_jobs} jobs", n_jobs, sweep, pool, pool_cpu, root, len(pack_sizes(spec, n_jobs)), size,
                  target_ratio=n_jobs >= 2000)


def optuna_size(base_root: str, repo: Path) -> float:
    raw = optuna_spec("scale-optuna")
    n_jobs = OPTUNA_SAMPLES * OPTUNA_SEEDS
    root = os.path.join(base_root, "optuna")
    shutil.rmtree(root, ignore_errors=True)
    print(f"\nOptuna: {OPTUNA_SAMPLES} configurations x {OPTUNA_SEEDS} seeds: groksweep sweep, then the pool over "
          "the configurations it chose (CPU lock held for both) ...", flush=True)
    with cpu_lock():
        sweep = run_groksweep(raw, root, f"{root}.log", repo)
        rows = sweep.rows.sort("optuna_trial", "seed")
        configs = [resolve({**BASE, "weight_decay": r["weight_decay"], "lr": r["lr"], "seed": r["seed"]})
                   for r in rows.iter_rows(named=True)]
        pool, pool_cpu = run_pool(configs)
    return report(f"optuna (TPE), {n_jobs} jobs", n_jobs, sweep, pool, pool_cpu, root, OPTUNA_SAMPLES,
                  OPTUNA_SEEDS, target_ratio=True)


def sampler_cost(directory: str) -> None:
    """ask + tell on a TPE study with the Optuna sweep's space and a journal file, as the study grows."""
    import optuna

    from orchestrator.optuna_search import open_study
    from orchestrator.spec import optuna_space

    spec = parse_spec(optuna_spec("sampler-cost"))
    space = optuna_space(spec)
    journal = os.path.join(directory, "sampler-cost.journal")
    if os.path.exists(journal):
        os.remove(journal)
    study = open_study(spec, journal)
    memory = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="minimize")
    asks: dict[str, list[float]] = {"journal": [], "memory": []}
    tells: dict[str, list[float]] = {"journal": [], "memory": []}
    with cpu_lock():
        for number in range(OPTUNA_SAMPLES):
            for kind, target in (("journal", study), ("memory", memory)):
                started = time.perf_counter()
                trial = target.ask(space)
                if kind == "journal":  # as ProposalSearcher.suggest does
                    trial.set_user_attr("trial_ids", [f"c{number:04d}-s{s}" for s in spec.seeds])
                    trial.set_user_attr("seeds", list(spec.seeds))
                asked = time.perf_counter()
                value = 60 + 100 * abs(trial.params["weight_decay"] - 1) + 1000 * trial.params["lr"]
                target.tell(trial, value)
                asks[kind].append(asked - started)
                tells[kind].append(time.perf_counter() - asked)
    print("\nOptuna sampler cost (TPE, 2 log-uniform parameters; ms per ask / tell, mean of the 10 trials "
          "ending at N; the journal study also writes the sweep's two user attributes per ask):")
    for kind in ("journal", "memory"):
        shown = ", ".join(f"N={n}: ask {1000 * statistics.mean(asks[kind][n - 10:n]):.1f} / tell "
                          f"{1000 * statistics.mean(tells[kind][n - 10:n]):.1f}" for n in (10, 100, OPTUNA_SAMPLES))
        total = sum(asks[kind]) + sum(tells[kind])
        print(f"  {kind + ' storage':16s} {shown}; all {OPTUNA_SAMPLES} trials {total:.2f} s")


# --- batched models on one GPU against K trials sharing it ---

GPU_MEMBERS = (1, 8, 32, 64)


def gpu_spec(name: str, preset_name: str, n_jobs: int, k: int, batched: bool, cores: float, gpu: float,
             max_steps: int | None) -> dict[str, Any]:
    """n_jobs random (lr, weight decay) points, one seed each, so jobs grok at different steps."""
    base: dict[str, Any] = {"preset": preset_name, **({"max_steps": max_steps} if max_steps else {})}
    lr = {"tiny": (3e-3, 2e-2)}.get(preset_name, (5e-4, 3e-3))
    raw: dict[str, Any] = {
        "name": name, "base": base, "method": "random", "num_samples": n_jobs, "search_seed": 0, "seeds": [0],
        "metric": {"name": "steps_to_generalize", "goal": "minimize"},
        "parameters": {"weight_decay": {"distribution": "log_uniform_values", "min": 0.3, "max": 5.0},
                       "lr": {"distribution": "log_uniform_values", "min": lr[0], "max": lr[1]}},
        "report_every_s": 1, "keep_checkpoints": "none"}
    if batched:
        raw.update(pack=k, batched="on", max_concurrent=1, resources={"cpu": cores, "gpu": gpu})
    else:
        raw.update(pack=1, batched="off", max_concurrent=k, resources={"cpu": cores / k, "gpu": gpu / k})
    return raw


def gpu_compare(base_root: str, repo: Path, smoke: bool) -> None:
    """jobs/s of K members per batched model against K separate trials sharing the device."""
    presets = ("tiny",) if smoke else ("gromov", "nanda2023")
    ks = (1, 4) if smoke else GPU_MEMBERS
    cores, gpu = (1.0, 0.0) if smoke else (float(os.cpu_count() or 1), 1.0)
    max_steps = 300 if smoke else None
    device = "CPU (smoke: batched forced on, no speed-up expected)" if smoke else "GPU"
    print(f"\nbatched models vs K trials sharing the {device}; {cores:g} cores, gpu {gpu:g}; 4K jobs per K")
    for preset_name in presets:
        for k in ks:
            n_jobs = 4 * k
            line = []
            rates = {}
            for batched in (True, False):
                name = f"gpu-{preset_name}-k{k}-{'batched' if batched else 'separate'}"
                raw = gpu_spec(name, preset_name, n_jobs, k, batched, cores, gpu, max_steps)
                root = os.path.join(base_root, name)
                shutil.rmtree(root, ignore_errors=True)
                with cpu_lock():
                    sweep = run_groksweep(raw, root, f"{root}.log", repo)
                rows = sweep.rows
                assert rows.height == n_jobs and (rows["status"] == store.COMPLETED).all(), rows["status"].to_list()
                assert rows["batched"].all() == (batched and k > 1), "batched column"
                span = max(_epoch(rows["ended_at"])) - min(_epoch(rows["started_at"]))
                rates[batched] = n_jobs / span
                grokked = rows.filter(~pl.col("censored"))["steps_to_generalize"]
                steps = f"{grokked.min()}-{grokked.max()}" if grokked.len() else "none"
                line.append(f"{'batched' if batched else 'separate'} {span:8.1f} s {rates[batched]:7.3f} jobs/s "
                            f"(device {rows['device'][0]}, {grokked.len()}/{n_jobs} grokked at steps {steps})")
            print(f"  {preset_name:9s} K={k:2d}: " + "; ".join(line)
                  + f"; ratio {rates[True] / rates[False]:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="400,2000", help="grid sizes in jobs, comma-separated (multiples of 50); "
                        "'none' for none")
    parser.add_argument("--full", action="store_true", help="add 10,000 jobs")
    parser.add_argument("--random", action="store_true", help="add a random sweep of 2,000 jobs (200 log-uniform "
                        "configurations x 10 seeds) against the pool")
    parser.add_argument("--optuna", action="store_true", help="add the Optuna sweep (2,000 jobs) and the sampler cost")
    parser.add_argument("--pack", type=int, default=None, help="the spec key `pack` (jobs per Tune trial) for the "
                        "grid sweeps; default: groksweep's rule")
    parser.add_argument("--gpu", action="store_true", help="batched models on one GPU vs K trials sharing it")
    parser.add_argument("--gpu-smoke", action="store_true", help="the --gpu path forced onto the CPU, small")
    parser.add_argument("--results", default=None, help="results root (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp results root")
    parser.add_argument("--repo", type=Path, default=REPO, help="run `groksweep sweep` from this source tree "
                        "(e.g. an unpacked `git archive HEAD`; default: this checkout)")
    args = parser.parse_args()
    sizes = [] if args.sizes == "none" else [int(s) for s in args.sizes.split(",") if s]
    if args.full and 10_000 not in sizes:
        sizes.append(10_000)
    base_root = args.results or tempfile.mkdtemp(prefix="gsscale")
    os.makedirs(base_root, exist_ok=True)
    print(f"scale: results under {base_root}; {os.cpu_count()} CPUs; groksweep from {args.repo}")
    if sizes or args.optuna or args.random:
        print(f"  grid/optuna: tiny preset, {BASE['max_steps']} steps (eval every {BASE['eval_every']}), 1 thread "
              f"per job, {CONCURRENCY} at a time")
    try:
        ratios: dict[Any, float] = {n: grid_size(n, args.pack, base_root, args.repo.resolve()) for n in sizes}
        if args.random:
            ratios["random"] = grid_size(2000, args.pack, base_root, args.repo.resolve(), method="random")
        if args.optuna:
            ratios["optuna"] = optuna_size(base_root, args.repo.resolve())
            sampler_cost(base_root)
        if args.gpu or args.gpu_smoke:
            gpu_compare(base_root, args.repo.resolve(), smoke=args.gpu_smoke)
        if not ratios:
            return
        print("\nsummary: ratio groksweep / pool (first start -> last end): "
              + ", ".join(f"{k}: {v:.3f}" for k, v in ratios.items()))
    finally:
        if args.results is None and not args.keep:
            shutil.rmtree(base_root, ignore_errors=True)
        else:
            print(f"results kept under {base_root}")


if __name__ == "__main__":
    main()
