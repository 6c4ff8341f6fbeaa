"""PNG figures for papers and the study's binning of a continuous x, on stores written with the real store
functions (tests/synthetic.py): a grid keeps one group per value, a random search is binned."""

from __future__ import annotations

import json

import pytest
import synthetic
from matplotlib.image import imread
from typer.testing import CliRunner

from orchestrator import UserError, studies
from orchestrator.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    synthetic.write_sweep(root, name="grid", seeds=2)
    synthetic.write_sweep(root, name="rand", samples=30, seeds=2)
    return root


def _not_blank(path) -> None:
    image = imread(path)
    assert image.shape[0] > 400 and image[..., :3].std() > 0.05


def test_random_sweep_is_binned_grid_is_not(root):
    grid = studies.study(["grid"], x="weight_decay", root=root, n_boot=20)
    assert "x_low" not in grid.rows.columns and grid.bins is None and grid.rows.height == 4
    binned = studies.study(["rand"], x="weight_decay", root=root, n_boot=20)
    assert binned.bins is not None and 3 <= binned.rows.height <= 10
    assert binned.rows["n_trials"].sum() == 60 and binned.rows["n_trials"].min() >= 6  # not 30 groups of n = 2
    rows = binned.rows.to_dicts()
    for row in rows:
        assert row["x_low"] <= row["weight_decay"] <= row["x_high"]
    assert all(a["x_high"] == pytest.approx(b["x_low"]) for a, b in zip(rows, rows[1:], strict=False))
    assert studies.study(["rand"], x="weight_decay", root=root, n_boot=5, bins=0).rows.height == 30
    assert studies.study(["rand"], x="weight_decay", root=root, n_boot=5, bins=3).rows.height == 3
    with pytest.raises(UserError, match="--bins"):
        studies.study(["rand"], x="weight_decay", root=root, bins=-1)


def test_commands_write_pngs_and_print_their_paths(root, tmp_path):
    study_png, phase_png, curves_png = tmp_path / "s.png", tmp_path / "p.png", tmp_path / "c.png"
    result = runner.invoke(app, ["study", "rand", "--x", "weight_decay", "--format", "json", "--bootstrap", "20",
                                 "--plot", str(study_png), "--results", str(root)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the path goes to stderr when stdout is JSON
    assert {"x_low", "x_high"} <= set(data["rows"][0]) and str(study_png) in result.stderr
    result = runner.invoke(app, ["phase", "rand", "--x", "weight_decay", "--y", "lr", "--plot", str(phase_png),
                                 "--results", str(root)])
    assert result.exit_code == 0 and f"wrote {phase_png}" in result.stdout
    result = runner.invoke(app, ["plot", "grid", "--color-by", "lr", "--output", str(curves_png),
                                 "--results", str(root)])
    assert result.exit_code == 0 and result.stdout.strip() == str(curves_png)
    for path in (study_png, phase_png, curves_png):
        _not_blank(path)
    assert studies.phase(["rand"], x="weight_decay", y="lr", root=root).continuous
    assert not studies.phase(["grid"], x="weight_decay", y="lr", root=root).continuous


def test_bad_flags_exit_2_and_write_nothing(root, tmp_path):
    for args in (["plot", "grid", "--color-by", "nope", "--output", str(tmp_path / "c.png")],
                 ["study", "rand", "--x", "weight_decay", "--bins", "-2", "--plot", str(tmp_path / "s.png")]):
        result = runner.invoke(app, [*args, "--results", str(root)])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("Error: --")
    assert not list(tmp_path.iterdir())
