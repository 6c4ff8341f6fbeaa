"""`groksweep report`: one self-contained HTML page per sweep(s) that a researcher can open offline.

Plotly writes the figures (its JavaScript is inlined once, so the page makes no network request and needs
no server); matplotlib stays for the PNGs (plots.py). The page holds the spec and a summary, learning
curves coloured by a swept parameter (one hoverable line per job up to MAX_LINES jobs, quantile bands per
group beyond, so 10,000 jobs stay a few MB), Kaplan-Meier survival of time-to-grok per group with
censoring ticks, the scaling study on log-log axes, the phase diagram, parallel coordinates coloured by
outcome, the configurations ranked by the objective, Optuna's parameter importances, and any progress
measure the curves hold. Ray-free: it reads the store only.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from orchestrator import UserError, store, studies
from orchestrator.spec import SweepSpec, objective_value
from trainers.metrics import CENSORED, EVENTS

MAX_LINES = 2000  # jobs drawn as one line each; beyond, quantile bands per group
MAX_POINTS = 150  # evaluations kept per drawn line (log-spaced): the page's size does not grow with budgets
GRID_POINTS = 120  # step grid of the quantile bands
MAX_GROUPS = 10  # a continuous colour parameter is binned into at most this many groups (bands, survival)
TABLE_ROWS = 200  # configurations shown in the ranked table
N_BOOT = 200  # bootstrap resamples of the scaling fit in the page (the `study` command defaults to 1000)
CORE_CURVE = ("sweep", "trial_id", "step", "train_loss", "train_acc", "val_loss", "val_acc")
OUTCOMES = ("grokked", "censored", "failed")
OUTCOME_COLORS = {"grokked": "#2a9d5c", "censored": "#e0a030", "failed": "#c8553d"}
PHASE_COLORS = {"comprehension": "#4c9f70", "grokking": "#e0a030", "memorization": "#c8553d",
                "confusion": "#7a7a7a"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}


@dataclass
class ReportData:
    """What the page is drawn from: the sweeps' specs (and spec texts), every row, every curve."""

    root: str
    names: list[str]
    specs: dict[str, SweepSpec]
    spec_texts: dict[str, str]
    trials: pl.DataFrame  # `running` shown as `interrupted` where no live writer holds the sweep
    curves: pl.DataFrame
    swept: list[str]
    color_by: str | None
    notes: list[str] = field(default_factory=list)
    stored_trials: pl.DataFrame | None = None  # the rows as stored, for studies.study / phase (read once)


@dataclass
class Section:
    """One part of the page: a heading, a figure (or HTML), and a line saying what it shows or why not."""

    anchor: str
    title: str
    figure: Any = None  # plotly Figure
    body: str = ""  # HTML
    note: str = ""


# --- loading ---

def load(names: list[str], results: str | Path | None = None, color_by: str | None = None) -> ReportData:
    """Read the sweeps' specs, rows (a `running` row without a live writer shown `interrupted`) and curves."""
    from orchestrator import overview, reconcile
    from orchestrator.sweep import SPEC_FILE, load_sweep_spec, resolve_root

    if not names:
        raise UserError("report: name at least one sweep")
    root = resolve_root(results)
    specs = {name: load_sweep_spec(root, name) for name in names}
    texts = {name: (store.read_sweep_file(root, name, SPEC_FILE) or b"").decode() for name in names}
    stored = [reconcile.rows(root, name).sort("trial_id") for name in names]  # read once for the whole page
    frames = [overview.shown_status(root, name, table) for name, table in zip(names, stored, strict=True)]
    trials = pl.concat([f for f in frames if f.height], how="vertical_relaxed") if any(f.height for f in frames) \
        else pl.DataFrame(schema=store.TRIAL_SCHEMA)
    stored_trials = pl.concat([f for f in stored if f.height], how="vertical_relaxed") \
        if any(f.height for f in stored) else pl.DataFrame(schema=store.TRIAL_SCHEMA)
    present = [name for name in names if name in store.sweeps(root)]
    curves = store.collect(lambda: store.curves(root, present)) if present else pl.DataFrame(schema=store.CURVE_SCHEMA)
    swept: list[str] = []
    for spec in specs.values():
        swept += [k for k, p in spec.parameters.items() if p.kind != "value" and k not in swept]
    if color_by is not None and color_by not in store.TRIAL_SCHEMA:
        raise UserError(f"--color-by: unknown column {color_by!r}; use a trial column such as "
                        f"{', '.join(swept) or 'weight_decay'}")
    return ReportData(root=root, names=names, specs=specs, spec_texts=texts, trials=trials, curves=curves,
                      swept=swept, color_by=color_by or (swept[0] if swept else None), stored_trials=stored_trials)


# --- helpers ---

def _is_numeric(series: pl.Series) -> bool:
    return series.dtype.is_numeric() and series.dtype != pl.Boolean


def _spans_decades(values: np.ndarray) -> bool:
    values = values[np.isfinite(values) & (values > 0)]
    return values.size >= 2 and bool((values > 0).all()) and values.max() / values.min() >= 10


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def outcome(trials: pl.DataFrame) -> pl.Series:
    """grokked / censored / failed per job (interrupted or running jobs count as censored so far)."""
    return trials.select(pl.when(pl.col("status") == store.FAILED).then(pl.lit("failed"))
                         .when(pl.col("steps_to_generalize").is_not_null()).then(pl.lit("grokked"))
                         .otherwise(pl.lit("censored")).alias("outcome"))["outcome"]


def groups_of(trials: pl.DataFrame, column: str | None) -> pl.Series:
    """A label per job for colouring and pooling: the column's value, or a bin of it when it is continuous
    with more than MAX_GROUPS values (log bins when it spans decades)."""
    if column is None:
        return pl.Series("group", ["all"] * trials.height)
    series = trials[column]
    if not _is_numeric(series) or series.n_unique() <= MAX_GROUPS:
        return pl.Series("group", [f"{column}={_fmt(v)}" for v in series.to_list()])
    values = series.cast(pl.Float64).to_numpy()
    finite = values[np.isfinite(values)]
    log = _spans_decades(finite)
    edges = np.quantile(np.log10(finite) if log else finite, np.linspace(0, 1, MAX_GROUPS + 1))
    edges = 10 ** edges if log else edges
    edges = np.unique(edges)
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    labels = [f"{column} in [{edges[i]:.3g}, {edges[i + 1]:.3g}]" if np.isfinite(v) else f"{column}=–"
              for i, v in zip(index, values, strict=True)]
    return pl.Series("group", labels)


def _group_order(labels: pl.Series, trials: pl.DataFrame, column: str | None) -> list[str]:
    """Groups in the order of their column values (numeric order, not text order)."""
    if column is None:
        return ["all"]
    frame = pl.DataFrame({"group": labels, "key": trials[column]})
    first = frame.group_by("group", maintain_order=True).agg(pl.col("key").min()).sort("key", nulls_last=True)
    return first["group"].to_list()


def colored_groups(frame: pl.DataFrame, column: str | None) -> tuple[pl.Series, list[str], dict[str, str]]:
    """Each row's group label, the groups in drawing order, and each group's colour."""
    labels = groups_of(frame, column)
    order = _group_order(labels, frame, column)
    return labels, order, dict(zip(order, _palette(len(order)), strict=True))


def _palette(n: int) -> list[str]:
    import plotly.colors as pc

    if n <= 10:
        return pc.qualitative.D3[:n] if n > 2 else ["#1f77b4", "#d62728"][:n]
    return pc.sample_colorscale("Viridis", [i / max(n - 1, 1) for i in range(n)])


def _config_text(row: dict[str, Any], swept: list[str]) -> str:
    parts = [f"<b>{html.escape(str(row['trial_id']))}</b> ({html.escape(str(row['sweep']))})"]
    parts += [f"{k} = {_fmt(row.get(k))}" for k in swept] + [f"seed = {row.get('seed')}"]
    parts.append(f"status {row.get('status')}, steps_run {_fmt(row.get('steps_run'))}")
    parts.append(f"memorised {_fmt(row.get('steps_to_memorize'))}, generalised {_fmt(row.get('steps_to_generalize'))}")
    return "<br>".join(parts)


def _thin(steps: np.ndarray, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most `limit` evaluations, log-spaced in step (curves are read on a log axis)."""
    if steps.size <= limit:
        return np.arange(steps.size)
    targets = np.geomspace(1, steps.size, limit) - 1
    return np.unique(np.concatenate([[0], targets.round().astype(int), [steps.size - 1]]))


def _log_step(steps: np.ndarray) -> np.ndarray:
    """Step 0 drawn at step 1 on the log axis (the hover shows the true step)."""
    return np.where(steps > 0, steps, 1)


# --- sections ---

def summary_section(data: ReportData) -> Section:
    """The spec and, per sweep: jobs by status, outcomes, trial-steps spent, training time and wall time."""
    rows = []
    for name in data.names:
        table = data.trials.filter(pl.col("sweep") == name)
        spec = data.specs[name]
        counts = {s: int((table["status"] == s).sum()) for s in store.STATUSES} if table.height else {}
        outcomes = outcome(table).value_counts() if table.height else pl.DataFrame()
        by_outcome = dict(zip(outcomes["outcome"].to_list(), outcomes["count"].to_list(), strict=True)) \
            if table.height else {}
        started = table["started_at"].drop_nulls().min() if table.height else None
        ended = table["ended_at"].drop_nulls().max() if table.height else None
        elapsed = (ended - started).total_seconds() if isinstance(started, dt.datetime) and \
            isinstance(ended, dt.datetime) else None
        rows.append({"sweep": name, "method": spec.method, "jobs owed": spec.n_jobs, "rows": table.height,
                     **counts, **{o: by_outcome.get(o, 0) for o in OUTCOMES},
                     "trial-steps spent": int(table["steps_run"].fill_null(0).sum()) if table.height else 0,
                     "training time (s, summed)": round(float(table["wall_s"].fill_null(0).sum()), 1)
                     if table.height else 0.0,
                     "wall time (first start to last end)": _duration(elapsed)})
    body = _html_table(rows)
    for name in data.names:
        body += (f"<details open><summary>spec of <code>{html.escape(name)}</code></summary>"
                 f"<pre class='spec'>{html.escape(data.spec_texts[name])}</pre></details>")
    return Section("summary", "Summary", body=body,
                   note="Statuses as stored; a job still `running` without a live writer is shown `interrupted`.")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return str(dt.timedelta(seconds=round(seconds)))


def _html_table(rows: list[dict[str, Any]], classes: str = "") -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    return f"<table class='{classes}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def curves_section(data: ReportData, max_lines: int = MAX_LINES) -> Section:
    """Validation (solid) and training (dotted) accuracy against step, coloured by the colour parameter."""
    import plotly.graph_objects as go

    trials = data.trials.filter(pl.col("trial_id").is_in(data.curves["trial_id"].unique().implode()))
    if trials.is_empty():
        return Section("curves", "Learning curves", note="No curves stored yet.")
    labels, order, colors = colored_groups(trials, data.color_by)
    figure = go.Figure()
    if trials.height <= max_lines:
        note = (f"Every job ({trials.height}): validation accuracy solid, training accuracy dotted; hover a "
                f"line for its configuration. Step 0 is drawn at step 1 on the log axis.")
        _job_lines(figure, data, trials, labels, colors)
    else:
        note = (f"{trials.height} jobs (more than {max_lines}): per group the median validation accuracy, "
                "its 25-75 % (dark) and 10-90 % (light) bands, and the median training accuracy (dotted); a "
                "job that stopped keeps its last value. Step 0 is drawn at step 1.")
        _bands(figure, data, trials, labels, order, colors)
    figure.update_layout(xaxis={"type": "log", "title": "step (optimiser steps)"},
                         yaxis={"title": "accuracy", "range": [-0.02, 1.02]},
                         legend={"title": {"text": data.color_by or ""}, "groupclick": "togglegroup"},
                         height=480, margin={"t": 30}, hovermode="closest")
    return Section("curves", f"Learning curves coloured by {data.color_by or 'sweep'}", figure=figure, note=note)


def _job_lines(figure: Any, data: ReportData, trials: pl.DataFrame, labels: pl.Series,
               colors: dict[str, str]) -> None:
    import plotly.graph_objects as go

    rows = {row["trial_id"]: row for row in trials.iter_rows(named=True)}
    group_of = dict(zip(trials["trial_id"].to_list(), labels.to_list(), strict=True))
    shown: set[str] = set()
    by_job = data.curves.sort("step").partition_by("trial_id", as_dict=True, maintain_order=True)
    for (trial_id,), curve in sorted(by_job.items(), key=lambda item: (group_of.get(item[0][0], ""), item[0][0])):
        if trial_id not in rows:
            continue
        group = group_of[trial_id]
        steps = curve["step"].to_numpy()
        keep = _thin(steps)
        x = _log_step(steps[keep])
        text = _config_text(rows[trial_id], data.swept)
        figure.add_trace(go.Scatter(
            x=x, y=curve["val_acc"].to_numpy()[keep], mode="lines", name=group, legendgroup=group,
            showlegend=group not in shown, line={"color": colors[group], "width": 1.2}, opacity=0.85,
            customdata=steps[keep], hovertemplate=text + "<br>step %{customdata}: val_acc %{y:.3f}<extra></extra>"))
        figure.add_trace(go.Scatter(
            x=x, y=curve["train_acc"].to_numpy()[keep], mode="lines", legendgroup=group, showlegend=False,
            line={"color": colors[group], "width": 0.8, "dash": "dot"}, opacity=0.5, hoverinfo="skip"))
        shown.add(group)


def aligned_section(data: ReportData, max_lines: int = MAX_LINES) -> Section:
    """Validation accuracy against steps since memorisation (step - steps_to_memorize): the plateau and the
    jump of every memorised job on one clock, so that the delay, not the memorisation time, lines up."""
    import plotly.graph_objects as go

    trials = data.trials.filter(pl.col("steps_to_memorize").is_not_null()
                                & pl.col("trial_id").is_in(data.curves["trial_id"].unique().implode()))
    if trials.is_empty():
        return Section("aligned", "Aligned at memorisation", note="No job has memorised yet.")
    labels, order, colors = colored_groups(trials, data.color_by)
    memorised = dict(zip(trials["trial_id"].to_list(), trials["steps_to_memorize"].to_list(), strict=True))
    group_of = dict(zip(trials["trial_id"].to_list(), labels.to_list(), strict=True))
    curves = (data.curves.filter(pl.col("trial_id").is_in(list(memorised)))
              .with_columns((pl.col("step") - pl.col("trial_id").replace_strict(memorised, return_dtype=pl.Int64))
                            .alias("since")).sort("since"))
    figure, shown = go.Figure(), set()
    if trials.height <= max_lines:
        rows = {row["trial_id"]: row for row in trials.iter_rows(named=True)}
        for (trial_id,), curve in sorted(curves.partition_by("trial_id", as_dict=True).items(),
                                         key=lambda item: (group_of[item[0][0]], item[0][0])):
            group = group_of[trial_id]
            keep = _thin(curve["since"].to_numpy(), limit=MAX_POINTS)
            figure.add_trace(go.Scatter(
                x=curve["since"].to_numpy()[keep], y=curve["val_acc"].to_numpy()[keep], mode="lines", name=group,
                legendgroup=group, showlegend=group not in shown, line={"color": colors[group], "width": 1.2},
                opacity=0.85, hovertemplate=_config_text(rows[trial_id], data.swept)
                + "<br>%{x} steps after memorising: val_acc %{y:.3f}<extra></extra>"))
            shown.add(group)
        note = f"Every memorised job ({trials.height}); x = 0 is the step it memorised (train_acc >= 0.99)."
    else:
        grid = np.linspace(0, float(curves["since"].max()), GRID_POINTS)
        for group in order:
            ids = [t for t, g in group_of.items() if g == group]
            values = np.full((len(ids), grid.size), np.nan)
            for i, (_, curve) in enumerate(curves.filter(pl.col("trial_id").is_in(ids))
                                           .partition_by("trial_id", as_dict=True).items()):
                since, acc = curve["since"].to_numpy().astype(float), curve["val_acc"].to_numpy()
                values[i] = np.interp(grid, since, acc, left=np.nan, right=acc[-1])
            figure.add_trace(go.Scatter(x=grid, y=_nanquantiles(values, [0.5])[0], mode="lines", name=group,
                                        line={"color": colors[group], "width": 2}))
        note = (f"{trials.height} memorised jobs (more than {max_lines}): per group the median validation "
                "accuracy against steps since memorising.")
    figure.update_layout(xaxis={"title": "steps since memorisation"},
                         yaxis={"title": "validation accuracy", "range": [-0.02, 1.02]},
                         legend={"title": {"text": data.color_by or ""}}, height=420, margin={"t": 30},
                         hovermode="closest")
    return Section("aligned", "Aligned at memorisation", figure=figure, note=note)


def _grid(curves: pl.DataFrame) -> np.ndarray:
    steps = curves["step"].to_numpy()
    positive = steps[steps > 0]
    if positive.size == 0:
        return np.array([0.0])
    return np.unique(np.concatenate([[0], np.geomspace(positive.min(), positive.max(), GRID_POINTS)]))


def interpolated(curves: pl.DataFrame, column: str, trial_ids: list[str], grid: np.ndarray) -> np.ndarray:
    """(jobs, grid) values of `column`, linearly interpolated (np.interp's arithmetic); a job that ended keeps
    its last value, before its first evaluation it is NaN. All jobs at once: a loop over 10,000 jobs' curves
    made a live page of a 10,000-job sweep cost ~6 s of CPU."""
    out = np.full((len(trial_ids), grid.size), np.nan)
    position = {t: i for i, t in enumerate(trial_ids)}
    frame = (curves.select("trial_id", "step", column).drop_nulls().filter(pl.col(column).is_not_nan())
             .join(pl.DataFrame({"trial_id": list(position), "row": list(position.values())},
                                schema={"trial_id": pl.String, "row": pl.Int64}), on="trial_id")
             .sort("row", "step"))
    if frame.is_empty():
        return out
    rows, steps = frame["row"].to_numpy(), frame["step"].to_numpy().astype(float)
    values = frame[column].to_numpy().astype(float)
    # one sorted key for (job, step): row * width + the step's rank among every step and grid point (exact)
    levels = np.unique(np.concatenate([steps, grid]))
    width = levels.size + 1
    keys = rows * width + np.searchsorted(levels, steps)
    jobs = np.unique(rows)
    query = jobs[:, None] * width + np.searchsorted(levels, grid)[None, :]
    last = np.searchsorted(keys, query, side="right") - 1  # the job's last evaluation at or before each point
    before = np.clip(last, 0, None)
    seen = (last >= 0) & (rows[before] == jobs[:, None])  # else: before the job's first evaluation (NaN)
    following = np.minimum(before + 1, rows.size - 1)
    between = seen & (following != before) & (rows[following] == jobs[:, None]) & (steps[before] < grid[None, :])
    slope = np.where(between, (values[following] - values[before]) /
                     np.where(between, steps[following] - steps[before], 1.0), 0.0)
    result = np.where(between, slope * (grid[None, :] - steps[before]) + values[before], values[before])
    out[jobs] = np.where(seen, result, np.nan)
    return out


def _bands(figure: Any, data: ReportData, trials: pl.DataFrame, labels: pl.Series, order: list[str],
           colors: dict[str, str]) -> None:
    import plotly.colors as pc
    import plotly.graph_objects as go

    grid = _grid(data.curves)
    x = _log_step(grid)
    ids = trials["trial_id"].to_list()
    val = interpolated(data.curves, "val_acc", ids, grid)
    train = interpolated(data.curves, "train_acc", ids, grid)
    label_array = np.array(labels.to_list())
    for group in order:
        members = label_array == group
        if not members.any():
            continue
        rgb = pc.unlabel_rgb(pc.convert_colors_to_same_type(colors[group], "rgb")[0][0])
        q = _nanquantiles(val[members], [0.1, 0.25, 0.5, 0.75, 0.9])
        for low, high, alpha in ((0, 4, 0.12), (1, 3, 0.25)):
            figure.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([q[low], q[high][::-1]]),
                                        fill="toself", mode="lines", line={"width": 0}, legendgroup=group,
                                        showlegend=False, hoverinfo="skip",
                                        fillcolor=f"rgba({rgb[0]:.0f},{rgb[1]:.0f},{rgb[2]:.0f},{alpha})"))
        figure.add_trace(go.Scatter(
            x=x, y=q[2], mode="lines", name=f"{group} (n={int(members.sum())})", legendgroup=group,
            line={"color": colors[group], "width": 2}, customdata=grid,
            hovertemplate=f"{html.escape(group)}, n = {int(members.sum())} jobs<br>step %{{customdata:.0f}}: "
                          "median val_acc %{y:.3f}<extra></extra>"))
        figure.add_trace(go.Scatter(x=x, y=_nanquantiles(train[members], [0.5])[0], mode="lines",
                                    legendgroup=group, showlegend=False, hoverinfo="skip",
                                    line={"color": colors[group], "width": 1, "dash": "dot"}))


def _nanquantiles(values: np.ndarray, qs: list[float]) -> np.ndarray:
    """Quantiles over jobs at each grid point; NaN where no job has a value yet."""
    out = np.full((len(qs), values.shape[1]), np.nan)
    have = (~np.isnan(values)).any(axis=0)
    if have.any():
        out[:, have] = np.nanquantile(values[:, have], qs, axis=0)
    return out


def survival_section(data: ReportData) -> Section:
    """Kaplan-Meier survival (share of jobs not yet grokked) against step, per group, with censoring ticks."""
    import plotly.graph_objects as go
    from scipy import stats

    finished = data.trials.filter(pl.col("status") != store.RUNNING)
    if finished.is_empty():
        return Section("survival", "Time to grok (Kaplan-Meier)", note="No finished jobs yet.")
    frame = studies.time_to_event(finished, "steps_to_generalize")
    if frame.is_empty():
        return Section("survival", "Time to grok (Kaplan-Meier)", note="No finished job has a step count yet.")
    labels, order, colors = colored_groups(frame, data.color_by)
    figure = go.Figure()
    label_array = np.array(labels.to_list())
    for group in order:
        members = frame.filter(pl.Series(label_array == group))
        times, observed = members["_time"].to_numpy(), members["_observed"].to_numpy()
        if not observed.any():  # no event: S stays 1 up to the last censoring time
            t, s = np.array([0.0, times.max()]), np.array([1.0, 1.0])
        else:
            fit = stats.ecdf(stats.CensoredData(uncensored=times[observed], right=times[~observed]))
            t = np.concatenate([[0.0], fit.sf.quantiles, [max(times.max(), fit.sf.quantiles[-1])]])
            s = np.concatenate([[1.0], fit.sf.probabilities, [fit.sf.probabilities[-1]]])
        median = studies.km_median(times, observed).median
        name = f"{group} (n={len(times)}, median {_fmt(median)})"
        figure.add_trace(go.Scatter(x=t, y=s, mode="lines", line_shape="hv", name=name, legendgroup=group,
                                    line={"color": colors[group], "width": 2},
                                    hovertemplate=f"{html.escape(group)}<br>step %{{x:.0f}}: %{{y:.0%}} not yet "
                                                  "grokked<extra></extra>"))
        censored_at, counts = np.unique(times[~observed], return_counts=True)  # one tick per distinct step
        if censored_at.size:
            at = s[np.searchsorted(t, censored_at, side="right") - 1]
            figure.add_trace(go.Scatter(x=censored_at, y=at, mode="markers", legendgroup=group, showlegend=False,
                                        marker={"symbol": "line-ns-open", "size": 11, "color": colors[group],
                                                "line": {"width": 2}}, customdata=counts,
                                        hovertemplate="%{customdata} job(s) censored at step %{x:.0f}<extra></extra>"))
    figure.update_layout(xaxis={"title": "step (optimiser steps)"}, height=420, margin={"t": 30},
                         yaxis={"title": "share not yet generalised (val_acc < 0.99)", "range": [-0.02, 1.05]},
                         legend={"title": {"text": data.color_by or ""}})
    return Section("survival", "Time to grok: Kaplan-Meier survival per group", figure=figure,
                   note="Vertical ticks: jobs censored there (their budget ended before val_acc >= 0.99); they "
                        "count as not grokked up to that step, never as missing.")


def scaling_section(data: ReportData) -> Section:
    """The `study` of KM median time-to-grok against the first numeric swept parameter, on log-log axes."""
    import plotly.graph_objects as go

    numeric = [c for c in data.swept if c in data.trials.columns and _is_numeric(data.trials[c])]
    if not numeric:
        return Section("scaling", "Scaling study", note="No numeric swept parameter to scale against.")
    x_name = numeric[0]
    try:
        result = studies.study(data.names, x=x_name, root=data.root, n_boot=N_BOOT, rows=data.stored_trials)
    except UserError as error:
        return Section("scaling", "Scaling study", note=str(error))
    all_x = result.rows[x_name].cast(pl.Float64).to_numpy()
    log_x = bool((all_x > 0).any())  # plotly has no symlog: x <= 0 (e.g. no weight decay) is listed instead
    off_axis = result.rows.filter(pl.col(x_name).cast(pl.Float64) <= 0) if log_x else result.rows.clear()
    rows = result.rows.filter(pl.col(x_name).cast(pl.Float64) > 0) if log_x else result.rows
    figure = go.Figure()
    reached = rows.filter(pl.col("km_median").is_not_null())
    x = reached[x_name].cast(pl.Float64).to_numpy()
    y = reached["km_median"].to_numpy()
    low = reached["km_median_low"].fill_null(np.nan).to_numpy()
    high = reached["km_median_high"].fill_null(np.nan).to_numpy()
    labels = [f"CI {_fmt(lo) if np.isfinite(lo) else 'open'} to {_fmt(hi) if np.isfinite(hi) else 'open'}; "
              f"{g} of {n} grokked" for lo, hi, g, n in zip(low, high, reached["n_grokked"], reached["n_trials"],
                                                         strict=True)]
    binned = "x_low" in reached.columns
    error_x = ({"type": "data", "symmetric": False, "array": reached["x_high"].to_numpy() - x,
                "arrayminus": x - reached["x_low"].to_numpy(), "thickness": 1, "width": 3} if binned else None)
    figure.add_trace(go.Scatter(
        x=x, y=y, mode="markers", name="KM median (95% CI" + (", bin edges)" if binned else ")"),
        marker={"size": 9, "color": "#1f77b4"}, error_x=error_x,
        error_y={"type": "data", "symmetric": False, "array": np.nan_to_num(high - y, nan=0),
                 "arrayminus": np.nan_to_num(y - low, nan=0), "thickness": 1.5, "width": 5},
        text=labels, hovertemplate=f"{x_name} %{{x:.4g}}<br>KM median %{{y:.0f}} (%{{text}})<extra></extra>"))
    fit = result.fit
    positive = x[x > 0]
    if fit.get("exponent") is not None and positive.size:
        grid = np.geomspace(positive.min(), positive.max(), 50)
        ci = (f" [{fit['exponent_low']:.2f}, {fit['exponent_high']:.2f}]" if fit.get("exponent_low") is not None
              else "")
        figure.add_trace(go.Scatter(x=grid, y=fit["prefactor"] * grid ** fit["exponent"], mode="lines",
                                    name=f"fit: exponent {fit['exponent']:.2f}{ci}",
                                    line={"dash": "dash", "color": "#444"}, hoverinfo="skip"))
    open_ci = reached.filter(pl.col("km_median_high").is_null())
    censored = rows.filter(pl.col("km_median").is_null())
    if censored.height:
        cx = censored[x_name].cast(pl.Float64).to_numpy()
        cy = [result.censored_at.get((v,), math.nan) for v in censored[x_name].to_list()]
        figure.add_trace(go.Scatter(
            x=cx, y=cy, mode="markers+text", text=["> budget"] * censored.height, textposition="top center",
            name="median not reached (> budget: largest censored step)",
            marker={"symbol": "triangle-up-open", "size": 11, "color": "#e0a030", "line": {"width": 2}},
            hovertemplate=f"{x_name} %{{x:.4g}}: fewer than half grokked within %{{y:.0f}} steps<extra></extra>"))
    figure.update_layout(xaxis={"title": x_name + (f" ({result.bins} bins)" if result.bins else ""),
                                "type": "log" if log_x else "linear"},
                         yaxis={"title": "steps to generalise (KM median)", "type": "log"},
                         height=420, margin={"t": 30})
    hidden = "; ".join(f"{x_name} = {_fmt(r[x_name])}: " + (f"KM median {_fmt(r['km_median'])}" if r["km_median"]
                       is not None else f"median not reached (> {_fmt(result.censored_at.get((r[x_name],)))} steps)")
                       for r in off_axis.iter_rows(named=True))
    note = (f"Power law km_median = prefactor * {x_name}^exponent fitted on log-log axes over the x > 0 with a "
            f"median ({fit.get('n_points')} points; bootstrap over jobs, {N_BOOT} resamples)."
            + (f" {open_ci.height} point(s) have no upper CI limit within the budget." if open_ci.height else "")
            + (f" Not on the log axis: {hidden}." if hidden else ""))
    return Section("scaling", f"Scaling study: time to grok against {x_name}", figure=figure, note=note)


def phase_section(data: ReportData) -> Section:
    """Liu et al.'s phases over the first two swept parameters: a heat map for grids, a scatter otherwise;
    censored jobs marked."""
    import plotly.graph_objects as go

    if len(data.swept) < 2:
        return Section("phase", "Phase diagram", note="A phase diagram needs two swept parameters; "
                       f"this sweep searches {', '.join(data.swept) or 'none'}.")
    x_name, y_name = data.swept[:2]
    try:
        diagram = studies.phase(data.names, x=x_name, y=y_name, root=data.root, rows=data.stored_trials)
    except UserError as error:
        return Section("phase", "Phase diagram", note=str(error))
    jobs = diagram.trials
    figure = go.Figure()
    grid = all(data.specs[n].method == "grid" for n in data.names)
    if grid:
        for p in studies.PHASES:
            cells = diagram.rows.filter(pl.col("phase") == p)
            if cells.height:
                figure.add_trace(go.Scatter(
                    x=cells[x_name].to_list(), y=cells[y_name].to_list(), mode="markers", name=p,
                    marker={"symbol": "square", "size": 28, "color": PHASE_COLORS[p]},
                    customdata=np.stack([cells["n_trials"].to_numpy(), cells[f"n_{p}"].to_numpy()], axis=1),
                    hovertemplate=f"{x_name} %{{x}}, {y_name} %{{y}}<br>{p}: %{{customdata[1]}} of "
                                  "%{customdata[0]} jobs<extra></extra>"))
        censored = jobs.group_by(x_name, y_name).agg(pl.col(CENSORED).fill_null(False).sum().alias("c"),
                                                     pl.len().alias("n")).filter(pl.col("c") > 0)
        if censored.height:
            figure.add_trace(go.Scatter(
                x=censored[x_name].to_list(), y=censored[y_name].to_list(), mode="markers",
                name="cell with censored jobs", marker={"symbol": "x-thin-open", "size": 16, "color": "black",
                                                       "line": {"width": 2}},
                customdata=np.stack([censored["c"].to_numpy(), censored["n"].to_numpy()], axis=1),
                hovertemplate="%{customdata[0]} of %{customdata[1]} jobs censored<extra></extra>"))
    else:
        for p in studies.PHASES:
            members = jobs.filter(pl.col("phase") == p)
            if members.height:
                flags = members[CENSORED].fill_null(False).to_list()
                figure.add_trace(go.Scatter(
                    x=members[x_name].to_list(), y=members[y_name].to_list(), mode="markers", name=p,
                    marker={"color": PHASE_COLORS[p], "size": 8,
                            "symbol": ["circle-open" if c else "circle" for c in flags]},
                    text=members["trial_id"].to_list(),
                    hovertemplate=f"%{{text}}<br>{x_name} %{{x:.4g}}, {y_name} %{{y:.4g}}: {p}<extra></extra>"))
    axes = {}
    for axis, name in (("xaxis", x_name), ("yaxis", y_name)):
        values = jobs[name]
        log = _is_numeric(values) and _spans_decades(values.cast(pl.Float64).to_numpy()) \
            and bool((values.cast(pl.Float64).fill_null(0) > 0).all())
        axes[axis] = {"title": name, "type": "log" if log else ("linear" if _is_numeric(values) else "category")}
    figure.update_layout(**axes, height=460, margin={"t": 30}, legend={"title": {"text": "phase"}})
    t = diagram.thresholds
    note = (f"Phases (train >= {t.memorize_acc:g}, val >= {t.generalize_acc:g}; grokking: delay >= "
            f"{t.grok_factor:g} x t_mem). " + ("Each cell: its most common phase; x: a cell holding censored jobs."
                                              if grid else "One point per job; open circles: censored jobs."))
    return Section("phase", f"Phase diagram: {y_name} against {x_name}", figure=figure, note=note)


def parallel_section(data: ReportData, max_lines: int = MAX_LINES) -> Section:
    """Parallel coordinates of the swept parameters and the outcome, coloured grokked / censored / failed;
    drag along an axis to select. Beyond `max_lines` jobs: one line per configuration and outcome (its
    median steps), then a seeded sample that keeps every failed line: browsers draw these lines with WebGL,
    which is slow without a GPU."""
    import plotly.graph_objects as go

    trials = data.trials
    if trials.is_empty() or not data.swept:
        return Section("parallel", "Parallel coordinates", note="No jobs or no swept parameters.")
    frame = trials.select(*data.swept, outcome(trials),
                          pl.coalesce("steps_to_generalize", "steps_run").cast(pl.Float64).alias("_steps"),
                          pl.lit(1).alias("_jobs"))
    counts = {o: int((frame["outcome"] == o).sum()) for o in OUTCOMES}
    what = f"One line per job ({trials.height})"
    if frame.height > max_lines:
        frame = frame.group_by(*data.swept, "outcome").agg(pl.col("_steps").median(), pl.len().alias("_jobs"))
        what = f"{trials.height} jobs: one line per configuration and outcome ({frame.height}, median steps)"
        if frame.height > max_lines:
            failed = frame.filter(pl.col("outcome") == "failed")
            rest = frame.filter(pl.col("outcome") != "failed")
            frame = pl.concat([failed, rest.sample(max(0, max_lines - failed.height), seed=0)])
            what += f", a sample of {frame.height} of them keeping every failed one"
    code = np.array([OUTCOMES.index(o) for o in frame["outcome"].to_list()], float)
    dims = []
    for name in data.swept:
        values = frame[name]
        if _is_numeric(values):
            array = values.cast(pl.Float64).to_numpy()
            if _spans_decades(array) and np.nanmin(array) > 0:
                dims.append({"label": f"log10 {name}", "values": np.log10(array)})
            else:
                dims.append({"label": name, "values": array})
        else:
            levels = sorted({str(v) for v in values.to_list()})
            dims.append({"label": name, "values": [levels.index(str(v)) for v in values.to_list()],
                         "tickvals": list(range(len(levels))), "ticktext": levels})
    dims.append({"label": "steps to generalise (censored: steps run)",
                 "values": np.nan_to_num(frame["_steps"].to_numpy(), nan=0)})
    dims.append({"label": "outcome", "values": code, "tickvals": [0, 1, 2], "ticktext": list(OUTCOMES),
                 "range": [-0.2, 2.2]})
    scale = [[0, OUTCOME_COLORS["grokked"]], [0.33, OUTCOME_COLORS["grokked"]], [0.34, OUTCOME_COLORS["censored"]],
             [0.66, OUTCOME_COLORS["censored"]], [0.67, OUTCOME_COLORS["failed"]], [1, OUTCOME_COLORS["failed"]]]
    figure = go.Figure(go.Parcoords(line={"color": code, "colorscale": scale, "cmin": 0, "cmax": 2},
                                    dimensions=dims))
    figure.update_layout(height=420, margin={"t": 60, "l": 60, "r": 60})
    return Section("parallel", "Parallel coordinates", figure=figure,
                   note=f"{what}: " + ", ".join(f"{o} {n}" for o, n in counts.items())
                        + " jobs (green, orange, red). Drag along an axis to select a range.")


def ranked_section(data: ReportData) -> Section:
    """Configurations (seeds pooled) ranked by the sweep's objective, as the search saw it."""
    parts = []
    for name in data.names:
        spec = data.specs[name]
        table = data.trials.filter((pl.col("sweep") == name) & (pl.col("status") != store.FAILED))
        keys = [k for k in data.swept if k in table.columns] or ["sweep"]
        metric = spec.metrics[0]
        if table.is_empty():
            continue
        scores = [objective_value(metric, {e: row[e] for e in EVENTS}, {metric.name: row.get(metric.name) or math.nan},
                                  row["max_steps"] or 0) for row in table.iter_rows(named=True)]
        scored = table.with_columns(pl.Series("objective", scores, dtype=pl.Float64))
        ranked = (scored.group_by(keys).agg(
            pl.len().alias("jobs"), pl.col("objective").mean().alias(f"mean objective ({metric.name})"),
            pl.col("steps_to_generalize").is_not_null().sum().alias("grokked"),
            pl.col("steps_to_generalize").median().alias("median steps_to_generalize (grokked)"),
            pl.col("steps_run").max().alias("budget"))
            .sort(f"mean objective ({metric.name})", descending=metric.goal == "maximize", nulls_last=True)
            .with_row_index("rank", offset=1))
        shown = ranked.head(TABLE_ROWS)
        more = f" (top {TABLE_ROWS} of {ranked.height})" if ranked.height > TABLE_ROWS else ""
        parts.append(f"<h3>{html.escape(name)}: by {html.escape(metric.name)} ({metric.goal}){more}</h3>"
                     + _html_table(shown.to_dicts(), "ranked"))
    return Section("ranked", "Configurations ranked by the objective", body="".join(parts) or "<p>(no jobs)</p>",
                   note="Objective per job as the search saw it: the event's step, or 2 x max_steps where it "
                        "never happened (censored); averaged over seeds. Failed jobs are left out.")


def importance_section(data: ReportData) -> Section | None:
    """Optuna's parameter importances (fANOVA) for each Optuna sweep; None when no sweep is Optuna's."""
    import plotly.graph_objects as go

    optuna_names = [n for n in data.names if data.specs[n].method == "optuna"]
    if not optuna_names:
        return None
    figure, notes = go.Figure(), []
    for name in optuna_names:
        try:
            importances = optuna_importances(data.root, data.specs[name])
        except Exception as error:  # too few trials, a remote root, no journal: say so, draw the rest
            notes.append(f"{name}: no importances ({type(error).__name__}: {str(error).splitlines()[0][:160]})")
            continue
        keys = list(importances)[::-1]
        figure.add_trace(go.Bar(x=[importances[k] for k in keys], y=keys, orientation="h", name=name,
                                hovertemplate="%{y}: %{x:.3f}<extra>" + html.escape(name) + "</extra>"))
    if not figure.data:
        return Section("importance", "Optuna parameter importances", note="; ".join(notes))
    figure.update_layout(xaxis={"title": "importance (fANOVA, share of the objective's variance)"}, height=320,
                         margin={"t": 30}, barmode="group")
    return Section("importance", "Optuna parameter importances", figure=figure,
                   note="Optuna's fANOVA over the COMPLETE trials (first objective for multi-objective sweeps). "
                        + "; ".join(notes))


def optuna_importances(root: str, spec: SweepSpec) -> dict[str, float]:
    import optuna

    from orchestrator.optuna_search import JOURNAL_FILE, journal_storage

    path = Path(store.sweep_dir(root, spec.name)) / JOURNAL_FILE
    if not path.exists():
        raise UserError(f"no Optuna journal at {path}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=spec.name, storage=journal_storage(str(path)))
    target = (lambda t: t.values[0]) if spec.multi_objective else None
    return optuna.importance.get_param_importances(study, target=target)


def progress_section(data: ReportData) -> Section | None:
    """Any float progress measure the curves hold besides accuracy and loss (weight_norm, fourier_sparsity,
    softmax_collapse, and those added later, e.g. fourier_gini or restricted/excluded loss): the median per
    group against step. None when the curves hold none."""
    from plotly.subplots import make_subplots

    measures = [c for c, dtype in data.curves.schema.items() if c not in CORE_CURVE and dtype.is_float()
                and data.curves[c].is_not_null().any() and data.curves[c].is_not_nan().any()]
    if not measures or data.trials.is_empty():
        return None
    trials = data.trials.filter(pl.col("trial_id").is_in(data.curves["trial_id"].unique().implode()))
    labels, order, colors = colored_groups(trials, data.color_by)
    grid = _grid(data.curves)
    ids, label_array = trials["trial_id"].to_list(), np.array(labels.to_list())
    columns = min(3, len(measures))
    rows = math.ceil(len(measures) / columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=measures)
    import plotly.graph_objects as go

    for index, measure in enumerate(measures):
        values = interpolated(data.curves, measure, ids, grid)
        for group in order:
            members = label_array == group
            median = _nanquantiles(values[members], [0.5])[0]
            figure.add_trace(go.Scatter(x=_log_step(grid), y=median, mode="lines", name=group, legendgroup=group,
                                        showlegend=index == 0, line={"color": colors[group]},
                                        hovertemplate=f"{html.escape(group)}: {measure} %{{y:.4g}}<extra></extra>"),
                             row=index // columns + 1, col=index % columns + 1)
        figure.update_xaxes(type="log", title_text="step", row=index // columns + 1, col=index % columns + 1)
    figure.update_layout(height=320 * rows, margin={"t": 40})
    return Section("progress", "Progress measures", figure=figure,
                   note="Median over each group's jobs (a job that stopped keeps its last value): "
                        + ", ".join(measures) + ".")


# --- the page ---

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:0 16px 40px;color:#222}
h1{font-size:1.5em;margin-bottom:0}h2{margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1em}
nav a{margin-right:1em}.note{color:#555;font-size:.9em}pre.spec{background:#f6f6f6;padding:8px;overflow:auto}
table{border-collapse:collapse;font-size:.85em;margin:6px 0}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right}th{background:#f2f2f2}
"""


def sections(data: ReportData, max_lines: int = MAX_LINES) -> list[Section]:
    """Every part of the page; one that cannot be drawn from this data says why instead of sinking the page."""
    builders = [("summary", summary_section, ()), ("curves", curves_section, (max_lines,)),
                ("aligned", aligned_section, (max_lines,)), ("survival", survival_section, ()),
                ("scaling", scaling_section, ()), ("phase", phase_section, ()),
                ("parallel", parallel_section, (max_lines,)), ("ranked", ranked_section, ()),
                ("importance", importance_section, ()), ("progress", progress_section, ())]
    parts = []
    for anchor, build, extra in builders:
        try:
            parts.append(build(data, *extra))
        except Exception as error:  # noqa: BLE001 - shown on the page, with its type
            parts.append(Section(anchor, anchor.capitalize(), note=f"Not drawn: {type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:200] if str(error) else ''}"))
    return [p for p in parts if p is not None]


def render(data: ReportData, max_lines: int = MAX_LINES) -> str:
    """The whole page as one string: plotly.js inlined once, each figure a div with its own data."""
    from plotly.offline import get_plotlyjs

    parts = sections(data, max_lines)
    nav = "".join(f"<a href='#{p.anchor}'>{html.escape(p.title.split(':')[0])}</a>" for p in parts)
    body = []
    for part in parts:
        chunk = f"<section id='{part.anchor}'><h2>{html.escape(part.title)}</h2>"
        if part.note:
            chunk += f"<p class='note'>{html.escape(part.note)}</p>"
        if part.figure is not None:
            chunk += part.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{part.anchor}",
                                         config=PLOT_CONFIG)
        body.append(chunk + part.body + "</section>")
    title = "groksweep report: " + ", ".join(data.names)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='note'>results root {html.escape(data.root)}; written {stamp}"
            f" by groksweep report</p><nav>{nav}</nav>{''.join(body)}</body></html>")


def default_output(names: list[str]) -> str:
    return f"{'+'.join(names)}-report.html"


def write_report(names: list[str], output: str | Path | None = None, results: str | Path | None = None,
                 color_by: str | None = None, max_lines: int = MAX_LINES) -> Path:
    """Build the page and write it atomically (a browser never reads half a page, even mid-refresh)."""
    path = Path(output) if output is not None else Path(default_output(names))
    if path.is_dir():
        raise UserError(f"--output: {path} is a folder; give a file path such as {path / default_output(names)}")
    data = load(names, results, color_by)
    text = render(data, max_lines)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=path.parent)
    except OSError as error:
        raise UserError(f"--output: cannot write {path} ({error.strerror}); choose a writable path") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o644 & ~umask)  # mkstemp makes it private; readable, never group/world-writable
    os.replace(temporary, path)
    return path
