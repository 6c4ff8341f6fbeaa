"""A synthetic grid sweep written with the real store functions (rows, curves, spec, compaction): grokking-shaped
curves without training, so report tests and the 10,000-job size benchmark take seconds, not hours.

Each job memorises at a step set by its lr and generalises later by a delay that shrinks with weight decay;
jobs whose generalisation falls past max_steps end censored, and every `fail_every`-th job failed.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from orchestrator import store
from orchestrator.jobs import expected_jobs
from orchestrator.spec import parse_spec
from orchestrator.sweep import META_FILE, SPEC_FILE


def spec_dict(name: str, weight_decays: list[float], lrs: list[float], seeds: int, max_steps: int,
              samples: int = 0) -> dict[str, Any]:
    """A grid over the given values, or (samples > 0) a random search of that many configurations over
    log-uniform ranges spanning them."""
    raw = {"name": name, "base": {"preset": "tiny", "max_steps": max_steps, "eval_every": 20}, "method": "grid",
           "metric": {"name": "steps_to_generalize", "goal": "minimize"},
           "parameters": {"weight_decay": {"values": weight_decays}, "lr": {"values": lrs}},
           "seeds": list(range(seeds)), "max_concurrent": 2}
    if samples:
        raw.update(method="random", num_samples=samples, search_seed=0, parameters={
            "weight_decay": {"distribution": "log_uniform_values", "min": min(weight_decays),
                             "max": max(weight_decays)},
            "lr": {"distribution": "log_uniform_values", "min": min(lrs), "max": max(lrs)}})
    return raw


def write_sweep(root: str | Path, name: str = "synth", weight_decays: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0),
                lrs: tuple[float, ...] = (1e-3, 3e-3), seeds: int = 3, max_steps: int = 2000, fail_every: int = 0,
                extra_measures: bool = False, compact: bool = True, samples: int = 0) -> list[str]:
    """Write the sweep; return its job ids. `extra_measures`: curves also hold fourier_sparsity values;
    `samples`: a random search of that many configurations instead of the grid."""
    root = str(root)
    raw = spec_dict(name, list(weight_decays), list(lrs), seeds, max_steps, samples)
    spec = parse_spec(raw)
    store.write_sweep_file(root, name, SPEC_FILE, yaml.safe_dump(raw, sort_keys=False).encode())
    meta = {"name": name, "method": spec.method, "n_jobs": spec.n_jobs, "n_trials": spec.n_jobs}
    store.write_sweep_file(root, name, META_FILE, json.dumps(meta).encode())
    rng = np.random.default_rng(0)
    steps = np.arange(0, max_steps + 1, 20)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    ids = []
    for index, job in enumerate(expected_jobs(spec)):
        wd, lr = job.values["weight_decay"], job.values["lr"]
        t_mem = 100 * (3e-3 / lr) ** 0.5 * rng.uniform(0.8, 1.2)
        t_gen = t_mem + 600 * wd ** -0.6 * rng.uniform(0.7, 1.4)
        failed = fail_every and index % fail_every == fail_every - 1
        grokked = t_gen + 160 < max_steps
        end = int(min(max_steps, (t_gen // 20 + 8) * 20)) if grokked else max_steps
        if failed:
            end = 200
        kept = steps[steps <= end]
        train = 1 / (1 + np.exp(-(kept - t_mem) / 15))
        val = 0.01 + 0.99 / (1 + np.exp(-(kept - t_gen) / 12))
        curve = pl.DataFrame({"step": kept, "train_acc": train, "val_acc": val, "train_loss": 4 * (1 - train) + 1e-3,
                              "val_loss": 4 * (1 - val) + 1e-3, "weight_norm": 30 - 10 * val,
                              "fourier_sparsity": val * 0.9 if extra_measures else [None] * kept.size})
        store.write_curve_frame(root, name, job.job_id, curve)
        mem = next((int(s) for s, a in zip(kept, train, strict=True) if a >= 0.99), None)
        gen = next((int(s) for s, a in zip(kept, val, strict=True) if a >= 0.99), None)
        config = spec.trial_config({k: v for k, v in job.values.items()}, job.seed)
        events = {"steps_to_memorize": mem, "steps_to_generalize": gen,
                  "steps_to_generalize_95": gen, "grokking_delay": None if gen is None or mem is None else gen - mem}
        final = {"train_acc": float(train[-1]), "val_acc": float(val[-1]), "train_loss": 0.1, "val_loss": 0.1,
                 "weight_norm": 20.0}
        status = store.FAILED if failed else store.COMPLETED
        row = store.trial_row(name, job.job_id, config, status, steps_run=int(end), wall_s=end / 500,
                              events=events, censored=None if failed else gen is None, final_metrics=final,
                              device="cpu", started_at=start + dt.timedelta(seconds=index),
                              ended_at=start + dt.timedelta(seconds=index + end / 500),
                              error="RuntimeError: synthetic failure" if failed else None, pack_size=1)
        store.write_trial_row(root, row, known_not_final=True)
        ids.append(job.job_id)
    if compact:
        store.compact_sweep(root, name)
    return ids
