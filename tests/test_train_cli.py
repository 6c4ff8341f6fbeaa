"""`groksweep train` and `groksweep presets` through Typer's CliRunner: output, resume, the store, and errors."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from orchestrator import store
from orchestrator.cli import app
from trainers.config import FIELD_NAMES, PRESETS
from trainers.metrics import EVENTS

runner = CliRunner()


def train(*args: str):
    return runner.invoke(app, ["train", "--preset", "tiny", *args])


def test_train_json_last_line_is_one_flat_object():
    result = train("--format", "json", "--set", "max_steps=400", "--set", "threads=1")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(row) == {*FIELD_NAMES, "steps_run", "wall_s", *EVENTS, "censored", "train_loss", "val_loss",
                        "train_acc", "val_acc"}
    assert row["max_steps"] == 400 and row["threads"] == 1 and row["p"] == PRESETS["tiny"]["p"]
    assert row["censored"] is False and row["steps_to_generalize"] <= row["steps_run"] <= 400
    assert row["val_acc"] >= 0.99 and isinstance(row["val_loss"], float)
    assert all(not isinstance(v, dict | list) for v in row.values())


def test_train_table_prints_the_events():
    result = train("--set", "max_steps=40")
    assert result.exit_code == 0, result.output
    assert "steps_to_memorize" in result.stdout and "censored" in result.stdout and "True" in result.stdout


def test_train_resumes_from_its_checkpoint_dir(tmp_path):
    args = ("--format", "json", "--checkpoint-dir", str(tmp_path), "--set", "stop_on_generalize=false")
    first = train(*args, "--set", "max_steps=100")
    assert first.exit_code == 0, first.output
    assert list(tmp_path.glob("step-*/state.pt"))
    again = train(*args, "--set", "max_steps=100")  # the same command again: the run is already complete
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1])["val_loss"] == \
        json.loads(first.stdout.strip().splitlines()[-1])["val_loss"]


def test_train_stores_the_run(tmp_path):
    result = train("--set", "max_steps=60", "--results", str(tmp_path), "--name", "demo")
    assert result.exit_code == 0, result.output
    trials = store.trials(tmp_path).collect()
    assert trials.height == 1
    row = trials.row(0, named=True)
    assert (row["sweep"], row["status"], row["steps_run"], row["max_steps"]) == ("demo", "completed", 60, 60)
    curve = store.curves(tmp_path).filter(pl.col("trial_id") == row["trial_id"]).collect()
    assert curve["step"].to_list() == list(range(0, 61, 10))


@pytest.mark.parametrize(("args", "field"), [
    (["--preset", "nope"], "preset"),
    (["--set", "op=x^5"], "op"),
    (["--set", "colour=blue"], "colour"),
    (["--set", "width=wide"], "width"),
    (["--set", "stop_on_generalize=maybe"], "stop_on_generalize"),
    (["--set", "op=x/y", "--set", "p=21"], "p"),
    (["--set", "train_fraction=1"], "train_fraction"),
    (["--set", "train_fraction=0"], "train_fraction"),
    (["--set", "lr=-0.1"], "lr"),
    (["--set", "weight_decay=-1"], "weight_decay"),
    (["--set", "lr"], "--set"),
    (["--format", "yaml"], "--format"),
    (["--results", "RESULTS", "--name", "../escape"], "sweep"),
])
def test_malformed_configs_fail_with_one_line_and_write_nothing(args, field, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [str(tmp_path / "results") if a == "RESULTS" else a for a in args]
    result = runner.invoke(app, ["train", *args, "--checkpoint-dir", str(tmp_path / "ck")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no results


def test_presets_lists_each_with_its_differences():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    for name in PRESETS:
        assert name in result.stdout
    assert "weight_decay" in result.stdout and "seed" not in result.stdout  # only fields that differ
    as_json = json.loads(runner.invoke(app, ["presets", "--format", "json"]).stdout)
    assert as_json["nanda2023"]["p"] == 113 and "Nanda" in as_json["nanda2023"]["source"]


@pytest.mark.parametrize("command", ["train", "presets"])
def test_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.stdout
