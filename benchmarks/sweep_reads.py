"""Reading a compacted 10,000-job sweep back: `status`, `query "select count(*) from curves"` and `study
--x weight_decay` (default bootstrap), each as the CLI in a fresh process, against the issue's targets
(2 s, 2 s, 5 s on 2 cores).

The sweep is the scale benchmark's (benchmarks/scale.py): tiny preset, 60 steps evaluated every 20, 10
weight decays x 5 learning rates x 200 seeds. Its tables are synthesised rather than trained (training
them is what scale.py measures): each job's curve is made up, and its row is derived from that curve
with the same function the trainable uses, so `check` holds on it. Written the way a finished sweep
leaves them: one compacted trials file and one compacted curves file.

    python benchmarks/sweep_reads.py [--jobs 10000] [--results DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

from orchestrator import store
from orchestrator.jobs import expected_jobs, outcome_from_curve, row_fields, train_config
from orchestrator.spec import parse_spec
from orchestrator.sweep import META_FILE, SPEC_FILE

NAME = "reads"
TARGETS = {"status": 2.0, "query": 2.0, "study": 5.0}


def spec_dict(jobs: int) -> dict:
    return {"name": NAME, "base": {"preset": "tiny", "max_steps": 60, "eval_every": 20, "stop_on_generalize": False,
                                   "threads": 1},
            "method": "grid", "parameters": {"weight_decay": {"values": [0.1 * (i + 1) for i in range(10)]},
                                             "lr": {"values": [1e-3, 2e-3, 3e-3, 5e-3, 1e-2]}},
            "seeds": list(range(jobs // 50))}


def synthesise(root: Path, jobs: int) -> None:
    raw = spec_dict(jobs)
    spec = parse_spec(raw)
    store.write_sweep_file(root, NAME, SPEC_FILE, yaml.safe_dump(raw, sort_keys=False).encode())
    store.write_sweep_file(root, NAME, META_FILE, json.dumps({"method": "grid", "n_jobs": spec.n_jobs}).encode())
    rng = random.Random(0)
    rows, curves = [], []
    for job in expected_jobs(spec):
        config = train_config(spec, job)
        grok = rng.choice([None, 20, 40, 60])
        history = [{"step": s, "train_loss": 1.0 / (s + 1), "train_acc": min(1.0, 0.4 + s / 50),
                    "val_loss": 2.0 / (s + 1), "val_acc": 1.0 if grok is not None and s >= grok else 0.1,
                    "weight_norm": 10.0, "fourier_sparsity": 0.3, "softmax_collapse": 0.0} for s in (0, 20, 40, 60)]
        rows.append(store.trial_row(NAME, job.job_id, config, store.COMPLETED, wall_s=0.05, started_at=1.0,
                                    ended_at=2.0, pack_size=125, batched=False,
                                    **row_fields(outcome_from_curve(history))))
        curves.extend({"sweep": NAME, "trial_id": job.job_id, **h} for h in history)
    trial_dir = root / "trials" / NAME
    curve_dir = root / "curves" / NAME
    trial_dir.mkdir(parents=True)
    curve_dir.mkdir(parents=True)
    pl.DataFrame(rows, schema=store.TRIAL_SCHEMA).write_parquet(trial_dir / f"{time.time_ns():020d}-sweep.parquet")
    pl.DataFrame(curves, schema=store.CURVE_SCHEMA).write_parquet(curve_dir / f"{time.time_ns():020d}-sweep.parquet")


def timed(args: list[str], repeats: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        out = done.stdout
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--results", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.results or tempfile.mkdtemp(prefix="gsreads"))
    try:
        if not (root / "trials" / NAME).exists():
            synthesise(root, args.jobs)
        r = ["--results", str(root)]
        commands = {"status": ["status", NAME, *r],
                    "query": ["query", "select count(*) as n from curves", *r],
                    "study": ["study", NAME, "--x", "weight_decay", *r],
                    "check": ["check", NAME, *r]}
        print(f"a compacted sweep of {args.jobs} jobs under {root}; each command in a fresh process, median of "
              f"{args.repeats}")
        for what, command in commands.items():
            seconds, out = timed(command, args.repeats)
            target = TARGETS.get(what)
            met = target is None or seconds <= target
            verdict = "" if target is None else f"  (target <= {target:.0f} s: {'met' if met else 'MISSED'})"
            print(f"  {what:<7} {seconds:6.2f} s{verdict}")
    finally:
        if args.results is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
