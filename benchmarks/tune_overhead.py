"""What Ray Tune costs, and what stop-on-generalise saves. Run under the team's CPU lock:

    flock /tmp/groksweep-cpu.lock /work/venv/bin/python benchmarks/tune_overhead.py [--trials 12] [--steps 1500]
        [--repeats 5] [--skip-saved] [--skip-where]

1. Overhead: the same trials (a fixed number of steps each: stop_on_generalize off) through a groksweep
   sweep and through a plain process pool running `trainers.run`, at the same concurrency and thread
   count, in one run. Prints the time from first trial start to last trial end for both, and their
   ratio (target <= 1.10); Ray start-up and shutdown separately.
2. Where a trial's training runs: the same trainers.run timed in a plain pool process, directly inside a
   Ray worker process, and in a child process that a Ray worker starts (what groksweep's trials do,
   orchestrator/trainer_process.py). Median training seconds of each.
3. Compute saved: a small weight-decay study with stop_on_generalize on, against the same study with it
   off (each trial runs its whole max_steps). Prints the total trial-steps ratio and the median
   steps_to_generalize per weight decay in both, and whether they order the weight decays the same.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time

import polars as pl

from orchestrator.runtime import ray_session
from orchestrator.spec import parse_spec, points, trial_train_config
from orchestrator.sweep import run_sweep
from trainers.config import preset


def _train(config) -> tuple[float, float, int]:
    started = time.time()  # before the import: a Tune trial's first call imports torch inside the trial too
    from trainers.loop import keep_freed_memory, run

    keep_freed_memory()  # as a trial's trainer process does
    result = run(config)
    return started, time.time(), result.steps_run


def overhead_trials(trials: int, steps: int, concurrency: int) -> tuple:
    """The overhead sweep's spec and the very configs its Tune trials run."""
    weight_decays = [round(0.5 + 0.25 * i, 2) for i in range(trials)]
    base = {"preset": "tiny", "max_steps": steps, "stop_on_generalize": False, "threads": 1}
    spec = parse_spec({"name": "overhead", "base": base, "method": "grid", "max_concurrent": concurrency,
                       "parameters": {"weight_decay": {"values": weight_decays}}, "seeds": [0],
                       "resources": {"cpu": 1}})
    all_points = points(spec)
    return spec, [trial_train_config(spec, {"point": i, "seed": 0}, all_points) for i in range(trials)]


def overhead(trials: int, steps: int, concurrency: int, root: str, repeats: int) -> None:
    spec, configs = overhead_trials(trials, steps, concurrency)
    print(f"overhead: {trials} trials x {steps} steps (tiny MLP, 1 thread each), concurrency {concurrency}; "
          f"pool and Tune alternate, {repeats} rounds")
    ratios = []
    for round_ in range(repeats):
        # fresh worker processes that import torch in their first trial, as Tune's trial actors do
        with mp.get_context("spawn").Pool(concurrency) as pool:
            spans = pool.map(_train, configs, chunksize=1)
        pool_s = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)

        with ray_session(num_cpus=concurrency) as session:
            outcome = run_sweep(spec, results=root, overwrite=True)
        table = outcome.table
        assert table.height == trials and (table["steps_run"] == steps).all(), table
        tune_s = (table["ended_at"].max() - table["started_at"].min()).total_seconds()
        pool_trial = statistics.mean(end - start for start, end, _ in spans)
        tune_trial = statistics.mean((table["ended_at"] - table["started_at"]).dt.total_milliseconds() / 1000)
        ratios.append(tune_s / pool_s)
        print(f"  round {round_ + 1}: first start -> last end: pool {pool_s:6.2f} s, groksweep/Tune {tune_s:6.2f} s "
              f"(Tuner.fit {outcome.fit_s:.2f} s); mean trial pool {pool_trial:.3f} s, Tune {tune_trial:.3f} s; "
              f"ratio {tune_s / pool_s:.3f}")
        print(f"    Ray start-up {session.start_s:.2f} s, shutdown {session.shutdown_s:.2f} s (not in the ratio)")
    print(f"  ratio Tune / pool: median {statistics.median(ratios):.3f} over {repeats} rounds "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}; target <= 1.10)")


def _training_s(config) -> float:
    from trainers.loop import keep_freed_memory, run

    keep_freed_memory()
    return run(config).wall_s


def _training_s_in_child(configs: list, root: str) -> list[float]:
    """Inside a Ray worker: each config through a TrainerProcess, as a groksweep trial runs it."""
    from orchestrator.trainer_process import Batch, Finished, Job, TrainerProcess

    trainer, seconds = TrainerProcess(), []
    try:
        for i, config in enumerate(configs):
            job = Job(config=config.to_dict(), checkpoint_dir=f"{root}/child-{os.getpid()}-{i}", checkpoint_every=10**9,
                      checkpoint_every_s=0.0, report_every_s=10**9, prune_not_memorized_by=None)
            for message in trainer.run(job):
                if isinstance(message, Finished):
                    seconds.append(message.wall_s)
                elif isinstance(message, Batch) and message.checkpoint is not None:
                    trainer.release()
    finally:
        trainer.close()
    return seconds


def where_trials_run(trials: int, steps: int, concurrency: int, root: str, repeats: int) -> None:
    import ray

    _, configs = overhead_trials(trials, steps, concurrency)
    per_slot = [configs[i::concurrency] for i in range(concurrency)]
    seconds: dict[str, list[float]] = {"plain pool process": [], "inside a Ray worker": [],
                                       "child of a Ray worker (groksweep)": []}
    for _ in range(repeats):
        with mp.get_context("spawn").Pool(concurrency) as pool:
            seconds["plain pool process"] += pool.map(_training_s, configs, chunksize=1)[concurrency:]
        with ray_session(num_cpus=concurrency):
            direct = ray.remote(num_cpus=1)(lambda cs: [_training_s(c) for c in cs])
            in_child = ray.remote(num_cpus=1)(_training_s_in_child)
            seconds["inside a Ray worker"] += sum((s[1:] for s in ray.get([direct.remote(c) for c in per_slot])), [])
            seconds["child of a Ray worker (groksweep)"] += sum(
                (s[1:] for s in ray.get([in_child.remote(c, root) for c in per_slot])), [])
    base = statistics.median(seconds["plain pool process"])
    print(f"\nwhere a trial's training runs: {trials} x {steps} steps at concurrency {concurrency}, {repeats} rounds "
          "(median training seconds per trial, first trial of each process left out)")
    for where, values in seconds.items():
        print(f"  {where:34s} {statistics.median(values):.3f} s  ({statistics.median(values) / base:.3f} x pool)")


def compute_saved(root: str, concurrency: int) -> None:
    weight_decays = [1.0, 2.0, 3.0]
    rows = {}
    for stop in (True, False):
        spec = parse_spec({"name": f"saved-{'on' if stop else 'off'}", "method": "grid",
                           "base": {"preset": "tiny", "stop_on_generalize": stop},
                           "parameters": {"weight_decay": {"values": weight_decays}}, "seeds": [0, 1],
                           "max_concurrent": concurrency})
        with ray_session(num_cpus=concurrency):
            table = run_sweep(spec, results=root, overwrite=True).table
        rows[stop] = table
    steps_on, steps_off = (int(rows[s]["steps_run"].sum()) for s in (True, False))
    print(f"\ncompute saved: tiny preset, weight_decay {weight_decays} x 2 seeds, max_steps "
          f"{preset('tiny').max_steps}")
    print(f"  total trial-steps: stop-on-generalise {steps_on}, stopping off {steps_off}; "
          f"ratio {steps_on / steps_off:.3f} ({1 - steps_on / steps_off:.0%} saved)")
    medians = {}
    for stop, table in rows.items():
        m = (table.group_by("weight_decay").agg(pl.col("steps_to_generalize").median()).sort("weight_decay"))
        medians[stop] = m["steps_to_generalize"].to_list()
        print(f"  median steps_to_generalize by weight decay ({'on ' if stop else 'off'}): "
              + ", ".join(f"{wd}: {v}" for wd, v in zip(m["weight_decay"], medians[stop], strict=True)))
    order = {s: sorted(range(len(weight_decays)), key=lambda i: medians[s][i] or float("inf")) for s in medians}
    print(f"  same order of median time-to-grok: {order[True] == order[False]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="pool/Tune rounds (the median ratio is reported)")
    parser.add_argument("--skip-saved", action="store_true", help="skip the compute-saved study")
    parser.add_argument("--skip-where", action="store_true", help="skip timing where a trial's training runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gsbench") as root:
        overhead(args.trials, args.steps, args.concurrency, root, args.repeats)
        if not args.skip_where:
            where_trials_run(args.trials, args.steps, args.concurrency, root, args.repeats)
        if not args.skip_saved:
            compute_saved(root, args.concurrency)


if __name__ == "__main__":
    main()
