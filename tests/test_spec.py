"""Sweep specs: parsing, validation (every problem on its own line, nothing written), expansion."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator import UserError
from orchestrator.cli import app
from orchestrator.spec import (
    OBJECTIVE,
    Metric,
    load_spec,
    objectives,
    optuna_space,
    parse_spec,
    penalty,
    points,
    trial_train_config,
)
from trainers.config import PRESETS

EXAMPLES = sorted(Path(__file__).resolve().parents[1].glob("examples/*.yaml"))
runner = CliRunner()


def spec_dict(**changes):
    base = {"name": "t", "base": {"preset": "tiny", "max_steps": 100}, "method": "grid",
            "parameters": {"weight_decay": {"values": [0.5, 1.0, 2.0]}, "lr": {"value": 0.002}}, "seeds": [0, 1]}
    return {**base, **changes}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_spec_is_valid(path):
    spec = load_spec(path)
    assert spec.n_trials > 0
    assert spec.name == yaml.safe_load(path.read_text())["name"]


def test_grid_runs_the_full_product_once_per_seed():
    spec = parse_spec(spec_dict(parameters={"weight_decay": {"values": [0.5, 1.0, 2.0]},
                                            "width": {"values": [64, 128]}, "lr": {"value": 0.002}}))
    assert spec.n_trials == 3 * 2 * 2
    grid = points(spec)
    assert len(grid) == 6 and all(p["lr"] == 0.002 for p in grid)
    assert {(p["weight_decay"], p["width"]) for p in grid} == {(w, d) for w in (0.5, 1.0, 2.0) for d in (64, 128)}
    config = trial_train_config(spec, {"point": 5, "seed": 1}, grid)
    assert (config.seed, config.max_steps, config.threads) == (1, 100, 1)  # 1 cpu -> 1 torch thread
    assert config.p == PRESETS["tiny"]["p"] and (config.weight_decay, config.width) == (2.0, 128)


def test_random_points_are_reproducible_and_inside_their_ranges():
    raw = spec_dict(method="random", num_samples=20, parameters={
        "weight_decay": {"distribution": "log_uniform_values", "min": 0.1, "max": 3.0},
        "width": {"distribution": "int_uniform", "min": 32, "max": 64},
        "train_fraction": {"min": 0.3, "max": 0.7}})  # W&B infers uniform from float bounds
    first, again = points(parse_spec(raw)), points(parse_spec(raw))
    assert first == again and len(first) == 20
    assert all(0.1 <= p["weight_decay"] <= 3.0 and 32 <= p["width"] <= 64 and isinstance(p["width"], int)
               and 0.3 <= p["train_fraction"] <= 0.7 for p in first)
    assert points(parse_spec({**raw, "search_seed": 1})) != first


def test_optuna_space_and_default_samplers():
    spec = parse_spec(spec_dict(method="optuna", num_samples=4, parameters={
        "weight_decay": {"distribution": "log_uniform_values", "min": 0.1, "max": 3.0},
        "width": {"values": [64, 128]}, "layers": {"distribution": "int_uniform", "min": 1, "max": 2}}))
    space = optuna_space(spec)
    assert space["weight_decay"] == optuna.distributions.FloatDistribution(0.1, 3.0, log=True)
    assert space["width"] == optuna.distributions.CategoricalDistribution([64, 128])
    assert space["layers"] == optuna.distributions.IntDistribution(1, 2)
    assert spec.sampler == "tpe" and spec.n_trials == 4 * 2
    multi = parse_spec({**spec_dict(method="optuna", num_samples=4, parameters={
        "lr": {"distribution": "uniform", "min": 0.001, "max": 0.01}}),
        "metric": [{"name": "steps_to_generalize", "goal": "minimize"}, {"name": "weight_norm", "goal": "minimize"}]})
    assert multi.sampler == "nsga2" and multi.search_metric_keys() == ["objective_steps_to_generalize",
                                                                       "objective_weight_norm"]


def test_censored_runs_score_the_penalty_never_a_success():
    spec = parse_spec(spec_dict())
    events = {"steps_to_memorize": 80, "steps_to_generalize": None, "steps_to_generalize_95": None,
              "grokking_delay": None}
    assert objectives(spec, events, {}, max_steps=500) == {OBJECTIVE: 1000.0} == {OBJECTIVE: penalty(500)}
    assert objectives(spec, {**events, "steps_to_generalize": 430}, {}, max_steps=500) == {OBJECTIVE: 430.0}
    multi = parse_spec({**spec_dict(method="optuna", num_samples=2, parameters={
        "lr": {"distribution": "uniform", "min": 0.001, "max": 0.01}}),
        "metric": [{"name": "steps_to_generalize", "goal": "minimize"}, {"name": "val_acc", "goal": "maximize"}]})
    assert objectives(multi, events, {"val_acc": 0.4}, 500) == {
        OBJECTIVE: 1000.0, "objective_steps_to_generalize": 1000.0, "objective_val_acc": 0.4}
    assert Metric("val_acc", "maximize").mode == "max"


BAD = {
    "name": "bad name!",
    "method": "grid",
    "num_samples": 3,
    "surprise": 1,
    "base": {"preset": "tiny", "wdecay": 1, "seed": 3},
    "metric": {"name": "accuracy", "goal": "up"},
    "parameters": {"seed": {"values": [1, 2]}, "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                   "width": {"values": ["wide"]}, "nonsense": {"values": [1]}},
    "seeds": [0, 0],
    "resources": {"cpu": 0, "tpu": 1},
    "max_concurrent": 0,
}
BAD_KEYS = ("name:", "surprise:", "base.wdecay:", "base.seed:", "metric.name:", "metric.goal:", "parameters.seed:",
            "parameters.lr:", "parameters.width.values[0]:", "parameters.nonsense:", "seeds:", "resources.cpu:",
            "resources.tpu:", "max_concurrent:", "num_samples:")


def test_invalid_spec_names_every_problem_on_its_own_line():
    with pytest.raises(UserError) as error:
        parse_spec(BAD)
    lines = str(error.value).splitlines()[1:]
    for key in BAD_KEYS:
        assert sum(line.strip().startswith(key) for line in lines) == 1, (key, lines)
    assert len(lines) == len(BAD_KEYS)


@pytest.mark.parametrize("changes, problem", [
    ({"method": "optuna"}, "num_samples: required"),
    ({"method": "random", "num_samples": 2, "sampler": "tpe"}, "sampler: only for method optuna"),
    ({"parameters": {"weight_decay": {"distribution": "uniform", "min": 1, "max": 2}}},
     "grid accepts only `values` or `value`"),
    ({"method": "random", "num_samples": 2, "parameters": {"lr": {"distribution": "log_uniform_values", "min": 0,
                                                                   "max": 1}}}, "needs min > 0"),
    ({"method": "random", "num_samples": 2, "parameters": {"width": {"distribution": "uniform", "min": 8,
                                                                      "max": 9.5}}}, "needs a float field"),
    ({"parameters": {"p": {"values": [23, 24]}}, "base": {"preset": "tiny", "op": "x/y"}}, "p: x/y needs a prime"),
    ({"base": {"preset": "nope"}}, "base.preset: unknown preset"),
    ({"report_every_s": -1}, "report_every_s: a number of seconds >= 0"),
])
def test_each_rule(changes, problem):
    with pytest.raises(UserError, match=problem.replace("(", r"\(").replace("`", "`")):
        parse_spec(spec_dict(**changes))


def test_cli_rejects_an_invalid_spec_with_exit_2_and_writes_nothing(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(BAD))
    results = tmp_path / "results"
    result = runner.invoke(app, ["sweep", str(spec), "--results", str(results)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert sum(line.strip().startswith(BAD_KEYS) for line in result.output.splitlines()) == len(BAD_KEYS)
    assert not results.exists()
    assert runner.invoke(app, ["sweep", str(tmp_path / "missing.yaml")]).exit_code == 2
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert runner.invoke(app, ["sweep", str(tmp_path / "list.yaml")]).exit_code == 2


def test_dry_run_prints_the_trials_and_runs_nothing(tmp_path):
    spec = tmp_path / "ok.yaml"
    spec.write_text(yaml.safe_dump(spec_dict()))
    result = runner.invoke(app, ["sweep", str(spec), "--dry-run", "--results", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "would run 6 jobs in 6 Tune trials (packs of 1)" in result.output
    assert result.output.count("0.002") == 6  # one line per trial
    assert not (tmp_path / "r").exists()
    optuna_spec = tmp_path / "opt.yaml"
    optuna_spec.write_text(yaml.safe_dump(spec_dict(method="optuna", num_samples=5, parameters={
        "lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.01}})))
    result = runner.invoke(app, ["sweep", str(optuna_spec), "--dry-run"])
    assert result.exit_code == 0 and "5 configurations x 2 seeds = 10 jobs" in result.output


def test_default_packs_follow_the_steps_cap_on_cpu_and_the_members_cap_where_trials_batch():
    """2,000 tiny jobs (60 steps) at 2 at a time: 125 down to 8 (the documented rule). 1,000 gromov jobs
    (3,000 steps): on CPU at most 33 a pack (100,000 steps); where trials batch on a GPU, up to 64 members."""
    from orchestrator.jobs import BATCHED_PACK, pack_sizes
    from orchestrator.spec import parse_spec

    def spec(preset: str, seeds: int, **extra) -> object:
        return parse_spec({"name": "p", "base": {"preset": preset, "max_steps": 60} if preset == "tiny" else
                           {"preset": preset}, "method": "grid", "seeds": list(range(seeds)),
                           "parameters": {"weight_decay": {"values": [0.1 * i for i in range(1, 11)]},
                                          "lr": {"values": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]}}, **extra})

    tiny = pack_sizes(spec("tiny", 40), 2000)
    assert tiny[0] == 125 and min(tiny[:-1]) == 8 and len(tiny) == 58 and sum(tiny) == 2000  # the last: the rest
    cpu = pack_sizes(spec("gromov", 20, max_concurrent=1), 1000)
    assert max(cpu) == 100_000 // 3000 == 33 and sum(cpu) == 1000
    for batching in ({"resources": {"cpu": 4, "gpu": 1}}, {"batched": "on"}):
        gpu = pack_sizes(spec("gromov", 20, max_concurrent=1, **batching), 1000)
        assert gpu[0] == BATCHED_PACK == 64 and sum(gpu) == 1000 and gpu == sorted(gpu, reverse=True)
    off = pack_sizes(spec("gromov", 20, max_concurrent=1, resources={"cpu": 4, "gpu": 1}, batched="off"), 1000)
    assert off == cpu
