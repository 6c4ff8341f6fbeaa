"""`groksweep query / study / phase / plot` through Typer's CliRunner: exit code first, then output, then
state read back with polars directly."""

from __future__ import annotations

import json

import polars as pl
import pytest
from test_studies import write_sweep
from typer.testing import CliRunner

from orchestrator import store
from orchestrator.cli import app

RESULTS_COMMANDS = ("query", "study", "phase", "plot", "report")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    write_sweep(root, n=4)
    return str(root)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_query_equals_a_direct_polars_read(root):
    sql = ("SELECT trial_id, weight_decay, steps_to_generalize, censored FROM trials "
           "WHERE weight_decay > 0.05 ORDER BY trial_id")
    result = invoke("query", sql, "--results", root, "--format", "json")
    assert result.exit_code == 0, result.output
    direct = (pl.read_parquet(f"{root}/trials/**/*.parquet").filter(pl.col("weight_decay") > 0.05)
              .select("trial_id", "weight_decay", "steps_to_generalize", "censored").sort("trial_id"))
    assert json.loads(result.stdout) == direct.to_dicts() and direct.height == 12

    sql = "SELECT trial_id, max(val_acc) AS best, count(*) AS n FROM curves GROUP BY trial_id ORDER BY trial_id"
    result = invoke("query", sql, "--results", root, "--format", "csv")
    assert result.exit_code == 0
    direct = (pl.read_parquet(f"{root}/curves/**/*.parquet").group_by("trial_id")
              .agg(best=pl.col("val_acc").max(), n=pl.len()).sort("trial_id"))
    assert pl.read_csv(result.stdout.encode()).equals(direct.cast({"n": pl.Int64}))


def test_query_formats_and_output(root, tmp_path, monkeypatch):
    sql = "SELECT weight_decay, count(*) AS n FROM trials GROUP BY weight_decay ORDER BY weight_decay"
    result = invoke("query", sql, "--results", root)
    assert result.exit_code == 0
    assert "weight_decay" in result.stdout and "0.03" in result.stdout and len(result.stdout.splitlines()) == 9
    out = tmp_path / "out" / "n.parquet"
    assert invoke("query", sql, "--results", root, "--format", "parquet", "--output", str(out)).exit_code == 0
    assert pl.read_parquet(out)["n"].to_list() == [4] * 5
    to_file = invoke("query", sql, "--results", root, "--format", "json", "--output", str(tmp_path / "n.json"))
    assert to_file.exit_code == 0 and to_file.stdout == ""
    assert len(json.loads((tmp_path / "n.json").read_text())) == 5
    monkeypatch.setenv("GROKSWEEP_RESULTS", root)  # the default root
    assert json.loads(invoke("query", "SELECT count(*) AS n FROM trials", "--format", "json").stdout) == [{"n": 20}]


@pytest.mark.parametrize("args, message", [
    (("query", "SELEC * FROM trials"), "sql parser error"),
    (("query", "SELECT nope FROM trials"), 'unable to find column "nope"'),
    (("query", "SELECT * FROM runs"), "relation 'runs' was not found"),
    (("query", "SELECT 1", "--format", "xml"), "--format"),
    (("query", "SELECT 1", "--format", "parquet"), "--output"),
    (("study", "nope", "--x", "weight_decay"), "no sweep named 'nope'"),
    (("study", "wd", "--x", "nope"), "unknown column 'nope'"),
    (("study", "wd", "--x", "weight_decay", "--metric", "val_acc"), "not an event"),
    (("phase", "nope", "--x", "weight_decay", "--y", "lr"), "no sweep named 'nope'"),
    (("phase", "wd", "--x", "weight_decay", "--y", "lr", "--generalize-acc", "2"), "--generalize-acc"),
    (("plot", "nope"), "no sweep named 'nope'"),
    (("plot", "wd", "--trial", "nope"), "unknown trial(s) nope"),
])
def test_user_errors_are_one_plain_line_and_write_nothing(root, tmp_path, args, message):
    output = tmp_path / "never.out"
    extra = ("--output", str(output)) if args[0] in ("query", "plot") and "--output" not in args \
        and "parquet" not in args else ()
    result = invoke(*args, *extra, "--results", root)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("Error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr and not output.exists()


def test_study_json_and_plot(root, tmp_path):
    plot = tmp_path / "study.png"
    result = invoke("study", "wd", "--x", "weight_decay", "--format", "json", "--plot", str(plot),
                    "--bootstrap", "50", "--results", root)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"rows", "fit"}
    assert set(data["fit"]) == {"exponent", "exponent_low", "exponent_high", "prefactor", "n_points"}
    assert [set(row) for row in data["rows"]] == [{"weight_decay", "n_trials", "n_grokked", "km_median",
                                                   "km_median_low", "km_median_high", "median_delay"}] * 5
    assert data["rows"][0]["km_median"] is None and data["rows"][0]["n_grokked"] == 0  # wd 0: censored
    assert plot.stat().st_size > 10_000
    table = invoke("study", "wd", "--x", "weight_decay", "--by", "lr", "--bootstrap", "20", "--results", root)
    assert table.exit_code == 0 and "fit lr=0.001" in table.stdout and "km_median" in table.stdout


def test_phase_and_plot_commands(root, tmp_path):
    result = invoke("phase", "wd", "--x", "weight_decay", "--y", "lr", "--format", "json", "--plot",
                    str(tmp_path / "phase.png"), "--results", root)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["thresholds"] == {"memorize_acc": 0.99, "generalize_acc": 0.99, "grok_factor": 1.0}
    assert {row["phase"] for row in data["rows"] if row["weight_decay"] == 0} == {"memorization"}
    assert (tmp_path / "phase.png").stat().st_size > 10_000
    trial = store.trials(root, ["wd"]).select("trial_id").collect()["trial_id"][0]
    out = tmp_path / "curves.png"
    result = invoke("plot", "wd", "--trial", trial, "--output", str(out), "--results", root)
    assert result.exit_code == 0 and result.stdout.strip() == str(out) and out.stat().st_size > 10_000


def test_every_results_command_has_help():
    for command in RESULTS_COMMANDS:
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example: groksweep " + command in result.stdout.replace("\n", " ")


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"groksweep {version('groksweep')}"


def test_flags_show_no_bool_placeholder():
    names = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    for args in [["--help"], *([name, "--help"] for name in names)]:
        result = invoke(*args)
        assert result.exit_code == 0 and "<bool>" not in result.stdout, args


def test_finding_nothing_names_the_results_root(root, tmp_path):
    result = invoke("ls", "--results", str(tmp_path))
    assert result.exit_code == 0 and result.stdout.strip() == f"no sweeps under {tmp_path}"
    result = invoke("query", "SELECT trial_id FROM trials WHERE false", "--results", root, "--format", "json")
    assert result.exit_code == 0 and result.stdout.strip() == "[]" and root in result.stderr
