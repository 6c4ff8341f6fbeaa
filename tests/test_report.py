"""`groksweep report`: the page is written from a real store, opens offline in a real chromium with no
console error and no request, draws every chart, and shows a job's configuration on hover."""

from __future__ import annotations

import re
import time
from pathlib import Path

import polars as pl
import pytest
import synthetic
from browser import find_chromium, visit
from typer.testing import CliRunner

from orchestrator import report, store
from orchestrator.cli import app

runner = CliRunner()
SECTIONS = ("summary", "curves", "survival", "scaling", "phase", "parallel", "ranked", "progress")
FIGURES = ("fig-curves", "fig-survival", "fig-scaling", "fig-phase", "fig-parallel", "fig-progress")


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    ids = synthetic.write_sweep(root, fail_every=7, extra_measures=True)
    return root, ids


def test_report_cli_writes_one_self_contained_page(sweep_root, tmp_path):
    root, ids = sweep_root
    out = tmp_path / "page" / "synth.html"
    result = runner.invoke(app, ["report", "synth", "--results", str(root), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    text = out.read_text()
    for section in SECTIONS:
        assert f"<section id='{section}'>" in text
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]?https?:", text)  # nothing loaded from outside
    assert "fourier_sparsity" in text  # a progress measure the curves hold
    data = report.load(["synth"], root)
    assert data.trials.height == len(ids) and data.color_by == "weight_decay"


def test_report_bad_input_is_one_line_exit_2_and_writes_nothing(sweep_root, tmp_path):
    root, _ = sweep_root
    cases = [(["report", "nope"], "no sweep named"),
             (["report", "synth", "--color-by", "nonsense"], "--color-by"),
             (["report", "synth", "--output", str(tmp_path)], "--output")]
    for args, expected in cases:
        result = runner.invoke(app, [*args, "--results", str(root)] if "--output" in args else
                               [*args, "--results", str(root), "--output", str(tmp_path / "x.html")])
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
        assert expected in lines[0] or "no sweep named" in lines[0]
    assert not list(tmp_path.iterdir())


def test_progress_measures_drawn_when_present_skipped_when_absent(tmp_path):
    synthetic.write_sweep(tmp_path, name="plain", seeds=1)
    data = report.load(["plain"], tmp_path)
    drawn = report.progress_section(data)
    assert "weight_norm" in drawn.note and "fourier_sparsity" not in drawn.note  # all null there: skipped
    assert "softmax_collapse" not in drawn.note
    # columns the curves may gain (progress measures): a float one is drawn, a list one skipped silently
    n = data.curves.height
    data.curves = data.curves.with_columns(fourier_gini=pl.Series([0.5] * n),
                                           restricted_loss=pl.Series([[1.0, 2.0]] * n))
    drawn = report.progress_section(data)
    assert [t for t in drawn.figure.layout.annotations if t.text == "fourier_gini"]
    assert "restricted_loss" not in drawn.note
    data.curves = data.curves.select(*report.CORE_CURVE)
    assert report.progress_section(data) is None


def test_curves_interpolated_all_at_once_as_np_interp_per_job():
    """report.interpolated works on every job at once (a per-job loop cost seconds on 10,000-job pages): it
    must give, bit for bit, np.interp on each job's own curve -- NaN before its first evaluation, its last
    value after its end -- with evaluations at different steps, gaps (NaN/null values), one-evaluation jobs,
    grid points on evaluated steps, and asked-for jobs that have no curve."""
    import numpy as np

    rng = np.random.default_rng(7)
    rows = []
    for job in range(60):
        steps = np.unique(rng.integers(0, 3000, size=int(rng.integers(1, 12))))
        for step in steps:
            value = float(rng.random())
            rows.append({"trial_id": f"j{job}", "step": int(step),
                         "val_acc": None if rng.random() < 0.05 else (float("nan") if rng.random() < 0.05 else value)})
    curves = pl.DataFrame(rows, schema={"trial_id": pl.String, "step": pl.Int64, "val_acc": pl.Float64})
    ids = [f"j{job}" for job in rng.permutation(60)] + ["no-curve"]
    grid = np.unique(np.concatenate([[0, 5, 2999, 4000], np.geomspace(1, 3500, 40), curves["step"].to_numpy()[:20]]))
    got = report.interpolated(curves, "val_acc", ids, grid)
    for i, trial_id in enumerate(ids):
        curve = curves.filter((pl.col("trial_id") == trial_id) & pl.col("val_acc").is_not_null()
                              & pl.col("val_acc").is_not_nan()).sort("step")
        if curve.is_empty():
            assert np.isnan(got[i]).all()
            continue
        values = curve["val_acc"].to_numpy()
        expected = np.interp(grid, curve["step"].to_numpy().astype(float), values, left=np.nan, right=values[-1])
        assert np.array_equal(got[i], expected, equal_nan=True), trial_id


def test_live_page_drawn_less_often_when_it_costs_more_than_its_cpu_share():
    from orchestrator import live_report

    assert live_report.wait_after(180.0, 0.5) == 180.0  # a cheap page: every 180 s
    assert live_report.wait_after(180.0, 2.0) == 2.0 / live_report.CPU_SHARE  # a 10,000-job page: 200 s
    assert live_report.wait_after(180.0, 8.0) / 8.0 == 1 / live_report.CPU_SHARE


def test_bands_beyond_max_lines(sweep_root):
    root, ids = sweep_root
    data = report.load(["synth"], root)
    lines = report.curves_section(data, max_lines=len(ids))
    bands = report.curves_section(data, max_lines=len(ids) - 1)
    assert len(lines.figure.data) == 2 * len(ids)  # every job: validation and training accuracy
    groups = data.trials["weight_decay"].n_unique()
    assert len(bands.figure.data) == 4 * groups  # per group: two bands, the median, the training median
    assert "more than" in bands.note
    aligned = report.aligned_section(data, max_lines=len(ids))  # x = 0 at each job's memorisation step
    memorised = data.trials.filter(pl.col("steps_to_memorize").is_not_null())
    assert len(aligned.figure.data) == memorised.height > 0
    assert sorted(-trace.x[0] for trace in aligned.figure.data) == sorted(memorised["steps_to_memorize"])
    assert len(report.aligned_section(data, max_lines=1).figure.data) == memorised["weight_decay"].n_unique()
    every = report.parallel_section(data, max_lines=len(ids))
    assert len(every.figure.data[0].dimensions[0].values) == len(ids)
    pooled = report.parallel_section(data, max_lines=len(ids) - 1)  # one line per configuration and outcome
    configurations = data.trials.select("weight_decay", "lr", report.outcome(data.trials)).unique().height
    assert len(pooled.figure.data[0].dimensions[0].values) == configurations < len(ids)
    sampled = report.parallel_section(data, max_lines=4)
    outcome_codes = list(sampled.figure.data[0].line.color)
    n_failed = int((report.outcome(data.trials) == "failed").sum())
    assert len(outcome_codes) == 4 and outcome_codes.count(2) == min(4, n_failed) > 0  # failed lines kept


@pytest.mark.skipif(find_chromium() is None, reason="no chromium on PATH: `apt-get install -y chromium` "
                    "(.ci/run does) to run the browser test")
def test_page_in_headless_chromium(sweep_root, tmp_path):
    pytest.importorskip("playwright", reason="playwright is in the [test] extra")
    root, ids = sweep_root
    page = report.write_report(["synth"], tmp_path / "synth.html", root)
    seen = visit(page)
    assert seen.console_errors == []
    assert seen.requests == []  # every request outside the page itself would have been recorded (and blocked)
    assert set(FIGURES) <= set(seen.figures), seen.figures
    for div_id, figure in seen.figures.items():
        assert figure["traces"] > 0 and not figure["blank"], (div_id, figure)
    assert seen.figures["fig-curves"]["traces"] == 2 * len(ids)
    assert seen.figures["fig-parallel"]["type"] == "parcoords"
    from browser import blank

    assert not blank(seen.screenshot)
    # the hover label names a real job and its swept values
    assert seen.hover_text is not None
    named = [i for i in ids if i in seen.hover_text]
    assert len(named) == 1 and "weight_decay =" in seen.hover_text and "lr =" in seen.hover_text, seen.hover_text
    row = store.trials(root, ["synth"]).filter(pl.col("trial_id") == named[0]).collect().row(0, named=True)
    assert f"weight_decay = {row['weight_decay']:.4g}" in seen.hover_text


def test_live_report_refreshed_by_a_niced_process_until_the_lease_ends(tmp_path):
    from orchestrator import lease, live_report
    from orchestrator.sweep import lease_dir

    synthetic.write_sweep(tmp_path, name="live", seeds=1)
    root = str(tmp_path)
    page = live_report.page_path(root, "live")
    assert live_report.start(root, "live", every=0) is None  # off
    with lease.acquire(lease_dir(root, "live"), "test", name="live"):
        process = live_report.start(root, "live", every=0.5)
        deadline = time.monotonic() + 60
        while not page.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert page.exists(), (page.parent / "report.log").read_text()
        nice = int(Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        assert nice == 19 and process.poll() is None  # still refreshing while the lease is held
        if Path("/proc/self/autogroup").exists():  # its own session is its own scheduling group: niced too
            assert Path(f"/proc/{process.pid}/autogroup").read_text().split()[-1] == "19"
        first = page.stat().st_mtime_ns
    assert process.wait(timeout=60) == 0  # the lease ended: one last page, then it exits
    assert page.stat().st_mtime_ns > first and "<section id='curves'>" in page.read_text()


def test_optuna_importances_from_the_sweeps_journal(tmp_path):
    import json as jsonlib

    import optuna
    import yaml

    from orchestrator.optuna_search import JOURNAL_FILE, journal_storage
    from orchestrator.sweep import META_FILE, SPEC_FILE

    raw = {"name": "opt", "base": {"preset": "tiny", "max_steps": 2000}, "method": "optuna", "num_samples": 16,
           "metric": {"name": "steps_to_generalize", "goal": "minimize"},
           "parameters": {"weight_decay": {"distribution": "log_uniform_values", "min": 0.1, "max": 3.0},
                          "lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2}}}
    store.write_sweep_file(str(tmp_path), "opt", SPEC_FILE, yaml.safe_dump(raw).encode())
    store.write_sweep_file(str(tmp_path), "opt", META_FILE, jsonlib.dumps({"name": "opt", "method": "optuna"}).encode())
    journal = str(Path(store.sweep_dir(str(tmp_path), "opt")) / JOURNAL_FILE)
    study = optuna.create_study(study_name="opt", storage=journal_storage(journal), direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(16):  # the objective depends on weight decay only
        trial = study.ask({"weight_decay": optuna.distributions.FloatDistribution(0.1, 3.0, log=True),
                           "lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)})
        study.tell(trial, 600 * trial.params["weight_decay"] ** -0.5)
    data = report.load(["opt"], tmp_path)  # no rows or curves yet: the page still builds
    section = report.importance_section(data)
    bars = section.figure.data[0]
    assert dict(zip(bars.y, bars.x, strict=True))["weight_decay"] > 0.8
    page = report.write_report(["opt"], tmp_path / "opt.html", tmp_path)
    assert "<section id='importance'>" in page.read_text()


def test_a_sweep_whose_jobs_all_failed_still_gets_a_page(tmp_path):
    synthetic.write_sweep(tmp_path, name="bad", seeds=1, fail_every=1)  # every job failed at step 200
    notes = {s.anchor: s.note for s in report.sections(report.load(["bad"], tmp_path))}
    assert "failed 8" in notes["parallel"] and "Not drawn" not in " ".join(notes.values())
    assert report.write_report(["bad"], tmp_path / "bad.html", tmp_path).stat().st_size > 1_000_000
