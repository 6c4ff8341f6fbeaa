"""How fast are the result tables? A study and a typical query over 10 million synthetic curve rows, against
the same work done the way a bare Ray Tune user would: read every trial's result.json with polars.

The same synthetic sweep (10,000 trials x 1,000 evaluations by default) is written twice: through the store
(one compacted Parquet curve file and one trial row per trial) and as Tune's per-trial files (params.json,
and result.json with one JSON line per report: metrics, Tune's bookkeeping keys and the config). Each
measured operation runs in its own fresh process (peak RSS = that process's VmHWM, imports included;
the baseline line shows what imports alone cost), and both sides must return the same answer.

    python benchmarks/results_speed.py --smoke-test                             # 100k rows, a minute
    # 10M rows (~6 GB of temporary disk, removed at the end), in two short turns of the CPU lock:
    flock /tmp/groksweep-cpu.lock python benchmarks/results_speed.py --workdir /tmp/gsbench --generate-only
    flock /tmp/groksweep-cpu.lock python benchmarks/results_speed.py --workdir /tmp/gsbench
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from orchestrator import store, studies

SWEEP = "bench"
WEIGHT_DECAYS = (0.0, 0.1, 0.3, 1.0, 3.0)  # 0: never generalises (censored)
EVAL_EVERY = 10

# The typical question: per weight decay, how many trials reached val_acc >= 0.99 and at which step on
# average. Over the store it is SQL on `curves` joined to `trials`.
QUERY_SQL = """
WITH firsts AS (
    SELECT trial_id, min(step) AS first_step FROM curves WHERE val_acc >= 0.99 GROUP BY trial_id
)
SELECT t.weight_decay, count(f.first_step) AS n_generalized, avg(f.first_step) AS mean_first_step
FROM trials t LEFT JOIN firsts f ON t.trial_id = f.trial_id
GROUP BY t.weight_decay ORDER BY t.weight_decay
"""


# --- synthetic data ---

def synthetic_trial(index: int, evals: int, rng: np.random.Generator) -> tuple[dict, pl.DataFrame]:
    """Config and curves of one trial: memorise ~200 steps, generalise ~ 800 * wd^-0.5 later, wd 0 never."""
    wd = WEIGHT_DECAYS[index % len(WEIGHT_DECAYS)]
    config = {"weight_decay": wd, "lr": 1e-3, "seed": index}
    step = np.arange(1, evals + 1) * EVAL_EVERY
    mem = 200 * rng.lognormal(0, 0.1)
    gen = np.inf if wd == 0 else mem + 800 * wd ** -0.5 * rng.lognormal(0, 0.2)
    train_acc = 1 / (1 + np.exp(-(step - mem) / 20))
    val_acc = 0.02 + 0.98 / (1 + np.exp(-(step - gen) / 40)) if np.isfinite(gen) else np.full(evals, 0.02)
    frame = pl.DataFrame({
        "step": step,
        "train_loss": np.round(4.6 * (1 - train_acc) + 1e-4, 6), "train_acc": np.round(train_acc, 4),
        "val_loss": np.round(4.6 * (1 - val_acc) + 1e-3, 6), "val_acc": np.round(val_acc, 4),
        "weight_norm": np.round(40 + 10 * np.exp(-step / 2000), 4),
        "fourier_sparsity": np.round(0.1 + 0.8 * (val_acc - 0.02), 4), "softmax_collapse": np.zeros(evals),
    })
    return config, frame


def events_of(frame: pl.DataFrame) -> dict:
    def first(column: str, level: float) -> int | None:
        hits = frame.filter(pl.col(column) >= level)["step"]
        return int(hits[0]) if hits.len() else None

    mem, gen = first("train_acc", 0.99), first("val_acc", 0.99)
    return {"steps_to_memorize": mem, "steps_to_generalize": gen, "steps_to_generalize_95": first("val_acc", 0.95),
            "grokking_delay": None if gen is None or mem is None else gen - mem}


def tune_lines(trial_id: str, config: dict, frame: pl.DataFrame, start: float) -> pl.DataFrame:
    """What Tune's result.json holds: one line per report with its bookkeeping keys and the config."""
    n = frame.height
    iteration = np.arange(1, n + 1)
    return frame.with_columns(
        timestamp=pl.lit(int(start)) + pl.Series(iteration // 20), checkpoint_dir_name=pl.lit(None, pl.String),
        done=pl.Series(iteration == n), training_iteration=pl.Series(iteration), trial_id=pl.lit(trial_id),
        date=pl.lit("2026-11-25_04-00-00"), time_this_iter_s=pl.lit(0.0213), time_total_s=pl.Series(iteration * 0.0213),
        pid=pl.lit(4242), hostname=pl.lit("node-1"), node_ip=pl.lit("127.0.0.2"),
        config=pl.lit(config, dtype=pl.Struct({"weight_decay": pl.Float64, "lr": pl.Float64, "seed": pl.Int64})),
        time_since_restore=pl.Series(iteration * 0.0213), iterations_since_restore=pl.Series(iteration))


def generate(root: Path, tune_dir: Path, trials: int, evals: int) -> None:
    rng = np.random.default_rng(0)
    start = time.time()
    for index in range(trials):
        trial_id = f"bench_{index:05d}"
        config, frame = synthetic_trial(index, evals, rng)
        events = events_of(frame)
        store.write_curve_frame(root, SWEEP, trial_id, frame)
        store.write_trial_row(root, store.trial_row(
            SWEEP, trial_id, {"preset": "gromov", **config}, store.COMPLETED, steps_run=int(frame["step"][-1]),
            events=events, censored=events["steps_to_generalize"] is None, final_metrics=frame.row(-1, named=True),
            wall_s=frame.height * 0.0213, device="cpu", started_at=start, ended_at=start + 1))
        trial_dir = tune_dir / f"train_{trial_id}"
        trial_dir.mkdir(parents=True)
        (trial_dir / "params.json").write_text(json.dumps(config))
        tune_lines(trial_id, config, frame, start).write_ndjson(trial_dir / "result.json")


# --- the measured operations (each in a fresh process) ---

def store_query(root: Path, tune_dir: Path) -> pl.DataFrame:
    return store.query(QUERY_SQL, root)


def tune_query(root: Path, tune_dir: Path) -> pl.DataFrame:
    """The bare-Tune way: scan every result.json (polars' fastest path: one lazy NDJSON scan of the list)."""
    lines = pl.scan_ndjson(sorted(str(p) for p in tune_dir.glob("*/result.json")))
    per_trial = lines.group_by("trial_id").agg(
        weight_decay=pl.col("config").struct.field("weight_decay").first(),
        first_step=pl.col("step").filter(pl.col("val_acc") >= 0.99).min())
    return (per_trial.group_by("weight_decay")
            .agg(n_generalized=pl.col("first_step").count().cast(pl.Int64), mean_first_step=pl.col("first_step").mean())
            .sort("weight_decay").collect())


def store_study(root: Path, tune_dir: Path) -> pl.DataFrame:
    return studies.study([SWEEP], x="weight_decay", root=root, n_boot=200).rows


def tune_study(root: Path, tune_dir: Path) -> pl.DataFrame:
    """The bare-Tune way to the same study: derive each trial's event (or censoring at its last step) from its
    result.json lines, then the same Kaplan-Meier summary."""
    lines = pl.scan_ndjson(sorted(str(p) for p in tune_dir.glob("*/result.json")))
    per_trial = lines.group_by("trial_id").agg(
        weight_decay=pl.col("config").struct.field("weight_decay").first(),
        steps_to_generalize=pl.col("step").filter(pl.col("val_acc") >= 0.99).min(),
        steps_to_memorize=pl.col("step").filter(pl.col("train_acc") >= 0.99).min(),
        steps_run=pl.col("step").max()).collect()
    per_trial = studies.time_to_event(per_trial.with_columns(
        grokking_delay=pl.col("steps_to_generalize") - pl.col("steps_to_memorize")), "steps_to_generalize")
    rows = []
    for (wd,), group in per_trial.sort("weight_decay").partition_by("weight_decay", as_dict=True,
                                                                     maintain_order=True).items():
        median = studies.km_median(group["_time"].to_numpy(), group["_observed"].to_numpy())
        delays = group.filter(pl.col("_observed"))["grokking_delay"]
        rows.append({"weight_decay": wd, "n_trials": group.height, "n_grokked": int(group["_observed"].sum()),
                     "km_median": median.median, "km_median_low": median.low, "km_median_high": median.high,
                     "median_delay": None if delays.is_empty() else float(delays.median())})
    groups = [(wd, g["_time"].to_numpy(), g["_observed"].to_numpy()) for (wd,), g in
              per_trial.partition_by("weight_decay", as_dict=True).items()]
    studies.fit_scaling(groups, n_boot=200)
    return pl.DataFrame(rows)


def baseline(root: Path, tune_dir: Path) -> pl.DataFrame:
    return pl.DataFrame({"imports_only": [True]})


OPERATIONS = {f.__name__: f for f in (baseline, store_query, tune_query, store_study, tune_study)}


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM belongs to the process's own address space, unlike
    ru_maxrss, which on Linux also remembers the parent's peak from before the fork+exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: kB on most systems


def measure_child(name: str, root: Path, tune_dir: Path, answer: Path) -> None:
    begin = time.perf_counter()
    result = OPERATIONS[name](root, tune_dir)
    seconds = time.perf_counter() - begin
    result.write_parquet(answer)
    peak_mib = peak_rss_mib()
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))


def measure(name: str, root: Path, tune_dir: Path, scratch: Path) -> tuple[float, float, pl.DataFrame]:
    answer = scratch / f"{name}.parquet"
    out = subprocess.run([sys.executable, __file__, "--child", name, "--root", str(root), "--tune-dir",
                          str(tune_dir), "--answer", str(answer)], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return figures["seconds"], figures["peak_mib"], pl.read_parquet(answer)


def du_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--evals", type=int, default=1_000, help="evaluations (curve rows) per trial")
    parser.add_argument("--repeats", type=int, default=2, help="runs per operation; the best time is kept")
    parser.add_argument("--smoke-test", action="store_true", help="1,000 trials x 100 evaluations")
    parser.add_argument("--workdir", type=Path, help="keep the data here between --generate-only and the "
                        "measuring run (so neither holds the CPU lock for long); removed after measuring")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("--root", type=Path)
    parser.add_argument("--tune-dir", type=Path)
    parser.add_argument("--answer", type=Path)
    args = parser.parse_args()
    if args.child:
        measure_child(args.child, args.root, args.tune_dir, args.answer)
        return
    if args.smoke_test:
        args.trials, args.evals = 1_000, 100
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="groksweep-bench-"))
    meta = scratch / "meta.json"
    try:
        root, tune_dir = scratch / "results", scratch / "tune"
        if not meta.exists():
            begin = time.perf_counter()
            generate(root, tune_dir, args.trials, args.evals)
            meta.write_text(json.dumps({"trials": args.trials, "evals": args.evals,
                                        "seconds": time.perf_counter() - begin}))
        info = json.loads(meta.read_text())
        print(f"{info['trials'] * info['evals']:,} curve rows in {info['trials']:,} trials (generated in "
              f"{info['seconds']:.0f} s); store {du_mib(root):,.0f} MiB Parquet in {count_files(root):,} files, "
              f"Tune {du_mib(tune_dir):,.0f} MiB result.json + params.json in {count_files(tune_dir):,} files")
        if args.generate_only:
            return
        results = {}

        def run(name: str, label: str) -> None:
            runs = [measure(name, root, tune_dir, scratch) for _ in range(args.repeats)]
            best = min(runs, key=lambda one: one[0])
            results[label] = (best[0], max(one[1] for one in runs), best[2])
            print(f"  {label:28s} {best[0]:8.2f} s   peak RSS {results[label][1]:8,.0f} MiB")

        run("baseline", "imports only")
        run("store_query", "query: store, per-trial files")
        run("store_study", "study: store, per-trial files")
        begin = time.perf_counter()
        store.compact_sweep(root, SWEEP)
        print(f"  compact_sweep (at sweep end)  {time.perf_counter() - begin:8.2f} s -> {count_files(root):,} files, "
              f"{du_mib(root):,.0f} MiB")
        run("store_query", "query: store, compacted")
        run("store_study", "study: store, compacted")
        run("tune_query", "query: result.json")
        run("tune_study", "study: result.json")
        for what in ("query", "study"):
            answers = [results[f"{what}: {side}"][2] for side in ("store, per-trial files", "store, compacted",
                                                                  "result.json")]
            assert all(a.equals(answers[0].cast(a.schema) if what == "query" else a.cast(answers[0].schema))
                       for a in answers), f"the {what} answers disagree"
            theirs = results[f"{what}: result.json"]
            for side in ("store, per-trial files", "store, compacted"):
                ours = results[f"{what}: {side}"]
                print(f"{what}: {side}: {ours[0]:.2f} s / {ours[1]:,.0f} MiB vs result.json {theirs[0]:.2f} s / "
                      f"{theirs[1]:,.0f} MiB -> {theirs[0] / ours[0]:.1f}x faster, {theirs[1] / ours[1]:.1f}x less "
                      "peak memory")
    finally:
        if not args.generate_only:
            shutil.rmtree(scratch, ignore_errors=True)


def count_files(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


if __name__ == "__main__":
    main()
