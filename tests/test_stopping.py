"""Grokking-aware stopping on real runs: ASHA on validation accuracy switches off a trial that, left
alone, groks; groksweep's policy (FIFO, trials end at confirmed generalisation or budget) lets it grok."""

from __future__ import annotations

import polars as pl
from drills import assert_sweep_whole
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from orchestrator import store
from orchestrator.jobs import expected_jobs, make_packs
from orchestrator.spec import parse_spec
from orchestrator.stopping import GrokkingPolicy
from orchestrator.sweep import run_sweep
from orchestrator.trainable import train_pack

# The tiny-preset model with its fields pinned here, so a change of the preset cannot move these timings:
# lr 1e-2 / wd 1 memorises at ~30 steps and generalises at ~1200; lr 3e-3 / wd 1 at ~80 and ~1750.
MLP23 = {"op": "x+y", "p": 23, "train_fraction": 0.5, "model": "mlp", "width": 128, "activation": "quadratic",
         "optimizer": "adamw", "beta1": 0.9, "beta2": 0.98, "batch_size": None, "eval_every": 10}
SPEC = {"base": {**MLP23, "weight_decay": 1.0, "max_steps": 2500}, "method": "grid",
        "parameters": {"lr": {"values": [1e-2, 3e-3]}}, "seeds": [0], "max_concurrent": 1,
        "report_every_s": 0}  # ASHA must see every evaluation: its rungs are steps, not seconds


def test_asha_on_val_acc_kills_a_trial_that_groks_under_groksweeps_policy(local_ray, tmp_path):
    policy = run_sweep(parse_spec({**SPEC, "name": "policy"}), results=tmp_path).table
    slow = policy.filter(pl.col("lr") == 3e-3).row(0, named=True)
    assert slow["status"] == store.COMPLETED and not slow["censored"]  # left alone, it groks
    assert slow["steps_run"] < 2500  # ... and ends there: stop-on-generalise, not the budget
    assert_sweep_whole(tmp_path, "policy", 2)

    # The same two trials under ASHA on val_acc, the fast one first (max_concurrent 1): at the first rung
    # the slow one still sits near chance on validation, so ASHA stops it for good.
    spec = parse_spec({**SPEC, "name": "asha"})
    packs = make_packs(expected_jobs(spec), 1)
    asha = ASHAScheduler(time_attr="step", metric="val_acc", mode="max", grace_period=400, reduction_factor=2,
                         max_t=2500)
    trainable = tune.with_parameters(train_pack, spec=spec, root=str(tmp_path), packs=packs)
    tuner = tune.Tuner(trainable, param_space={"pack": tune.grid_search([0, 1])},
                       tune_config=tune.TuneConfig(scheduler=asha, max_concurrent_trials=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "asha-tune"), verbose=0))
    results = {r.config["pack"]: r.metrics for r in tuner.fit()}
    killed = results[[i for i, (job,) in enumerate(packs) if job.values["lr"] == 3e-3][0]]
    assert killed["val_acc"] < 0.99  # never generalised ...
    assert killed["step"] < slow["steps_to_generalize"]  # ... because it was switched off before its transition
    row = store.collect(lambda: store.trials(tmp_path, ["asha"])).filter(pl.col("lr") == 3e-3).row(0, named=True)
    assert row["status"] == store.RUNNING  # it never ended: a sweep's driver would mark it interrupted


def test_policy_prunes_only_trials_that_have_not_memorised():
    policy = GrokkingPolicy(not_memorized_by=500)
    assert policy.should_prune(500, steps_to_memorize=None)
    assert not policy.should_prune(490, steps_to_memorize=None)
    assert not policy.should_prune(5000, steps_to_memorize=80)  # memorised: wait for grokking, however long
    assert not GrokkingPolicy().should_prune(10**6, steps_to_memorize=None)  # off by default


def test_pruned_trial_is_stopped_and_censored(local_ray, tmp_path):
    # weight decay 0 and a tiny lr: no memorisation by step 200, so the policy ends it there
    spec = parse_spec({"name": "prune", "base": {**MLP23, "lr": 1e-5, "max_steps": 2000}, "method": "grid",
                       "parameters": {"weight_decay": {"values": [0.0]}}, "prune": {"not_memorized_by": 200}})
    row = run_sweep(spec, results=tmp_path).table.row(0, named=True)
    assert row["status"] == store.STOPPED and row["censored"] and row["steps_run"] == 200
    assert_sweep_whole(tmp_path, "prune", 1)
