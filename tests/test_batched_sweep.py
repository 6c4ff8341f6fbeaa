"""Batched packs through a real sweep (embedded Ray on loopback, real training, Parquet), forced on CPU with
the spec key `batched: on`: each member keeps its own row, curve, log and checkpoint; a batched model that
keeps failing falls back to training its members alone, so only the failing job ends `failed`."""

from __future__ import annotations

import polars as pl
from drills import assert_sweep_whole, runner

from orchestrator import store
from orchestrator.cli import app
from orchestrator.jobs import expected_jobs, train_config
from orchestrator.spec import parse_spec
from orchestrator.sweep import run_sweep
from trainers.config import preset
from trainers.loop import run

BASE = {"preset": "tiny", "max_steps": 300, "threads": 1}  # lr 1e-2, wd 3 generalises at 240 and stops at 260


def test_batched_pack_members_keep_their_own_rows_curves_logs_and_checkpoints(local_ray, tmp_path):
    spec = parse_spec({"name": "bat", "base": BASE, "method": "grid", "pack": 8, "batched": "on",
                       "report_every_s": 0, "checkpoint_every_s": 0, "checkpoint_every": 5,
                       "parameters": {"weight_decay": {"values": [1.0, 3.0]}, "width": {"values": [128, 64]}},
                       "seeds": [0, 1]})
    outcome = run_sweep(spec, results=tmp_path)
    assert not outcome.interrupted and outcome.finished == 8
    table = assert_sweep_whole(tmp_path, "bat", 8)
    assert set(table["status"]) == {store.COMPLETED}
    assert (table["pack_size"] == 8).all() and table["batched"].all()  # two batched models of 4 (by width)
    grokked = table.filter(~pl.col("censored"))
    assert (grokked["steps_run"] < 300).any()  # one stopped early (generalised) while its pack-mates went on
    curves = store.collect(lambda: store.curves(tmp_path, ["bat"]).sort("trial_id", "step"))
    for job in expected_jobs(spec):
        alone = run(train_config(spec, job))
        row = table.filter(pl.col("trial_id") == job.job_id).row(0, named=True)
        assert {k: row[k] for k in alone.events} == alone.events
        curve = curves.filter(pl.col("trial_id") == job.job_id)
        assert curve["step"].to_list() == [r["step"] for r in alone.history]
        assert max(abs(a - b) for a, b in zip(curve["val_loss"], (r["val_loss"] for r in alone.history),
                                                strict=True)) < 1e-4
        log = runner.invoke(app, ["logs", "bat", job.job_id, "--results", str(tmp_path)])
        assert log.exit_code == 0 and "batched with 3 pack-mates" in log.output
    # keep_checkpoints: censored -- per job, as for a job trained alone
    assert store.checkpointed_jobs(tmp_path, "bat") == set(table.filter(pl.col("censored"))["trial_id"])


def test_a_failing_member_falls_back_to_training_alone_and_only_it_fails(local_ray, tmp_path):
    spec = parse_spec({"name": "batboom", "base": {**BASE, "max_steps": 50}, "method": "grid", "pack": 3,
                       "batched": "on", "max_failures": 0,
                       "parameters": {"weight_decay": {"values": [1.0, 2.0, 3.0]}}, "seeds": [0]})
    doomed = expected_jobs(spec)[1]
    # a checkpoint of another configuration where the job will look for its own: the trainers refuse it
    run(preset("tiny", max_steps=10), checkpoint_dir=store.checkpoint_path(tmp_path, "batboom", doomed.job_id))
    run_sweep(spec, results=tmp_path)
    table = assert_sweep_whole(tmp_path, "batboom", 3)
    statuses = dict(zip(table["trial_id"], table["status"], strict=True))
    assert statuses.pop(doomed.job_id) == store.FAILED and set(statuses.values()) == {store.COMPLETED}
    assert not table["batched"].any()  # the batched model failed (no retries): each trained alone in the end
    log = runner.invoke(app, ["logs", "batboom", doomed.job_id, "--results", str(tmp_path)])
    assert log.exit_code == 0 and "(batched) failed" in log.output and "training it alone" in log.output
