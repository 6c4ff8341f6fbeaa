"""Budget where it changes the answer: one study run four ways, side by side in one run.

The study mixes fast, slow and never-grokking cells: the `tiny` MLP (p = 31; `--gromov`: the gromov MLP at
p = 59, width 256) over train_fraction x weight_decay x 5 seeds, 1 torch thread, 2 jobs at a time, on
embedded local Ray. The four ways:
  (a) a fixed small budget (max_steps = SMALL);
  (b) a fixed budget equal to extend_to (max_steps = LARGE);
  (c) `budget: {max_steps: SMALL, extend_to: LARGE, until: median_known}` -- censored jobs of cells whose
      Kaplan-Meier median is not yet known continue from their checkpoints, the budget doubling per round;
  (d) what users do without it: rerun the whole sweep from step 0 with the budget doubled until every
      cell's median is known or LARGE is reached.
Printed per cell: each way's KM median of steps_to_generalize ("> B" when not known at budget B); then
each way's total trial-steps (the sum of every job's steps_run over every run) and wall time, and the
ratios (c)/(b) and (c)/(d). Targets: (c) gives (b)'s median wherever (b) has one; (c) spends fewer
trial-steps than (b) and than (d); (a) misses medians that (c) finds.

Run (it takes the team's CPU lock, /tmp/groksweep-cpu.lock, itself):

    .venv/bin/python benchmarks/budget.py                # ~5 minutes on 2 cores
    .venv/bin/python benchmarks/budget.py --gromov       # the gromov-shaped study (~20 minutes)
    .venv/bin/python benchmarks/budget.py --train-on     # grokked jobs train on to their budget
"""

from __future__ import annotations

import argparse
import fcntl
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import budgets, store  # noqa: E402
from orchestrator.runtime import ray_session  # noqa: E402
from orchestrator.spec import parse_spec  # noqa: E402
from orchestrator.studies import km_median  # noqa: E402
from orchestrator.sweep import run_sweep  # noqa: E402

STUDIES = {
    "tiny": dict(base={"preset": "tiny", "threads": 1}, small=200, large=3200,
                 train_fraction=[0.35, 0.45, 0.6], weight_decay=[0.3, 1.0, 3.0]),
    "gromov": dict(base={"preset": "gromov", "p": 59, "width": 256, "threads": 1}, small=500, large=8000,
                   train_fraction=[0.15, 0.25, 0.4, 0.6], weight_decay=[0.1, 0.3, 1.0]),
}
SEEDS = [0, 1, 2, 3, 4]


def spec_raw(study: dict, name: str, max_steps: int | None = None, budget: bool = False) -> dict:
    raw = {"name": name, "base": dict(study["base"]), "method": "grid", "seeds": SEEDS, "max_concurrent": 2,
           "parameters": {"train_fraction": {"values": study["train_fraction"]},
                          "weight_decay": {"values": study["weight_decay"]}}}
    if budget:
        raw["budget"] = {"max_steps": study["small"], "extend_to": study["large"], "until": "median_known"}
    else:
        raw["base"]["max_steps"] = max_steps
    return raw


def medians(root: Path, name: str) -> dict[tuple[float, float], float | None]:
    rows = store.collect(lambda: store.trials(root, [name]))
    out = {}
    for (tf, wd), group in rows.group_by("train_fraction", "weight_decay"):
        observed = (~group["censored"]).to_numpy()
        times = np.where(observed, group["steps_to_generalize"].fill_null(0).to_numpy(),
                         group["steps_run"].to_numpy()).astype(float)
        out[(tf, wd)] = km_median(times, observed).median
    return out


def trial_steps(root: Path, name: str) -> int:
    return int(store.collect(lambda: store.trials(root, [name]).select(pl.col("steps_run").sum())).item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gromov", action="store_true", help="the gromov-shaped study (~20 minutes)")
    parser.add_argument("--train-on", action="store_true", help="stop_on_generalize: false (jobs that grok train "
                        "on to their budget, as when the post-jump dynamics are studied)")
    args = parser.parse_args()
    study = dict(STUDIES["gromov" if args.gromov else "tiny"])
    if args.train_on:
        study["base"] = {**study["base"], "stop_on_generalize": False}
    small, large = study["small"], study["large"]
    root = Path(tempfile.mkdtemp(prefix="groksweep-budget-"))
    with open("/tmp/groksweep-cpu.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with ray_session(num_cpus=2):
            ways: dict[str, dict] = {}

            def timed(label: str, runs: list[str], run) -> None:
                started = time.perf_counter()
                run()
                ways[label] = {"runs": runs, "wall_s": time.perf_counter() - started}

            timed("a", ["a"], lambda: run_sweep(parse_spec(spec_raw(study, "a", small)), results=root))
            timed("b", ["b"], lambda: run_sweep(parse_spec(spec_raw(study, "b", large)), results=root))
            timed("c", ["c"], lambda: run_sweep(parse_spec(spec_raw(study, "c", budget=True)), results=root))

            reruns: list[str] = []

            def doubling() -> None:
                budget = small
                while True:
                    name = f"d{budget}"
                    run_sweep(parse_spec(spec_raw(study, name, budget)), results=root)
                    reruns.append(name)
                    if all(m is not None for m in medians(root, name).values()) or budget >= large:
                        return
                    budget = min(2 * budget, large)

            timed("d", reruns, doubling)

    cells = sorted(medians(root, "b"))
    found = {way: medians(root, info["runs"][-1]) for way, info in ways.items()}
    budget_of = {"a": small, "b": large, "c": None, "d": int(ways["d"]["runs"][-1][1:])}
    groups = budgets.group_budgets(root, parse_spec(spec_raw(study, "c", budget=True)))
    c_budget = {(float(r["train_fraction"]), float(r["weight_decay"])): r["budget"]
                for r in groups.iter_rows(named=True)}

    def shown(way: str, cell: tuple[float, float]) -> str:
        value = found[way].get(cell)
        limit = budget_of[way] or c_budget.get(cell)
        return f"{value:.0f}" if value is not None else f"> {limit}"

    print(f"\nstudy: {'gromov p=59 width 256' if args.gromov else 'tiny (p=31)'}, {len(cells)} cells x "
          f"{len(SEEDS)} seeds; budgets {small} and {large}; stop_on_generalize "
          f"{'off' if args.train_on else 'on'}\n")
    print(f"{'train_fraction':>14} {'weight_decay':>12} | {'(a) fixed small':>15} {'(b) fixed large':>15} "
          f"{'(c) budget':>12} {'(d) rerun x2':>13} | (c) budget reached")
    agree, a_misses = True, 0
    for cell in cells:
        print(f"{cell[0]:>14} {cell[1]:>12} | {shown('a', cell):>15} {shown('b', cell):>15} {shown('c', cell):>12} "
              f"{shown('d', cell):>13} | {c_budget.get(cell)}")
        if found["b"][cell] is not None and found["c"][cell] != found["b"][cell]:
            agree = False
        if found["c"][cell] is not None and found["a"][cell] is None:
            a_misses += 1
    steps = {way: sum(trial_steps(root, run) for run in info["runs"]) for way, info in ways.items()}
    print()
    for way, label in [("a", "fixed small"), ("b", "fixed large"), ("c", "budget rounds"),
                       ("d", f"rerun x2 ({len(ways['d']['runs'])} runs)")]:
        print(f"({way}) {label:<22} trial-steps {steps[way]:>9,}   wall {ways[way]['wall_s']:7.1f} s")
    print(f"\n(c)/(b) trial-steps: {steps['c'] / steps['b']:.2f}    (c)/(d) trial-steps: {steps['c'] / steps['d']:.2f}")
    print(f"(c) gives (b)'s median wherever (b) has one: {'yes' if agree else 'NO'}; "
          f"(a) misses {a_misses} median(s) that (c) finds")
    print(f"results left in {root}")


if __name__ == "__main__":
    main()
