"""Studies: Kaplan-Meier medians with censoring (vs a hand computation), the power-law fit, phases, plots.
Synthetic trials written through the real store."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread

from orchestrator import UserError, plots, store, studies

Z95 = 1.959963984540054


def hand_km(times, observed):
    """Textbook Kaplan-Meier with Greenwood's variance and the log-log 95% band, written out by hand:
    the reference the library-backed implementation is checked against."""
    data = sorted(zip(times, observed, strict=True))
    at_risk, s, greenwood, out = len(data), 1.0, 0.0, []
    for t in sorted({t for t, _ in data}):
        deaths = sum(1 for u, o in data if u == t and o)
        leaving = sum(1 for u, _ in data if u == t)
        if deaths:
            s *= (at_risk - deaths) / at_risk
            greenwood += deaths / (at_risk * (at_risk - deaths)) if at_risk > deaths else math.inf
            if 0 < s < 1 and math.isfinite(greenwood):
                spread = Z95 * math.sqrt(greenwood) / abs(math.log(s))
                low, high = s ** math.exp(spread), s ** math.exp(-spread)
            else:
                low, high = s, (1.0 if s == 0 else s)
            out.append((t, s, low, high))
        at_risk -= leaving

    def first(index):
        return next((row[0] for row in out if row[index] <= 0.5 + 1e-12), None)

    return first(1), first(2), first(3)


def test_km_median_and_ci_match_a_hand_computation_with_censoring():
    # 6 trials, two censored: S = 5/6, 4/6, (censor), 4/9 at 400, (censor), 0 at 600
    median = studies.km_median([100, 200, 300, 400, 500, 600], [1, 1, 0, 1, 0, 1])
    assert (median.median, median.low, median.high) == (400, 100, None)  # the upper band never reaches 0.5
    assert hand_km([100, 200, 300, 400, 500, 600], [1, 1, 0, 1, 0, 1]) == (400, 100, None)
    # 41 trials, censoring interleaved and at the budget: every limit defined
    rng = np.random.default_rng(3)
    times = np.concatenate([np.arange(1, 31) * 10, [55, 125, 175, 3000, 3000, 3000, 3000, 3000, 3000, 3000, 3000]])
    observed = np.concatenate([np.ones(30, bool), np.zeros(11, bool)])
    order = rng.permutation(times.size)
    median = studies.km_median(times[order], observed[order])
    expected = hand_km(times.tolist(), observed.tolist())
    assert (median.median, median.low, median.high) == expected
    assert expected == (200, 140, 260)
    # dropping the censored trials instead would bias the median low
    assert studies.km_median(times[observed], observed[observed]).median < median.median


def test_km_median_is_null_when_fewer_than_half_grokked():
    median = studies.km_median([100, 200, 300, 300, 300], [1, 1, 0, 0, 0])
    assert median.median is None and median.high is None
    assert studies.km_median([300, 300], [0, 0]) == studies.Median(None, None, None)
    assert studies.km_median([100, 300], [1, 0]).median == 100  # exactly half: S = 0.5 at 100


def test_power_law_fit_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    groups, budget = [], 3000
    for x in np.geomspace(0.1, 10, 6):
        t = 800 * x ** -0.7 * rng.lognormal(0, 0.2, 40)
        groups.append((float(x), np.minimum(t, budget), t <= budget))
    fit = studies.fit_scaling(groups, n_boot=300, seed=1)
    assert fit["n_points"] == 5  # x = 0.1 (median ~4000 > budget) is censored: no median, no point
    assert fit["exponent"] == pytest.approx(-0.7, abs=0.06)
    assert fit["exponent_low"] < fit["exponent"] < fit["exponent_high"]
    assert 0.01 < fit["exponent_high"] - fit["exponent_low"] < 0.2
    assert fit["prefactor"] == pytest.approx(800, rel=0.1)
    exact = [(x, 800 * x ** -0.7 * np.ones(5), np.ones(5, bool)) for x in (0.5, 1.0, 2.0, 4.0)]
    assert studies.fit_scaling(exact, n_boot=10)["exponent"] == pytest.approx(-0.7, abs=1e-9)
    assert studies.power_law(np.array([1.0]), np.array([5.0])) is None


def write_sweep(root, sweep="wd", n=8, seed=0, budget=5000):
    """A synthetic weight-decay scan: t_gen ~ 600 wd^-0.5, wd = 0 never generalises (censored at budget);
    wd = 0.03: only 3 of n grok. With smooth curves for plots and phases."""
    rng = np.random.default_rng(seed)
    for wd in (0.0, 0.03, 0.1, 1.0, 3.0):
        for s in range(n):
            mem = int(rng.integers(15, 20)) * 10
            delay = 10 * round(60 * wd ** -0.5 * rng.lognormal(0, 0.1)) if wd else 0
            gen = None if wd == 0 or (wd == 0.03 and s >= 3) else mem + delay
            gen = gen if gen is not None and gen <= budget else None
            steps = budget if gen is None else gen + 30
            events = {"steps_to_memorize": mem, "steps_to_generalize": gen, "steps_to_generalize_95": gen,
                      "grokking_delay": None if gen is None else gen - mem}
            trial_id = f"{sweep}-{wd:g}-{s}"
            store.write_trial_row(root, store.trial_row(
                sweep, trial_id, {"preset": "tiny", "weight_decay": wd, "lr": (1e-3, 3e-3)[s % 2], "seed": s},
                store.COMPLETED, steps_run=steps, events=events, censored=gen is None, wall_s=1.0, device="cpu"))
            step = np.arange(10, steps + 1, 10)
            train = 1 / (1 + np.exp(-(step - mem + 40) / 10))
            val = np.full(step.size, 0.04) if gen is None else 1 / (1 + np.exp(-(step - gen + 40) / 10))
            store.write_curve_rows(root, sweep, trial_id, [
                {"step": int(a), "train_acc": float(b), "val_acc": float(c), "train_loss": float(np.exp(-a / 100)),
                 "val_loss": float(4 * (1 - c) + 1e-3)} for a, b, c in zip(step, train, val, strict=True)])
            store.compact_curves(root, sweep, trial_id)


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    write_sweep(root)
    store.write_trial_row(root, store.trial_row("wd", "still-running", {"weight_decay": 1.0}, store.RUNNING))
    return root


def test_study_counts_censored_trials_and_fits(sweep_root):
    result = studies.study(["wd"], x="weight_decay", root=sweep_root, n_boot=200)
    rows = {row["weight_decay"]: row for row in result.rows.to_dicts()}
    assert list(rows) == [0.0, 0.03, 0.1, 1.0, 3.0]
    assert all(row["n_trials"] == 8 for row in rows.values())  # the running trial is left out
    assert (rows[0.0]["n_grokked"], rows[0.0]["km_median"], rows[0.0]["median_delay"]) == (0, None, None)
    assert rows[0.03]["n_grokked"] == 3 and rows[0.03]["km_median"] is None  # fewer than half grokked
    trials = store.trials(sweep_root, ["wd"]).filter(pl.col("weight_decay") == 1.0, pl.col("status") != "running")\
        .collect()
    direct = studies.km_median(trials["steps_to_generalize"].to_numpy(), np.ones(8, bool))
    assert (rows[1.0]["km_median"], rows[1.0]["km_median_low"], rows[1.0]["km_median_high"]) == \
        (direct.median, direct.low, direct.high)
    assert rows[1.0]["median_delay"] == trials["grokking_delay"].median()
    assert rows[0.1]["km_median"] > rows[1.0]["km_median"] > rows[3.0]["km_median"]
    assert result.fit["n_points"] == 3 and -0.6 < result.fit["exponent"] < -0.2
    assert set(result.to_json()) == {"rows", "fit"} and set(result.fit) == set(studies.FIT_KEYS)

    by = studies.study(["wd"], x="weight_decay", by="lr", root=sweep_root, n_boot=50)
    assert by.rows.columns[:2] == ["lr", "weight_decay"] and by.rows.height == 10
    assert set(by.fit) == {"0.001", "0.003"}


def test_study_errors(sweep_root):
    with pytest.raises(UserError, match="unknown column 'nope'"):
        studies.study(["wd"], x="nope", root=sweep_root)
    with pytest.raises(UserError, match="no sweep named 'other'"):
        studies.study(["other"], x="weight_decay", root=sweep_root)
    with pytest.raises(UserError, match="not an event"):
        studies.study(["wd"], x="weight_decay", metric="val_acc", root=sweep_root)


def test_phase_classification(sweep_root):
    assert studies.classify(100, 150, 1.0) == "comprehension"
    assert studies.classify(100, 200, 1.0) == "grokking"
    assert studies.classify(100, None, 1.0) == "memorization"
    assert studies.classify(None, None, 1.0) == "confusion"
    diagram = studies.phase(["wd"], x="weight_decay", y="lr", root=sweep_root)
    cells = {(r["weight_decay"], r["lr"]): r for r in diagram.rows.to_dicts()}
    assert cells[(0.0, 0.001)]["phase"] == "memorization" and cells[(0.0, 0.001)]["n_memorization"] == 4
    assert cells[(0.1, 0.001)]["phase"] == "grokking"
    assert sum(r["n_trials"] for r in cells.values()) == 40
    # other thresholds are recomputed from the curves: validation never gets that close to 1 here
    strict = studies.phase(["wd"], x="weight_decay", y="lr", root=sweep_root,
                           thresholds=studies.PhaseThresholds(generalize_acc=0.99999999))
    assert set(strict.rows["phase"].to_list()) == {"memorization"}
    lenient = studies.phase(["wd"], x="weight_decay", y="lr", root=sweep_root,
                            thresholds=studies.PhaseThresholds(generalize_acc=0.5, grok_factor=100))
    assert set(lenient.rows.filter(pl.col("weight_decay") > 0.05)["phase"].to_list()) == {"comprehension"}
    with pytest.raises(UserError, match="grok-factor"):
        studies.phase(["wd"], x="weight_decay", y="lr", root=sweep_root,
                      thresholds=studies.PhaseThresholds(grok_factor=-1))


def test_plots_are_written(sweep_root, tmp_path):
    result = studies.study(["wd"], x="weight_decay", root=sweep_root, n_boot=20)
    diagram = studies.phase(["wd"], x="weight_decay", y="lr", root=sweep_root)
    every, _ = studies.curves_for_plot("wd", None, sweep_root)  # default: every job
    assert set(every["trial_id"]) == set(store.trials(sweep_root, ["wd"]).collect()["trial_id"]) - {"still-running"}
    curves, trials = studies.curves_for_plot("wd", None, sweep_root, limit=studies.PLOT_TRIALS)
    assert trials.height == studies.PLOT_TRIALS and set(curves["trial_id"]) == set(trials["trial_id"])
    assert trials["censored"].any() and not trials["censored"].all()  # spread: fast, slow and censored runs
    for path in (plots.study_plot(result, tmp_path / "study.png"), plots.phase_plot(diagram, tmp_path / "p.png"),
                 plots.curves_plot(curves, trials, tmp_path / "c.png", color_by="weight_decay")):
        image = imread(path)
        assert image.shape[0] > 400 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # not a blank canvas
    with pytest.raises(UserError, match="unknown trial"):
        studies.curves_for_plot("wd", ["nope"], sweep_root)


def test_shipped_reference_study_shows_weight_decay_sets_the_time_to_grok():
    root = Path(__file__).resolve().parents[1] / "results" / "reference"
    rows = studies.study(["reference"], x="weight_decay", root=root, n_boot=50).rows
    assert rows["weight_decay"].to_list() == [0.0, 0.1, 0.3, 1.0, 3.0]
    assert rows["n_grokked"][0] == 0 and rows["km_median"][0] is None  # wd 0: censored within the budget
    medians = rows["km_median"].to_list()[1:]
    assert all(m is not None for m in medians) and medians == sorted(medians, reverse=True)
