"""`groksweep extend` and the spec's `budget`, on real local Ray, real training and real Parquet: censored
jobs continued from their checkpoints end exactly as the jobs run with the larger budget from the start
(curves bit for bit, events, rows); a driver SIGKILLed mid-extension is finished by `resume`; refusals
write nothing; budget rounds stop where every median is known. Every test ends with `assert_sweep_whole`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import polars as pl
import pytest
import yaml
from drills import assert_sweep_whole, kill_driver, rows, runner, start_cli, wait_for, write_spec

from orchestrator import budgets, lease, store
from orchestrator.cli import app
from orchestrator.jobs import expected_jobs, train_config
from orchestrator.spec import parse_spec
from orchestrator.sweep import _write_sweep_files, extend_sweep, run_sweep
from trainers import run as train

# the tiny preset (p = 31): memorises at ~50 steps; wd 3 generalises at ~240-290, wd 2 at ~300-390
BASE = {"preset": "tiny", "threads": 1}


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
            and "lease." not in p.name}


def _assert_as_if_run_with(root: Path, spec, max_steps: int, table: pl.DataFrame) -> None:
    """Each job's stored curve and row are those of the job run alone with `max_steps` from the start."""
    curves = store.collect(lambda: store.curves(root, [spec.name]).sort("trial_id", "step"))
    for job in expected_jobs(spec):
        row = table.filter(pl.col("trial_id") == job.job_id).row(0, named=True)
        if row["max_steps"] != max_steps:
            continue
        whole = train(dataclasses.replace(train_config(spec, job), max_steps=max_steps))
        curve = curves.filter(pl.col("trial_id") == job.job_id).drop("sweep", "trial_id").to_dicts()
        assert [r["step"] for r in curve] == [r["step"] for r in whole.history], job.job_id
        for got, want in zip(curve, whole.history, strict=True):
            assert {k: v for k, v in got.items() if v == v} == {k: v for k, v in want.items() if v == v}
        assert row["steps_run"] == whole.steps_run and row["censored"] == whole.censored
        assert {k: row[k] for k in whole.events} == whole.events


def test_extend_continues_censored_jobs_as_if_run_with_the_larger_budget(local_ray, tmp_path):
    spec = parse_spec({"name": "ext", "base": {**BASE, "max_steps": 105}, "method": "grid",
                       "parameters": {"weight_decay": {"values": [2.0, 3.0]}}, "seeds": [0, 1]})
    run_sweep(spec, results=tmp_path)
    before = assert_sweep_whole(tmp_path, "ext", 4)
    assert before["censored"].all() and (before["steps_run"] == 105).all()  # 105: off the evaluation grid

    # refused, one line, exit 2, nothing written: a budget not above, an unknown column, a held sweep
    files = _files(tmp_path)
    for args, says in [(["--max-steps", "105"], "--max-steps: 105 is not above"),
                       (["--max-steps", "300", "--where", "no_such_column < 3"], "--where:"),
                       (["--max-steps", "300", "--where", "weight_decay > 5"], "nothing to extend")]:
        refused = runner.invoke(app, ["extend", "ext", "--results", str(tmp_path), *args])
        assert refused.exit_code == 2 and says in refused.output, refused.output
        assert len(refused.output.strip().splitlines()) == 1
    with lease.acquire(store.sweep_dir(tmp_path, "ext"), "test holds it", name="ext"):
        held = runner.invoke(app, ["extend", "ext", "--max-steps", "300", "--results", str(tmp_path)])
        assert held.exit_code == 2 and f"pid {os.getpid()}" in held.output, held.output
    assert _files(tmp_path) == files

    # extend only wd 3's jobs first, then all the censored ones
    selection, outcome = extend_sweep("ext", 300, where="weight_decay = 3.0", results=tmp_path)
    assert len(selection.jobs) == 2 and not selection.missing and not outcome.interrupted
    middle = assert_sweep_whole(tmp_path, "ext", 4)
    assert sorted(middle.filter(pl.col("max_steps") == 300)["weight_decay"]) == [3.0, 3.0]
    assert (middle.filter(pl.col("weight_decay") == 2.0)["steps_run"] == 105).all()  # the others keep theirs

    # a job that kept no checkpoint: listed and left, or rerun from step 0 with --rerun-missing
    lost = middle.filter(pl.col("weight_decay") == 2.0)["trial_id"][0]
    store.delete_checkpoint(tmp_path, "ext", lost)
    assert budgets.select(tmp_path, spec, 400, None, False).missing == [lost]
    result = runner.invoke(app, ["extend", "ext", "--max-steps", "400", "--rerun-missing", "--results", str(tmp_path)])
    assert result.exit_code == 0 and "1 without a checkpoint rerun from step 0" in result.output, result.output
    table = assert_sweep_whole(tmp_path, "ext", 4)
    _assert_as_if_run_with(tmp_path, spec, 400, table)
    _assert_as_if_run_with(tmp_path, spec, 300, table)
    extended = {r["trial_id"]: r for r in table.iter_rows(named=True)}
    for row in extended.values():
        assert row["extended_from_steps"] is not None
        assert row["budget_history"] == ([105, 300] if row["max_steps"] == 300 else
                                         [105, 300, 400] if row["weight_decay"] == 3.0 else [105, 400])
    assert not table["censored"].all()  # the longer budget let jobs grok
    # keep_checkpoints: censored -- jobs that now grokked dropped theirs
    assert store.checkpointed_jobs(tmp_path, "ext") == set(table.filter(pl.col("censored"))["trial_id"])
    assert [r["reason"] for r in budgets.rounds(tmp_path, "ext")] == ["extend", "extend"]


def test_extend_refuses_optuna_sweeps_without_writing(tmp_path):
    raw = {"name": "opt", "base": {**BASE, "max_steps": 50}, "method": "optuna", "num_samples": 2,
           "parameters": {"weight_decay": {"min": 1.0, "max": 3.0, "distribution": "uniform"}}}
    _write_sweep_files(parse_spec(raw), str(tmp_path), yaml.safe_dump(raw))  # a sweep folder, as `sweep` leaves it
    files = _files(tmp_path)
    refused = runner.invoke(app, ["extend", "opt", "--max-steps", "100", "--results", str(tmp_path)])
    assert refused.exit_code == 2 and "Optuna" in refused.output and len(refused.output.strip().splitlines()) == 1
    assert _files(tmp_path) == files


def test_driver_sigkill_mid_extension_then_resume_finishes_it_exactly(local_ray, tmp_path):
    raw = {"name": "kx", "base": {**BASE, "max_steps": 100, "stop_on_generalize": False}, "method": "grid",
           "parameters": {"weight_decay": {"values": [2.0, 3.0]}}, "seeds": [0], "checkpoint_every": 5,
           "checkpoint_every_s": 0, "report_every_s": 0.2}
    spec = parse_spec(raw)
    run_sweep(spec, results=tmp_path)
    driver = start_cli("extend", "kx", "--max-steps", "2000", "--results", str(tmp_path), log=tmp_path / "x.log")
    try:
        def mid_extension():
            running = rows(tmp_path, "kx").filter(pl.col("status") == store.RUNNING)
            folder = Path(store.sweep_dir(tmp_path, "kx"))
            steps = [int(p.read_text()) for p in folder.glob("checkpoints/*/step-*/step")]
            return running.height and any(s > 300 for s in steps)
        wait_for(mid_extension, 120, "an extension past a checkpoint")
    finally:
        kill_driver(driver)
    found = runner.invoke(app, ["check", "kx", "--results", str(tmp_path)])
    assert found.exit_code == 1 and "missing" in found.output  # owed: the extension is unfinished
    resumed = runner.invoke(app, ["resume", "kx", "--results", str(tmp_path)])
    assert resumed.exit_code == 0, resumed.output
    table = assert_sweep_whole(tmp_path, "kx", 2)
    assert (table["max_steps"] == 2000).all() and (table["steps_run"] == 2000).all()
    assert all(history == [100, 2000] for history in table["budget_history"].to_list())
    _assert_as_if_run_with(tmp_path, spec, 2000, table)
    logs = "".join(p.read_text() for p in (Path(store.sweep_dir(tmp_path, "kx")) / "logs").glob("*.log"))
    assert "resumed from step 100 " in logs and any(f"resumed from step {s}" in logs for s in range(300, 2000, 10))


def test_budget_rounds_stop_where_every_median_is_known(local_ray, tmp_path):
    spec_raw = {"name": "rounds", "base": BASE, "method": "grid", "seeds": [0, 1],
                "parameters": {"weight_decay": {"values": [0.0, 2.0, 3.0]}},
                "budget": {"max_steps": 100, "extend_to": 800, "until": "median_known"}}
    spec = parse_spec(spec_raw)
    result = runner.invoke(app, ["sweep", str(write_spec(tmp_path / "r.yaml", spec_raw)), "--results",
                                 str(tmp_path / "res")])
    assert result.exit_code == 0, result.output
    root = tmp_path / "res"
    table = assert_sweep_whole(root, "rounds", 6)
    groups = {r["weight_decay"]: r for r in budgets.group_budgets(root, spec).iter_rows(named=True)}
    assert groups["0.0"]["state"] == "extend_to reached" and groups["0.0"]["budget"] == 800
    assert groups["2.0"]["state"] == groups["3.0"]["state"] == "median known"
    assert groups["3.0"]["budget"] <= groups["2.0"]["budget"] < 800  # rounds stopped where medians were known
    assert [r["max_steps"] for r in budgets.rounds(root, "rounds")] == [200, 400, 800]
    _assert_as_if_run_with(root, spec, 800, table)
    for budget in (200, 400):
        _assert_as_if_run_with(root, spec, budget, table)
    assert "median known" in result.output and "extend_to reached" in result.output
    status = runner.invoke(app, ["status", "rounds", "--results", str(root)])
    assert "extend_to reached" in status.output


@pytest.mark.parametrize(("budget", "says"), [
    ({"max_steps": 100, "extend_to": 100}, "budget.extend_to: must be above"),
    ({"max_steps": 100, "extend_to": 800, "until": "always"}, "budget.until"),
])
def test_budget_spec_errors_name_the_key(budget, says, tmp_path):
    raw = {"name": "b", "base": BASE, "method": "grid", "parameters": {"weight_decay": {"values": [1.0]}},
           "budget": budget}
    result = runner.invoke(app, ["sweep", str(write_spec(tmp_path / "b.yaml", raw)), "--results", str(tmp_path)])
    assert result.exit_code == 2 and says in result.output
    both = {**raw, "base": {**BASE, "max_steps": 50}, "budget": {"max_steps": 100, "extend_to": 800}}
    result = runner.invoke(app, ["sweep", str(write_spec(tmp_path / "c.yaml", both)), "--results", str(tmp_path)])
    assert result.exit_code == 2 and "base.max_steps: the budget sets max_steps" in result.output
    assert not list(tmp_path.glob("trials")) and not list(tmp_path.glob("sweeps"))
    assert json.dumps(budget)
