"""Sweeps on real local Ray (embedded on 127.0.0.2): grid, Optuna, refusal of an existing name, the
reading commands, and a driver SIGKILLed mid-sweep then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator import store
from orchestrator.cli import app
from orchestrator.spec import parse_spec, penalty
from orchestrator.sweep import JOURNAL_FILE, journal_storage, run_sweep

runner = CliRunner()
# The tiny-preset model with its fields pinned here, so a change of the preset cannot move these timings:
# lr 1e-2 / wd 1 memorises at ~30 steps and generalises at ~1200; lr 3e-3 / wd 1 at ~80 and ~1750.
MLP23 = {"op": "x+y", "p": 23, "train_fraction": 0.5, "model": "mlp", "width": 128, "activation": "quadratic",
         "optimizer": "adamw", "beta1": 0.9, "beta2": 0.98, "batch_size": None, "eval_every": 10}
TINY = {**MLP23, "lr": 1e-2}


def curve_steps(root, sweep: str) -> dict[str, list[int]]:
    frame = store.collect(lambda: store.curves(root, [sweep]).select("trial_id", "step").sort("trial_id", "step"))
    return {tid: group["step"].to_list() for (tid,), group in frame.group_by("trial_id", maintain_order=True)}


def assert_curves_whole(root, sweep: str, table: pl.DataFrame, eval_every: int = 10) -> None:
    """One row per evaluation, from step 0 to the trial's last step: no gap, no duplicate."""
    steps = curve_steps(root, sweep)
    assert set(steps) == set(table["trial_id"])
    for row in table.iter_rows(named=True):
        assert steps[row["trial_id"]] == list(range(0, row["steps_run"] + 1, eval_every)), row["trial_id"]


def test_grid_sweep_writes_one_row_per_trial_and_its_curves(local_ray, tmp_path):
    spec = parse_spec({"name": "grid", "base": {**TINY, "max_steps": 300}, "method": "grid",
                       "parameters": {"weight_decay": {"values": [1.0, 2.0]}}, "seeds": [0, 1]})
    outcome = run_sweep(spec, results=tmp_path)
    assert not outcome.interrupted and outcome.finished == outcome.n_trials == 4
    table = outcome.table
    assert table.height == 4 and table["trial_id"].n_unique() == 4
    assert set(table["status"]) == {store.COMPLETED}
    assert sorted(zip(table["weight_decay"], table["seed"], strict=True)) == [(1.0, 0), (1.0, 1), (2.0, 0), (2.0, 1)]
    assert (table["steps_run"] == 300).all() and table["censored"].all()  # 300 steps: too few to grok
    assert table["steps_to_memorize"].is_not_null().all()
    assert (table["threads"] == 1).all() and (table["device"] == "cpu").all()
    assert_curves_whole(tmp_path, "grid", table)
    sweep_dir = Path(store.sweep_dir(tmp_path, "grid"))
    assert (sweep_dir / "spec.yaml").exists() and (sweep_dir / "tune" / "tuner.pkl").exists()
    assert len(list((sweep_dir / "logs").glob("*.log"))) == 4

    # the same name again is refused, with a pointer to resume; --overwrite is the way to start over
    spec_file = tmp_path / "grid.yaml"
    spec_file.write_text(yaml.safe_dump(spec.raw))
    refused = runner.invoke(app, ["sweep", str(spec_file), "--results", str(tmp_path)])
    assert refused.exit_code == 2 and "groksweep resume grid" in refused.output
    assert store.collect(lambda: store.trials(tmp_path, ["grid"])).equals(table.sort("trial_id"))  # untouched

    status = runner.invoke(app, ["status", "grid", "--results", str(tmp_path), "--format", "json"])
    assert status.exit_code == 0, status.output
    assert len(yaml.safe_load(status.output)["trials"]) == 4
    listing = runner.invoke(app, ["ls", "--results", str(tmp_path)])
    assert listing.exit_code == 0 and "grid" in listing.output
    trial = table["trial_id"][0]
    log = runner.invoke(app, ["logs", "grid", trial, "--results", str(tmp_path)])
    assert log.exit_code == 0 and "step 300" in log.output
    assert runner.invoke(app, ["logs", "grid", "nope", "--results", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["status", "nope", "--results", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["rm", "grid", "--results", str(tmp_path)], input="n\n").exit_code == 1
    assert runner.invoke(app, ["rm", "grid", "--results", str(tmp_path), "--yes"]).exit_code == 0
    assert store.sweeps(tmp_path) == [] and not sweep_dir.exists()


def test_optuna_sweep_journal_holds_the_same_configurations_all_complete(local_ray, tmp_path):
    max_steps = 1300  # lr 1e-2 groks by then at some weight decays, not at the smallest: both kinds occur
    spec = parse_spec({"name": "opt", "base": {**TINY, "max_steps": max_steps}, "method": "optuna",
                       "num_samples": 4, "search_seed": 3, "seeds": [0, 1], "max_concurrent": 2,
                       "parameters": {"weight_decay": {"distribution": "log_uniform_values", "min": 0.05, "max": 4}}})
    outcome = run_sweep(spec, results=tmp_path)
    table = outcome.table
    assert table.height == 8 and set(table["status"]) == {store.COMPLETED}
    study = optuna.load_study(study_name="opt", storage=journal_storage(str(
        Path(store.sweep_dir(tmp_path, "opt")) / JOURNAL_FILE)))
    assert len(study.trials) == 4
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    # each Optuna trial is one configuration: its value is the mean objective over the seeds' runs
    for ot in study.trials:
        runs = table.filter(pl.col("weight_decay") == ot.params["weight_decay"])
        assert sorted(runs["seed"]) == [0, 1]
        objective = [s if s is not None else penalty(max_steps) for s in runs["steps_to_generalize"]]
        assert ot.value == pytest.approx(sum(objective) / 2)
    assert_curves_whole(tmp_path, "opt", table)


DRIVER_SPEC = {"name": "crash", "base": {**MLP23, "lr": 3e-3, "weight_decay": 1.0, "max_steps": 1800},
               "method": "grid", "parameters": {"train_fraction": {"values": [0.5, 0.55, 0.6]}},
               "seeds": [0, 1], "max_concurrent": 2, "checkpoint_every": 5, "checkpoint_every_s": 0}


def _descendants(pid: int) -> set[int]:
    """Every live descendant of `pid`, from /proc (ppid links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_driver_killed_mid_sweep_then_resume_loses_and_duplicates_nothing(local_ray, tmp_path):
    spec_file = tmp_path / "crash.yaml"
    spec_file.write_text(yaml.safe_dump(DRIVER_SPEC))
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", str(spec_file), "--results",
                               str(tmp_path)], start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "TERM": "dumb"})
    try:  # kill once a trial is final and another has curve rows past a checkpoint
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if "crash" not in store.sweeps(tmp_path):
                continue
            rows = store.collect(lambda: store.trials(tmp_path, ["crash"]))
            steps = curve_steps(tmp_path, "crash")
            final = rows.filter(pl.col("status").is_in(list(store.FINAL)))
            running = rows.filter(pl.col("status") == store.RUNNING)
            if final.height >= 1 and any(len(steps.get(t, [])) > 10 for t in running["trial_id"]):
                break
        else:
            pytest.fail("the sweep never got to a trial final and another mid-run")
        doomed = _descendants(driver.pid) | {driver.pid}
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started (its process group)
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 30  # Ray's workers have their own process groups: wait for them, by PID
    while any(_alive(pid) for pid in doomed) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in doomed:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    before = store.collect(lambda: store.trials(tmp_path, ["crash"]))
    final_before = before.filter(pl.col("status").is_in(list(store.FINAL))).sort("trial_id")
    assert 1 <= final_before.height < 6

    # Tune deletes a trial's previous checkpoint before it snapshots the experiment state: a kill in between
    # leaves a state naming a deleted checkpoint. Make that happen to one unfinished trial for certain.
    unfinished = set(before.filter(~pl.col("status").is_in(list(store.FINAL)))["trial_id"])
    tune_dir = Path(store.sweep_dir(tmp_path, "crash")) / "tune"
    raced = [d for d in tune_dir.glob("train_trial_*") if any(f"_{t}_" in d.name for t in unfinished)
             and list(d.glob("checkpoint_*"))]
    if raced:
        newest = sorted(raced[0].glob("checkpoint_*"))[-1]
        newest.rename(newest.with_name(f"checkpoint_{int(newest.name.split('_')[1]) + 1:06d}"))

    # A trial that started after Tune's last saved state: Tune runs its configuration again under a new id,
    # so its running row and partial curve must go (the assertions below would count it otherwise).
    store.write_trial_row(tmp_path, store.trial_row("crash", "orphan_00099", {**MLP23, "seed": 0}, store.RUNNING))
    store.write_curve_rows(tmp_path, "crash", "orphan_00099", [{"step": 0, "val_acc": 0.1}])

    result = runner.invoke(app, ["resume", "crash", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output

    after = store.collect(lambda: store.trials(tmp_path, ["crash"])).sort("trial_id")
    assert after.height == 6 and after["trial_id"].n_unique() == 6  # no duplicate (trial_id) rows
    assert set(after["status"]) == {store.COMPLETED}
    assert after.filter(pl.col("trial_id").is_in(final_before["trial_id"].to_list())).equals(final_before)  # unchanged
    curves = store.collect(lambda: store.curves(tmp_path, ["crash"]))
    assert curves.select("trial_id", "step").is_duplicated().sum() == 0  # no duplicate (trial_id, step) rows
    assert_curves_whole(tmp_path, "crash", after)  # resumed trials' curves continuous
    logs = [p.read_text() for p in (Path(store.sweep_dir(tmp_path, "crash")) / "logs").glob("*.log")]
    assert any("resumed" in text for text in logs)  # from a checkpoint, not from scratch
