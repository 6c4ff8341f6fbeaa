"""Sweeps on real local Ray (embedded on 127.0.0.2), real Optuna, real Parquet, real training: grid,
random, Optuna and multi-objective sweeps end to end; the reading commands; a job that raises; and the
drills -- a driver SIGKILLed mid-sweep (grid and Optuna) then resumed, Tune's own state lost, two
concurrent `resume`s, Ctrl-C. Every test that writes a sweep ends with `assert_sweep_whole` (`check`
exit 0, one ended row per job, no duplicate row or step, curves whole)."""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

import optuna
import polars as pl
import pytest
import yaml
from drills import (
    assert_sweep_whole,
    kill_driver,
    rows,
    runner,
    start_cli,
    wait_for,
    write_spec,
)

from orchestrator import lease, store
from orchestrator.cli import app
from orchestrator.jobs import expected_jobs, optuna_jobs, train_config
from orchestrator.optuna_search import journal_storage
from orchestrator.spec import parse_spec, penalty
from orchestrator.sweep import JOURNAL_FILE, run_sweep

# The tiny-preset model with its fields pinned here, so a change of the preset cannot move these timings:
# lr 1e-2 / wd 1 memorises at ~30 steps and generalises at ~1200; lr 3e-3 / wd 1 at ~80 and ~1750.
MLP23 = {"op": "x+y", "p": 23, "train_fraction": 0.5, "model": "mlp", "width": 128, "activation": "quadratic",
         "optimizer": "adamw", "beta1": 0.9, "beta2": 0.98, "batch_size": None, "eval_every": 10}
TINY = {**MLP23, "lr": 1e-2}


def test_ray_workers_run_polars_on_one_thread_and_the_driver_keeps_its_own(local_ray):
    """A trial's store writes are tiny: polars' per-core thread pool only cost the trainers CPU there
    (orchestrator.runtime.WORKER_ENV). The driver, which reads whole sweeps, is left as it was."""
    import os

    import ray

    @ray.remote
    def polars_threads() -> int:
        return pl.thread_pool_size()

    assert ray.get(polars_threads.remote()) == 1
    if "POLARS_MAX_THREADS" not in os.environ:  # set only for the processes Ray started, not for this one
        assert pl.thread_pool_size() > 1 or os.cpu_count() == 1


def test_grid_sweep_writes_one_row_per_job_and_its_curves(local_ray, tmp_path):
    spec = parse_spec({"name": "grid", "base": {**TINY, "max_steps": 300}, "method": "grid",
                       "parameters": {"weight_decay": {"values": [1.0, 2.0]}}, "seeds": [0, 1]})
    outcome = run_sweep(spec, results=tmp_path)
    assert not outcome.interrupted and outcome.finished == outcome.n_jobs == 4
    table = assert_sweep_whole(tmp_path, "grid", 4)
    assert sorted(table["trial_id"]) == sorted(job.job_id for job in expected_jobs(spec))  # deterministic ids
    assert set(table["status"]) == {store.COMPLETED}
    assert sorted(zip(table["weight_decay"], table["seed"], strict=True)) == [(1.0, 0), (1.0, 1), (2.0, 0), (2.0, 1)]
    assert (table["steps_run"] == 300).all() and table["censored"].all()  # 300 steps: too few to grok
    assert table["steps_to_memorize"].is_not_null().all()
    assert (table["threads"] == 1).all() and (table["device"] == "cpu").all() and (table["wall_s"] > 0).all()
    assert (table["pack_size"] == 1).all() and not table["batched"].any()
    sweep_dir = Path(store.sweep_dir(tmp_path, "grid"))
    assert (sweep_dir / "spec.yaml").exists() and list((sweep_dir / "tune").glob("run-001/*"))
    assert len(list((sweep_dir / "logs").glob("*.log"))) == 4
    # keep_checkpoints: censored (default): every job here is censored, so each keeps its final checkpoint
    assert store.checkpointed_jobs(tmp_path, "grid") == set(table["trial_id"])

    # the same name again is refused, with a pointer to resume; --overwrite is the way to start over
    spec_file = write_spec(tmp_path / "grid.yaml", spec.raw)
    refused = runner.invoke(app, ["sweep", str(spec_file), "--results", str(tmp_path)])
    assert refused.exit_code == 2 and "groksweep resume grid" in refused.output
    assert rows(tmp_path, "grid").equals(table)  # untouched
    # resume of a finished sweep: says so, exit 0, Ray not started (it would take seconds; no Tune run added)
    done = runner.invoke(app, ["resume", "grid", "--results", str(tmp_path)])
    assert done.exit_code == 0 and "is complete: 4/4 jobs ended" in done.output, done.output
    assert not (sweep_dir / "tune" / "run-002").exists()

    status = runner.invoke(app, ["status", "grid", "--results", str(tmp_path), "--format", "json"])
    assert status.exit_code == 0, status.output
    assert len(yaml.safe_load(status.output)["trials"]) == 4
    listing = runner.invoke(app, ["ls", "--results", str(tmp_path)])
    assert listing.exit_code == 0 and "grid" in listing.output
    log = runner.invoke(app, ["logs", "grid", table["trial_id"][0], "--results", str(tmp_path)])
    assert log.exit_code == 0 and "step 300" in log.output
    assert runner.invoke(app, ["logs", "grid", "nope", "--results", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["status", "nope", "--results", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["check", "nope", "--results", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["rm", "grid", "--results", str(tmp_path)], input="n\n").exit_code == 1
    assert runner.invoke(app, ["rm", "grid", "--results", str(tmp_path), "--yes"]).exit_code == 0
    assert store.sweeps(tmp_path) == [] and not sweep_dir.exists()


def _assert_journal_agrees(root, spec, table: pl.DataFrame) -> None:
    """Each COMPLETE Optuna trial's value is the mean objective of its seed jobs' rows; its user attributes
    name those jobs; each row names its Optuna trial; none is left RUNNING."""
    study = optuna.load_study(study_name=spec.name, storage=journal_storage(
        str(Path(store.sweep_dir(root, spec.name)) / JOURNAL_FILE)))
    assert len(study.trials) == spec.num_samples
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    by_id = {row["trial_id"]: row for row in table.iter_rows(named=True)}
    for trial in study.trials:
        jobs = optuna_jobs(spec, trial.number, trial.params)
        assert trial.user_attrs["trial_ids"] == [job.job_id for job in jobs]
        assert trial.user_attrs["seeds"] == list(spec.seeds)
        job_rows = [by_id[job.job_id] for job in jobs]
        assert all(row["optuna_trial"] == trial.number for row in job_rows)
        max_steps = job_rows[0]["max_steps"]
        objective = [r["steps_to_generalize"] if r["steps_to_generalize"] is not None else penalty(max_steps)
                     for r in job_rows]
        assert trial.value == pytest.approx(sum(objective) / len(objective))
        if not spec.multi_objective:  # its learning curve for optuna-dashboard: mean val_acc over seeds per step
            curves = store.collect(lambda: store.curves(root, [spec.name]).filter(  # noqa: B023
                pl.col("trial_id").is_in([job.job_id for job in jobs])))  # noqa: B023
            means = curves.group_by("step").agg(pl.col("val_acc").mean())
            assert trial.intermediate_values == pytest.approx(dict(means.iter_rows()))
            assert len(trial.intermediate_values) == curves["step"].n_unique() > 1


def test_optuna_sweep_journal_agrees_with_the_rows(local_ray, tmp_path):
    max_steps = 1300  # lr 1e-2 groks by then at some weight decays, not at the smallest: both kinds occur
    spec = parse_spec({"name": "opt", "base": {**TINY, "max_steps": max_steps}, "method": "optuna",
                       "num_samples": 4, "search_seed": 3, "seeds": [0, 1], "max_concurrent": 2,
                       "parameters": {"weight_decay": {"distribution": "log_uniform_values", "min": 0.05, "max": 4}}})
    outcome = run_sweep(spec, results=tmp_path)
    table = assert_sweep_whole(tmp_path, "opt", 8)
    assert outcome.finished == 8 and set(table["status"]) == {store.COMPLETED}
    assert (table["pack_size"] == 2).all()  # one proposal x its seeds per Tune trial
    _assert_journal_agrees(tmp_path, spec, table)


def test_random_and_multi_objective_sweeps_end_to_end(local_ray, tmp_path):
    random_spec = parse_spec({"name": "rand", "base": {**TINY, "max_steps": 200}, "method": "random",
                              "num_samples": 3, "seeds": [0], "search_seed": 1, "pack": 2,
                              "parameters": {"weight_decay": {"min": 0.1, "max": 3.0}}})
    run_sweep(random_spec, results=tmp_path)
    table = assert_sweep_whole(tmp_path, "rand", 3)
    assert table["pack_size"].to_list() == [2, 2, 1]  # spec key `pack`: jobs per Tune trial
    # a packed job's curve is bit-identical to the same job trained alone
    from trainers.loop import run

    curves = store.collect(lambda: store.curves(tmp_path, ["rand"]).sort("trial_id", "step"))
    for job in expected_jobs(random_spec):
        alone = pl.DataFrame(run(train_config(random_spec, job)).history)
        packed = curves.filter(pl.col("trial_id") == job.job_id).select(alone.columns)
        assert packed.equals(alone.cast(packed.schema)), job.job_id  # all-null columns: Null dtype in `alone`
    multi = parse_spec({"name": "multi", "base": {**TINY, "max_steps": 200}, "method": "optuna", "num_samples": 2,
                        "seeds": [0], "metric": [{"name": "steps_to_memorize", "goal": "minimize"},
                                                 {"name": "val_acc", "goal": "maximize"}],
                        "parameters": {"weight_decay": {"values": [0.5, 1.0, 2.0]}}})
    run_sweep(multi, results=tmp_path)
    table = assert_sweep_whole(tmp_path, "multi", 2)
    study = optuna.load_study(study_name="multi", storage=journal_storage(
        str(Path(store.sweep_dir(tmp_path, "multi")) / JOURNAL_FILE)))
    for trial in study.trials:
        (row,) = table.filter(pl.col("optuna_trial") == trial.number).iter_rows(named=True)
        assert trial.values == pytest.approx([row["steps_to_memorize"], row["val_acc"]])


def test_a_job_that_raises_is_failed_with_a_plain_traceback_and_the_pack_goes_on(local_ray, tmp_path):
    from trainers.config import preset
    from trainers.loop import run

    spec = parse_spec({"name": "boom", "base": {**TINY, "max_steps": 100}, "method": "grid", "pack": 2,
                       "max_failures": 1, "parameters": {"weight_decay": {"values": [1.0, 2.0]}}, "seeds": [0]})
    doomed, fine = expected_jobs(spec)
    # a checkpoint of another configuration where the job will look for its own: the trainer refuses it
    run(preset("tiny", max_steps=10), checkpoint_dir=store.checkpoint_path(tmp_path, "boom", doomed.job_id))
    outcome = run_sweep(spec, results=tmp_path)
    assert not outcome.interrupted
    table = assert_sweep_whole(tmp_path, "boom", 2)
    statuses = dict(zip(table["trial_id"], table["status"], strict=True))
    assert statuses == {doomed.job_id: store.FAILED, fine.job_id: store.COMPLETED}  # its pack-mate still ran
    failed = table.filter(pl.col("trial_id") == doomed.job_id).row(0, named=True)
    assert "holds a checkpoint of another config" in failed["error"] and "\x1b[" not in failed["error"]
    log = runner.invoke(app, ["logs", "boom", doomed.job_id, "--results", str(tmp_path)])
    assert log.exit_code == 0 and "== traceback ==" in log.output and "ConfigError" in log.output
    assert "\x1b[" not in log.output and log.output.count("attempt") >= 2  # retried max_failures times


DRILL = {"base": {**MLP23, "lr": 3e-3, "weight_decay": 1.0, "max_steps": 1500}, "method": "grid",
         "parameters": {"train_fraction": {"values": [0.5, 0.55, 0.6]}}, "seeds": [0, 1], "max_concurrent": 2,
         "checkpoint_every": 5, "checkpoint_every_s": 0, "report_every_s": 0.2}


def _some_ended_and_some_checkpointed(root, name: str):
    table = rows(root, name)
    ended = table.filter(pl.col("status").is_in(list(store.FINAL)))
    running = set(table.filter(pl.col("status") == store.RUNNING)["trial_id"])
    return ended.height >= 1 and running & store.checkpointed_jobs(root, name)


def test_driver_sigkill_then_two_resumes_at_once_one_refused_nothing_lost(local_ray, tmp_path):
    spec_file = write_spec(tmp_path / "crash.yaml", {**DRILL, "name": "crash"})
    driver = start_cli("sweep", str(spec_file), "--results", str(tmp_path))
    try:
        wait_for(lambda: "crash" in store.sweeps(tmp_path) and _some_ended_and_some_checkpointed(tmp_path, "crash"),
                 150, "a job ended and another past a checkpoint")
    finally:
        kill_driver(driver)
    before = rows(tmp_path, "crash")
    final_before = before.filter(pl.col("status").is_in(list(store.FINAL)))
    assert 1 <= final_before.height < 6
    # readers: the dead driver's running rows are shown interrupted; check names them and the missing jobs
    status = runner.invoke(app, ["status", "crash", "--results", str(tmp_path), "--format", "json"])
    assert "running" not in {t["status"] for t in yaml.safe_load(status.output)["trials"]}
    found = runner.invoke(app, ["check", "crash", "--results", str(tmp_path)])
    assert found.exit_code == 1 and "orphan_running" in found.output and "missing" in found.output
    # Tune's own saved state is never what `resume` trusts: lose it entirely
    shutil.rmtree(Path(store.sweep_dir(tmp_path, "crash")) / "tune")

    first = start_cli("resume", "crash", "--results", str(tmp_path), log=tmp_path / "resume.log")
    try:
        holder = wait_for(lambda: lease.live_holder(store.sweep_dir(tmp_path, "crash")), 60, "the first resume")
        assert holder.pid == first.pid
        second = runner.invoke(app, ["resume", "crash", "--results", str(tmp_path)])
        assert second.exit_code == 2 and f"pid {first.pid}" in second.output, second.output
        assert len(second.output.strip().splitlines()) == 1
        again = runner.invoke(app, ["sweep", str(spec_file), "--results", str(tmp_path), "--overwrite"])
        assert again.exit_code == 2 and "groksweep resume" not in again.output  # not sent to resume while it is held
        first.wait(timeout=240)
        output = (tmp_path / "resume.log").read_text()
    finally:
        if first.poll() is None:
            kill_driver(first)
    assert first.returncode == 0, output[-3000:]
    assert "took over the lease" in output  # from the SIGKILLed driver
    after = assert_sweep_whole(tmp_path, "crash", 6)
    assert set(after["status"]) == {store.COMPLETED}
    kept = after.filter(pl.col("trial_id").is_in(final_before["trial_id"].to_list()))
    assert kept.drop("host").equals(final_before.drop("host"))  # final rows never rewritten
    logs = "".join(p.read_text() for p in (Path(store.sweep_dir(tmp_path, "crash")) / "logs").glob("*.log"))
    assert re.search(r"resumed from step [1-9]", logs)  # from its checkpoint, not from step 0


def test_optuna_driver_sigkill_then_resume_keeps_seed_groups_and_journal_agrees(local_ray, tmp_path):
    spec_raw = {"name": "optcrash", "base": {**TINY, "max_steps": 800}, "method": "optuna", "num_samples": 4,
                "search_seed": 2, "seeds": [0, 1], "max_concurrent": 2, "checkpoint_every": 5,
                "checkpoint_every_s": 0,
                "parameters": {"weight_decay": {"distribution": "log_uniform_values", "min": 0.3, "max": 4}}}
    spec_file = write_spec(tmp_path / "optcrash.yaml", spec_raw)
    driver = start_cli("sweep", str(spec_file), "--results", str(tmp_path))
    try:
        wait_for(lambda: "optcrash" in store.sweeps(tmp_path)
                 and _some_ended_and_some_checkpointed(tmp_path, "optcrash"), 150, "a job ended, another mid-way")
    finally:
        kill_driver(driver)
    study = optuna.load_study(study_name="optcrash", storage=journal_storage(
        str(Path(store.sweep_dir(tmp_path, "optcrash")) / JOURNAL_FILE)))
    assert optuna.trial.TrialState.RUNNING in {t.state for t in study.trials}  # proposals in flight
    # the journal is ahead of Tune's state by construction here: drop Tune's state altogether
    shutil.rmtree(Path(store.sweep_dir(tmp_path, "optcrash")) / "tune")
    done = runner.invoke(app, ["resume", "optcrash", "--results", str(tmp_path)])
    assert done.exit_code == 0, done.output
    table = assert_sweep_whole(tmp_path, "optcrash", 8)
    _assert_journal_agrees(tmp_path, parse_spec(spec_raw), table)


def test_ctrl_c_exits_130_status_shows_interrupted_then_resume_completes(local_ray, tmp_path):
    # train_fraction 0.6 groks by ~800 steps and ends; 0.5 stays censored to its 3,000 steps (seconds more
    # than the stop takes to reach it, even on a loaded machine), so Ctrl-C finds it mid-way
    spec_file = write_spec(tmp_path / "stop.yaml", {**DRILL, "name": "stop", "seeds": [0, 1],
                                                    "base": {**DRILL["base"], "max_steps": 3000},
                                                    "parameters": {"train_fraction": {"values": [0.6, 0.5]}}})
    driver = start_cli("sweep", str(spec_file), "--results", str(tmp_path), log=tmp_path / "sweep.log")
    try:
        wait_for(lambda: "stop" in store.sweeps(tmp_path) and _some_ended_and_some_checkpointed(tmp_path, "stop"),
                 150, "a job ended and another past a checkpoint")
        driver.send_signal(signal.SIGINT)  # what Ctrl-C sends to the driver
        driver.wait(timeout=120)
        output = (tmp_path / "sweep.log").read_text()
    finally:
        if driver.poll() is None:
            kill_driver(driver)
    assert driver.returncode == 130, output[-3000:]
    assert "groksweep resume stop" in output
    interrupted = rows(tmp_path, "stop").filter(pl.col("status") == store.INTERRUPTED)
    assert interrupted.height >= 1  # the stored rows changed at Ctrl-C
    status = runner.invoke(app, ["status", "stop", "--results", str(tmp_path)])
    assert "interrupted" in status.output and "no process is writing it" in status.output
    found = runner.invoke(app, ["check", "stop", "--results", str(tmp_path), "--format", "json"])
    assert found.exit_code == 1 and {v["kind"] for v in yaml.safe_load(found.output)["violations"]} == {"missing"}
    done = runner.invoke(app, ["resume", "stop", "--results", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert set(assert_sweep_whole(tmp_path, "stop", 4)["status"]) == {store.COMPLETED}
