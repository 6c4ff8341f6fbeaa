"""The batched model (trainers/batched.py) against the same jobs trained one after another, in one process:
jobs per second with K members per batched model, and ended members compacted out vs masked.

The jobs grok at different steps (weight decay and lr spread over a grid, stop_on_generalize on), so members
leave the batch one by one: that is where compacting (drop their rows) and masking (keep them, zero their
update) differ. Timed on whatever device `trainers.run` picks (CUDA when present).

    .venv/bin/python benchmarks/batched_speed.py                       # tiny, K = 1, 8, 32 (CPU: ~1 minute)
    .venv/bin/python benchmarks/batched_speed.py --preset gromov --members 1,8,32,64
    python3 benchmarks/batched_speed.py --preset gromov --members 64,8,1 --max-steps 1000 --separate
        # on a GPU (torch only): the issue's comparison, end to end over 4K jobs per K: K-member batched models
        # vs K separate processes sharing the device at once (as K Tune trials at {gpu: 1/K} would), each
        # training its share of the same jobs; K = 64, the target, first
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import itertools
import time

import torch

from trainers.batched import run_batched
from trainers.config import preset
from trainers.loop import pick_device, run

LOCK_FILE = "/tmp/groksweep-cpu.lock"
WEIGHT_DECAYS = [0.5, 1.0, 2.0, 3.0, 5.0]
LEARNING_RATES = {"tiny": [5e-3, 1e-2], "gromov": [1e-3, 2e-3], "nanda2023": [1e-3, 2e-3]}


def configs(name: str, k: int, max_steps: int | None, threads: int) -> list:
    grid = itertools.cycle(itertools.product(LEARNING_RATES.get(name, [1e-3]), WEIGHT_DECAYS))
    overrides = {"threads": threads, **({"max_steps": max_steps} if max_steps else {})}
    return [preset(name, lr=lr, weight_decay=wd, seed=seed, **overrides)
            for seed, (lr, wd) in zip(range(k), grid, strict=False)]


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    from trainers.loop import keep_freed_memory

    keep_freed_memory()  # both sides, as groksweep's trainer process does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--members", default="1,8,32", help="K values, comma-separated")
    parser.add_argument("--max-steps", type=int, default=None, help="override the preset's budget")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sequential-jobs", type=int, default=10, help="jobs timed alone, one after another: the "
                        "first N members (10 = one cycle of the lr x weight-decay grid); member i costs what i % N did")
    parser.add_argument("--separate", action="store_true", help="instead: 4K jobs per K, as batched models of K "
                        "against K concurrent processes sharing the device (jobs/s end to end)")
    args = parser.parse_args()
    ks = [int(k) for k in args.members.split(",")]
    if args.separate:
        separate_vs_batched(args.preset, ks, args.max_steps, args.threads)
        return
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        print(f"{args.preset} on {pick_device()}, {args.threads} thread(s); jobs grok at different steps")
        run_batched(configs(args.preset, 2, 20, args.threads))  # warm-up (CUDA context, kernels)
        widest = configs(args.preset, max(ks), args.max_steps, args.threads)
        n = min(args.sequential_jobs, len(widest))
        alone = [timed(lambda c=c: run(c)) for c in widest[:n]]  # member i alone ~ alone[i % n] (the grid cycles)
        print(f"  alone, one after another: {n} jobs in {sum(alone):.2f} s = {n / sum(alone):.2f} jobs/s")
        for k in ks:
            members = widest[:k]
            baseline = sum(alone[i % n] for i in range(k))  # the same K jobs alone, one after another
            line = [f"  K={k:3d} alone {baseline:7.2f} s"]
            for ended in ("compact", "mask"):
                seconds = timed(lambda members=members, ended=ended: run_batched(members, ended=ended))
                line.append(f"{ended}: {seconds:7.2f} s, {k / seconds:7.2f} jobs/s ({baseline / seconds:5.2f}x alone)")
            print("   ".join(line), flush=True)


def _separate_worker(jobs: list, barrier, results) -> None:
    """One of K processes sharing the device: CUDA initialised before the clock (a trial's trainer pays it
    once), then its jobs one after another."""
    from trainers.loop import keep_freed_memory, run

    keep_freed_memory()
    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")
    run(dataclasses.replace(jobs[0], max_steps=20))  # warm-up kernels, as a trial's first job did
    barrier.wait()
    started = time.time()
    for config in jobs:
        run(config)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    results.put((started, time.time()))


def flops_per_member_step(name: str, threads: int) -> float:
    """Floating-point operations of one member's training step, counted by torch (FlopCounterMode) on a
    2-member model as the difference of 4 and 2 steps (evaluations excluded): compared with the device's
    fp32 peak it says how far from the hardware's floor a jobs/s figure is."""
    from torch.utils.flop_counter import FlopCounterMode

    def counted(steps: int) -> int:
        members = [dataclasses.replace(c, eval_every=10_000) for c in configs(name, 2, steps, threads)]
        with FlopCounterMode(display=False) as counter:
            run_batched(members)
        return counter.get_total_flops()

    return (counted(4) - counted(2)) / 2 / 2


def separate_vs_batched(name: str, ks: list[int], max_steps: int | None, threads: int) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    print(f"{name} on {pick_device()}: per K, 4K jobs (lr x weight decay x seed, grokking at different steps)",
          flush=True)
    run_batched(configs(name, 2, 20, threads))  # warm-up in this process
    flops = flops_per_member_step(name, threads)
    print(f"  {flops / 1e9:.2f} GFLOP per member training step (torch's count; evaluations not included): "
          "TFLOP/s below = that x member-steps / s, to set against the device's fp32 peak", flush=True)
    for k in ks:
        jobs = configs(name, 4 * k, max_steps, threads)
        ran: list = []
        batched_s = timed(lambda jobs=jobs, k=k, ran=ran: [ran.extend(run_batched(jobs[i:i + k]))
                                                           for i in range(0, len(jobs), k)])
        member_steps = sum(r.steps_run for r in ran)  # the separate processes run the same jobs, as many steps
        barrier, results = ctx.Barrier(k), ctx.Queue()
        workers = [ctx.Process(target=_separate_worker, args=(jobs[i::k], barrier, results)) for i in range(k)]
        for w in workers:
            w.start()
        spans = [results.get(timeout=3600) for _ in workers]
        for w in workers:
            w.join()
        separate_s = max(end for _, end in spans) - min(start for start, _ in spans)
        print(f"  K={k:3d}: {4 * k} jobs  batched {batched_s:8.2f} s = {4 * k / batched_s:8.2f} jobs/s   "
              f"{k} separate processes {separate_s:8.2f} s = {4 * k / separate_s:8.2f} jobs/s   "
              f"ratio {separate_s / batched_s:6.2f}x   ({member_steps} member-steps: batched "
              f"{flops * member_steps / batched_s / 1e12:.2f} TFLOP/s, "
              f"separate {flops * member_steps / separate_s / 1e12:.2f})", flush=True)


if __name__ == "__main__":
    main()
