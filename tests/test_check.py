"""`groksweep check` finds each kind of violation, naming the job, and `--repair` fixes what needs no
training. The sweep here is built without Ray, from real training runs written through the store as the
trainable writes them, then damaged by hand the ways crashes and bugs damage tables."""

from __future__ import annotations

import json

import polars as pl
import yaml
from drills import runner

from orchestrator import store
from orchestrator.cli import app
from orchestrator.jobs import expected_jobs, outcome_from_curve, row_fields, train_config
from orchestrator.spec import parse_spec
from orchestrator.sweep import META_FILE, SPEC_FILE
from trainers.loop import run

SPEC = {"name": "chk", "base": {"preset": "tiny", "max_steps": 60, "eval_every": 20}, "method": "grid",
        "parameters": {"weight_decay": {"values": [1.0, 2.0]}}, "seeds": [0, 1]}


def _write_sweep(root) -> list[str]:
    spec = parse_spec(SPEC)
    store.write_sweep_file(root, "chk", SPEC_FILE, yaml.safe_dump(SPEC).encode())
    store.write_sweep_file(root, "chk", META_FILE, json.dumps({"method": "grid", "n_jobs": 4}).encode())
    for job in expected_jobs(spec):
        config = train_config(spec, job)
        result = run(config)
        store.write_curve_rows(root, "chk", job.job_id, result.history)
        store.write_trial_row(root, store.trial_row("chk", job.job_id, config, store.COMPLETED,
                                                    **row_fields(outcome_from_curve(result.history))))
    store.compact_sweep(root, "chk")
    return [job.job_id for job in expected_jobs(spec)]


def _check(root, *extra: str):
    result = runner.invoke(app, ["check", "chk", "--results", str(root), "--format", "json", *extra])
    return result.exit_code, json.loads(result.output)


def test_check_is_clean_then_names_each_violation_and_repair_fixes_what_needs_no_training(tmp_path):
    ids = _write_sweep(tmp_path)
    assert _check(tmp_path) == (0, {"sweep": "chk", "ok": True, "writer": None, "violations": [], "repaired": []})

    table = store.trials(tmp_path, ["chk"]).collect().sort("trial_id")
    first, second, third, fourth = (table.filter(pl.col("trial_id") == i).row(0, named=True) for i in ids)
    # the case: a grokked run stored as censored at an earlier step than its curve reaches
    store.replace_trial_row(tmp_path, {**first, "steps_run": 40, "censored": True, "steps_to_generalize": None})
    store.write_curve_rows(tmp_path, "chk", second["trial_id"], [{"step": 20, "val_acc": 0.5}])  # a step twice
    store.write_trial_row(tmp_path, {**third, "status": store.RUNNING}, known_not_final=True)  # two rows; orphan
    store.replace_trial_row(tmp_path, {**fourth, "status": store.RUNNING})
    code, report = _check(tmp_path)
    kinds = {(v["kind"], v["job"]) for v in report["violations"]}
    assert code == 1
    assert ("contradicts_curve", first["trial_id"]) in kinds
    assert ("duplicate_step", second["trial_id"]) in kinds
    assert ("duplicate_row", third["trial_id"]) in kinds
    assert ("orphan_running", fourth["trial_id"]) in kinds and ("missing", fourth["trial_id"]) in kinds
    text = runner.invoke(app, ["check", "chk", "--results", str(tmp_path)])
    assert text.exit_code == 1 and f"contradicts_curve {first['trial_id']}: row disagrees" in text.output

    code, report = _check(tmp_path, "--repair")
    assert code == 1 and report["repaired"]
    left = {(v["kind"], v["job"]) for v in report["violations"]}
    # interrupted now, and (hand-built: no checkpoints) only `resume` can finish it, from step 0
    assert left == {("missing", fourth["trial_id"]), ("no_checkpoint", fourth["trial_id"])}
    repaired = store.trials(tmp_path, ["chk"]).collect()
    fixed = repaired.filter(pl.col("trial_id") == first["trial_id"]).row(0, named=True)
    assert fixed["steps_run"] == 60 and fixed["steps_to_generalize"] == first["steps_to_generalize"]
    assert repaired.filter(pl.col("trial_id") == fourth["trial_id"])["status"].to_list() == [store.INTERRUPTED]
    assert store.raw_curve_duplicates(tmp_path, "chk").height == 0
    assert runner.invoke(app, ["check", "nope", "--results", str(tmp_path)]).exit_code == 2
