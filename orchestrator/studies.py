"""Censoring-aware scaling studies of *when* generalisation emerges, and Liu et al. 2022's phase diagram.

A trial whose budget ended before it generalised is right-censored at its last step: it counts (as
"still not grokked at step steps_run"), it is never dropped. Time-to-grok is therefore summarised with
the Kaplan-Meier median (scipy.stats.ecdf on CensoredData) and its 95% CI, and the scaling law
km_median = prefactor * x**exponent is fitted on log-log axes with a bootstrap over trials. Ray-free.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from orchestrator import UserError, store
from trainers.metrics import CENSORED, EVENTS, GENERALIZE_ACC, MEMORIZE_ACC

STUDY_ROW_KEYS = ("n_trials", "n_grokked", "km_median", "km_median_low", "km_median_high", "median_delay")
FIT_KEYS = ("exponent", "exponent_low", "exponent_high", "prefactor", "n_points")
PHASES = ("comprehension", "grokking", "memorization", "confusion")
CONFIDENCE = 0.95


# --- Kaplan-Meier ---

@dataclass(frozen=True)
class Median:
    """Kaplan-Meier median time-to-event with its CI; None where the survival curve (or the CI band)
    never falls to 0.5, i.e. fewer than half the trials had the event within their budgets."""

    median: float | None
    low: float | None
    high: float | None


def _crossing(times: np.ndarray, survival: np.ndarray) -> float | None:
    """The first time at which `survival` is <= 0.5 (the standard median definition), else None."""
    below = np.flatnonzero(survival <= 0.5 + 1e-12)  # S is a product of fractions: allow rounding
    return float(times[below[0]]) if below.size else None


def km_median(times: np.ndarray | list[float], observed: np.ndarray | list[bool],
              confidence: float = CONFIDENCE) -> Median:
    """Kaplan-Meier median of `times` (observed events where `observed`, right-censored elsewhere).

    CI: the pointwise log-log band of S(t) (Greenwood variance) inverted at 0.5 (Brookmeyer-Crowley, as
    R's survfit does): the lower limit is where the band's lower edge first falls to 0.5, the upper limit
    where its upper edge does -- None if it never does within the data. Where S(t) = 0 the band is
    undefined: its lower edge is taken as 0 there and its upper edge as not falling (None, like R's NA).
    """
    times, observed = np.asarray(times, dtype=float), np.asarray(observed, dtype=bool)
    if times.size == 0 or not observed.any():
        return Median(None, None, None)
    fit = stats.ecdf(stats.CensoredData(uncensored=times[observed], right=times[~observed]))
    t, s = fit.sf.quantiles, fit.sf.probabilities
    median = _crossing(t, s)
    if observed.sum() == 1 and times.size == 1:  # the band is undefined for a single observation
        return Median(median, None, None)
    with warnings.catch_warnings():  # "undefined at some observations": where S is 0 or 1; handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        band = fit.sf.confidence_interval(confidence_level=confidence, method="log-log")
    low_edge = np.where(np.isnan(band.low.probabilities), s, band.low.probabilities)
    high_edge = np.where(np.isnan(band.high.probabilities), 1.0, band.high.probabilities)
    return Median(median, _crossing(t, low_edge), _crossing(t, high_edge))


def _km_point(times: np.ndarray, observed: np.ndarray) -> float | None:
    if not observed.any():
        return None
    fit = stats.ecdf(stats.CensoredData(uncensored=times[observed], right=times[~observed]))
    return _crossing(fit.sf.quantiles, fit.sf.probabilities)


def time_to_event(frame: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Add `_time` and `_observed`: the metric's step where it happened, else the censoring time.

    A trial without the event is censored at steps_run (for grokking_delay: at steps_run minus its
    memorisation step, or at 0 -- i.e. dropped from the risk set -- if it never memorised)."""
    if metric not in EVENTS:
        raise UserError(f"--metric: {metric!r} is not an event; choose one of {', '.join(EVENTS)}")
    if metric == "grokking_delay":
        censor_at = pl.col("steps_run") - pl.col("steps_to_memorize").fill_null(pl.col("steps_run"))
    else:
        censor_at = pl.col("steps_run")
    return (frame.with_columns(_observed=pl.col(metric).is_not_null(),
                               _time=pl.coalesce(pl.col(metric), censor_at).cast(pl.Float64))
            .filter(pl.col("_time").is_not_null()))


# --- power law ---

def power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Least-squares fit of log y = log prefactor + exponent * log x; (exponent, prefactor) or None."""
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if np.unique(x).size < 2:
        return None
    exponent, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(exponent), float(math.exp(intercept))


def fit_scaling(groups: list[tuple[float, np.ndarray, np.ndarray]], n_boot: int = 1000, seed: int = 0,
                confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Power-law fit of the KM median against x over `groups` of (x, times, observed); the exponent's CI
    is a percentile bootstrap that resamples trials within each x (groups whose resampled median is
    undefined drop out of that replicate)."""
    points = [(x, _km_point(t, o)) for x, t, o in groups]
    points = [(x, m) for x, m in points if m is not None and x is not None and x > 0]
    result: dict[str, Any] = dict.fromkeys(FIT_KEYS)
    result["n_points"] = len(points)
    estimate = power_law(np.array([p[0] for p in points], float), np.array([p[1] for p in points], float))
    if estimate is None:
        return result
    result["exponent"], result["prefactor"] = estimate
    rng = np.random.default_rng(seed)
    exponents = []
    for _ in range(n_boot):
        xs, ms = [], []
        for x, t, o in groups:
            if x is None or x <= 0:
                continue
            pick = rng.integers(0, t.size, t.size)
            m = _km_point(t[pick], o[pick])
            if m is not None:
                xs.append(x)
                ms.append(m)
        fitted = power_law(np.array(xs, float), np.array(ms, float))
        if fitted is not None:
            exponents.append(fitted[0])
    if exponents:
        tail = (1 - confidence) / 2 * 100
        result["exponent_low"], result["exponent_high"] = (float(v) for v in np.percentile(exponents,
                                                                                             [tail, 100 - tail]))
    return result


# --- loading ---

def _finished_trials(root: str | Path | None, names: list[str], columns: list[str],
                     rows: pl.DataFrame | None = None) -> pl.DataFrame:
    """The named sweeps' trials that are no longer running, with `columns` checked against the schema.
    `rows`: their stored rows, already read by the caller (the report page reads them once); else read."""
    for column in columns:
        if column not in store.TRIAL_SCHEMA:
            raise UserError(f"unknown column {column!r}; trial columns: {', '.join(store.TRIAL_SCHEMA)}")
    if rows is not None:
        frame = rows.filter(pl.col("status") != store.RUNNING)
    else:
        frame = store.collect(lambda: store.trials(root, names).filter(pl.col("status") != store.RUNNING))
    if frame.is_empty():
        raise UserError(f"no finished trials in sweep(s) {', '.join(names)}")
    return frame


@dataclass
class Study:
    x: str
    by: str | None
    metric: str
    rows: pl.DataFrame  # [by], x, *STUDY_ROW_KEYS (binned x: also x_low, x_high; x is the bin's centre)
    fit: dict[str, Any]  # FIT_KEYS; with `by`: {str(group value): FIT_KEYS}
    censored_at: dict[tuple[Any, ...], float] = field(default_factory=dict, repr=False)  # (by, x) -> largest
    # censoring time of the group (where the median was not reached: drawn as "> budget" there)
    bins: int | None = None  # x was binned into this many bins (continuous x); None: one group per value

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows.to_dicts(), "fit": self.fit}


def study(names: list[str], x: str, by: str | None = None, metric: str = "steps_to_generalize",
          root: str | Path | None = None, n_boot: int = 1000, seed: int = 0, bins: int | None = None,
          rows: pl.DataFrame | None = None) -> Study:
    """For each x (and `by` group): n_trials, n_grokked, the KM median of `metric` with its CI, and the
    plain median grokking_delay of the trials that grokked; plus the power-law fit of km_median vs x.

    bins: a continuous x (a distribution in a random/Optuna sweep, where each sampled value is its own
    group of a few seeds) is binned: None chooses a number from the data for such an x and leaves grid
    values alone; 0 never bins; N bins into N quantile bins (log-spaced where x > 0 spans decades). A bin's
    x is the geometric (or plain) mean of its jobs' x, and its edges are `x_low` / `x_high`.
    rows: the sweeps' stored rows if already read (store.trials), else they are read here."""
    if bins is not None and bins < 0:
        raise UserError(f"--bins: must be >= 0 (0: no binning), got {bins}")
    columns = [x] + ([by] if by else [])
    frame = time_to_event(_finished_trials(root, names, columns, rows), metric)
    if frame.is_empty():
        raise UserError(f"no finished trials with a step count in sweep(s) {', '.join(names)}")
    if bins is None:
        bins = default_bins(frame[x]) if continuous(root, names, x) else 0
    edges = None
    if bins and frame[x].dtype.is_numeric() and frame[x].n_unique() > bins:
        frame, edges = _binned(frame, x, bins)
    keys = columns[::-1]  # by first, then x
    rows, fits, censored_at = [], {}, {}
    group_frames = frame.sort(keys, nulls_last=True).partition_by(keys, maintain_order=True, as_dict=True)
    per_by: dict[Any, list[tuple[Any, np.ndarray, np.ndarray]]] = {}
    for key, group in group_frames.items():
        times, observed = group["_time"].to_numpy(), group["_observed"].to_numpy()
        median = km_median(times, observed)
        delays = group.filter(pl.col("_observed") & pl.col("grokking_delay").is_not_null())["grokking_delay"]
        row = dict(zip(keys, key, strict=True))
        row.update(n_trials=group.height, n_grokked=int(observed.sum()), km_median=median.median,
                   km_median_low=median.low, km_median_high=median.high,
                   median_delay=None if delays.is_empty() else float(delays.median()))
        if edges is not None:
            row.update(x_low=group["_x_low"][0], x_high=group["_x_high"][0])
        if (~observed).any():
            censored_at[tuple(key)] = float(times[~observed].max())
        rows.append(row)
        x_value = row[x] if isinstance(row[x], int | float) and not isinstance(row[x], bool) else None
        per_by.setdefault(row[by] if by else None, []).append((x_value, times, observed))
    for group_value, groups in per_by.items():
        fits[group_value] = fit_scaling(groups, n_boot=n_boot, seed=seed)
    fit = fits[None] if by is None else {str(k): v for k, v in fits.items()}
    schema = {name: frame.schema[name] for name in keys} | {
        "n_trials": pl.Int64, "n_grokked": pl.Int64, "km_median": pl.Float64, "km_median_low": pl.Float64,
        "km_median_high": pl.Float64, "median_delay": pl.Float64}
    if edges is not None:
        schema |= {"x_low": pl.Float64, "x_high": pl.Float64}
    return Study(x=x, by=by, metric=metric, rows=pl.DataFrame(rows, schema=schema, orient="row"), fit=fit,
                 censored_at=censored_at, bins=None if edges is None else len(edges) - 1)


def continuous(root: str | Path | None, names: list[str], column: str) -> bool:
    """Whether `column` is drawn from a distribution (uniform, log_uniform_values, ... in a random or
    Optuna sweep) in any of the sweeps, read from their saved specs: its values are not a grid."""
    import yaml

    for name in names:
        text = store.read_sweep_file(root, name, "spec.yaml")
        try:
            raw = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            continue
        if not isinstance(raw, dict) or raw.get("method") not in ("random", "optuna"):
            continue
        body = (raw.get("parameters") or {}).get(column)
        if isinstance(body, dict) and "values" not in body and "value" not in body:
            return True
    return False


def default_bins(values: pl.Series) -> int:
    """About sqrt(distinct x) bins, 3 to 10, and at least ~6 jobs in each."""
    distinct = values.drop_nulls().n_unique()
    return int(min(10, max(3, round(math.sqrt(distinct))), max(1, values.drop_nulls().len() // 6)))


def _binned(frame: pl.DataFrame, x: str, bins: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Replace x by its bin's centre (geometric mean on a log scale) and add `_x_low` / `_x_high`."""
    values = frame[x].cast(pl.Float64).to_numpy()
    finite = values[np.isfinite(values)]
    log = finite.size > 1 and finite.min() > 0 and finite.max() / finite.min() >= 10
    scaled = np.log(finite) if log else finite
    edges = np.unique(np.quantile(scaled, np.linspace(0, 1, bins + 1)))
    index = np.clip(np.searchsorted(edges, np.log(values) if log else values, side="right") - 1, 0, edges.size - 2)
    raw_edges = np.exp(edges) if log else edges
    frame = frame.with_columns(_bin=pl.Series(index), _x_low=pl.Series(raw_edges[index]),
                               _x_high=pl.Series(raw_edges[index + 1]))
    centre = (pl.col(x).cast(pl.Float64).log().mean().exp() if log else pl.col(x).cast(pl.Float64).mean())
    frame = frame.with_columns(centre.over("_bin").alias(x))
    return frame, raw_edges


# --- phases (Liu et al. 2022, "Towards understanding grokking: an effective theory") ---

@dataclass(frozen=True)
class PhaseThresholds:
    """memorize_acc / generalize_acc: the train / validation accuracy that counts as memorised /
    generalised (the stored events use 0.99; other values are recomputed from the curves).
    grok_factor: a generalising trial is `grokking` if its delay (t_gen - t_mem) >= grok_factor * t_mem,
    else `comprehension` (train and validation accuracy rise nearly together)."""

    memorize_acc: float = MEMORIZE_ACC
    generalize_acc: float = GENERALIZE_ACC
    grok_factor: float = 1.0


def classify(mem: int | None, gen: int | None, grok_factor: float) -> str:
    """One trial's phase from its memorisation and generalisation steps (None: never within budget)."""
    if gen is not None:
        if mem is not None and gen - mem >= grok_factor * max(mem, 1):
            return "grokking"
        return "comprehension"
    return "memorization" if mem is not None else "confusion"


def _event_steps(root: str | Path | None, names: list[str], frame: pl.DataFrame,
                 thresholds: PhaseThresholds) -> pl.DataFrame:
    """`_mem` and `_gen` per trial: the stored events at the default thresholds, else from the curves."""
    if (thresholds.memorize_acc, thresholds.generalize_acc) == (MEMORIZE_ACC, GENERALIZE_ACC):
        return frame.with_columns(_mem=pl.col("steps_to_memorize"), _gen=pl.col("steps_to_generalize"))
    firsts = store.collect(lambda: store.curves(root, names).group_by("sweep", "trial_id").agg(
        _mem=pl.col("step").filter(pl.col("train_acc") >= thresholds.memorize_acc).min(),
        _gen=pl.col("step").filter(pl.col("val_acc") >= thresholds.generalize_acc).min()))
    return frame.join(firsts, on=["sweep", "trial_id"], how="left")


@dataclass
class PhaseDiagram:
    x: str
    y: str
    thresholds: PhaseThresholds
    rows: pl.DataFrame  # x, y, phase (the most common), n_trials, n_<phase> for each phase
    trials: pl.DataFrame = field(repr=False)  # sweep, trial_id, x, y, phase
    continuous: bool = False  # x or y drawn from a distribution (random / Optuna): a scatter, not cells

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows.to_dicts(), "thresholds": vars(self.thresholds)}


def phase(names: list[str], x: str, y: str, root: str | Path | None = None,
          thresholds: PhaseThresholds = PhaseThresholds(), rows: pl.DataFrame | None = None) -> PhaseDiagram:
    """Each trial's phase, and per (x, y) cell the counts and the most common phase (ties: PHASES order).
    rows: the sweeps' stored rows if already read (store.trials), else they are read here."""
    if thresholds.grok_factor < 0:
        raise UserError(f"--grok-factor: must be >= 0, got {thresholds.grok_factor}")
    for name in ("memorize_acc", "generalize_acc"):
        if not 0 < getattr(thresholds, name) <= 1:
            raise UserError(f"--{name.replace('_', '-')}: must be in (0, 1], got {getattr(thresholds, name)}")
    frame = _event_steps(root, names, _finished_trials(root, names, [x, y], rows), thresholds)
    labelled = frame.with_columns(phase=pl.struct("_mem", "_gen").map_elements(
        lambda s: classify(s["_mem"], s["_gen"], thresholds.grok_factor), return_dtype=pl.String))
    counts = {f"n_{p}": (pl.col("phase") == p).sum().cast(pl.Int64) for p in PHASES}
    cells = labelled.group_by(x, y).agg(n_trials=pl.len().cast(pl.Int64), **counts).sort(x, y, nulls_last=True)
    most = [PHASES[int(np.argmax([row[f"n_{p}"] for p in PHASES]))] for row in cells.iter_rows(named=True)]
    rows = cells.with_columns(phase=pl.Series(most, dtype=pl.String)).select(
        x, y, "phase", "n_trials", *(f"n_{p}" for p in PHASES))
    return PhaseDiagram(x=x, y=y, thresholds=thresholds, rows=rows,
                        trials=labelled.select("sweep", "trial_id", x, y, "phase", CENSORED),
                        continuous=continuous(root, names, x) or continuous(root, names, y))


# --- curves for a plot ---

PLOT_TRIALS = 8  # the old default; `limit` picks this many spread over the sweep when given


def curves_for_plot(name: str, trial_ids: list[str] | None = None, root: str | Path | None = None,
                    limit: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(curves, trials) of the chosen trials; by default every job (with `limit`: that many spread evenly
    over the sweep's range of steps_to_generalize, censored last, so fast, slow and censored runs all show)."""
    trials = store.collect(lambda: store.trials(root, [name]))
    if trial_ids:
        unknown = sorted(set(trial_ids) - set(trials["trial_id"].to_list()))
        if unknown:
            raise UserError(f"unknown trial(s) {', '.join(unknown)} in sweep {name!r}")
        chosen = trial_ids
    elif limit is None:
        chosen = trials["trial_id"].to_list()
    else:
        ordered = trials.sort("steps_to_generalize", "trial_id", nulls_last=True)["trial_id"].to_list()
        picks = np.unique(np.linspace(0, len(ordered) - 1, min(limit, len(ordered))).round().astype(int))
        chosen = [ordered[i] for i in picks] if ordered else []
    curves = store.collect(lambda: store.curves(root, [name]).filter(pl.col("trial_id").is_in(chosen)))
    if curves.is_empty():
        raise UserError(f"no curves stored for {'trial(s) ' + ', '.join(chosen) if trial_ids else 'sweep'} "
                        f"in sweep {name!r}")
    return curves, trials.filter(pl.col("trial_id").is_in(chosen))


def swept_columns(root: str | Path | None, name: str) -> list[str]:
    """The parameters a sweep searches (not constants), from its saved spec; [] if it has none."""
    import yaml

    text = store.read_sweep_file(root, name, "spec.yaml")
    try:
        raw = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return []
    parameters = raw.get("parameters") if isinstance(raw, dict) else None
    if not isinstance(parameters, dict):
        return []
    return [k for k, body in parameters.items() if not (isinstance(body, dict) and set(body) == {"value"})]


def job_for_inspect(name: str, trial_id: str, root: str | Path | None = None) -> tuple[pl.DataFrame, dict]:
    """(curve, row) of one job for `groksweep inspect`; the row may be missing while it runs (then {})."""
    trials = store.collect(lambda: store.trials(root, [name]).filter(pl.col("trial_id") == trial_id))
    curve = store.collect(lambda: store.curves(root, [name]).filter(pl.col("trial_id") == trial_id))
    if curve.is_empty():
        raise UserError(f"no curve stored for trial {trial_id!r} in sweep {name!r}")
    return curve, (trials.row(0, named=True) if trials.height else {"sweep": name, "trial_id": trial_id})
