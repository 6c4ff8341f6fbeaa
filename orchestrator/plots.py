"""Figures for papers: matplotlib PNGs with labelled axes, legends and log scales where data spans decades.

Uses `matplotlib.figure.Figure` directly (no pyplot state, no GUI backend): safe in servers and notebooks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from orchestrator.studies import PHASES, PhaseDiagram, Study
from trainers.metrics import CENSORED, GENERALIZE_ACC, MEMORIZE_ACC, EventTracker

DPI = 200
PHASE_COLORS = {"comprehension": "#4c9f70", "grokking": "#e0a030", "memorization": "#c8553d", "confusion": "#7a7a7a"}


def _spans_decades(values: np.ndarray) -> bool:
    values = values[np.isfinite(values) & (values > 0)]
    return values.size >= 2 and values.max() / values.min() >= 10


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis labels as plain numbers (0.1, 0.2, 0.5, 1), minor ones only at 2 and 5: no overlapping
    "3×10^-1" labels on axes spanning about a decade."""
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _: Any) -> str:
        return f"{value:g}" if value > 0 and round(value / 10 ** math.floor(math.log10(value)), 6) in (2, 5) else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _label(name: str) -> str:
    return name.replace("_", " ")


def study_plot(result: Study, path: str | Path, title: str | None = None) -> Path:
    """KM median time-to-grok against x with 95% CI bars (a note where a CI has no upper limit within the
    budget or cannot be computed), the fitted power law on log-log axes, and each group whose median was not
    reached drawn at its largest censoring time with a "> budget" marker. Binned x: horizontal bars show
    each bin's edges."""
    figure = Figure(figsize=(5.5, 4.0))
    ax = figure.add_subplot()
    groups = (result.rows.partition_by(result.by, maintain_order=True, as_dict=True)
              if result.by else {(None,): result.rows})
    all_x, all_y, open_ci, no_ci = [], [], 0, 0
    binned = "x_low" in result.rows.columns
    for index, (key, rows) in enumerate(groups.items()):
        color = f"C{index}"
        label = f"{_label(result.by)} = {key[0]}" if result.by else "KM median"
        reached = rows.filter(pl.col("km_median").is_not_null())
        x, y = reached[result.x].to_numpy().astype(float), reached["km_median"].to_numpy().astype(float)
        low = reached["km_median_low"].fill_null(np.nan).to_numpy().astype(float)
        high = reached["km_median_high"].fill_null(np.nan).to_numpy().astype(float)
        yerr = np.vstack([np.where(np.isnan(low), 0, y - low), np.where(np.isnan(high), 0, high - y)])
        xerr = None
        if binned:
            xerr = np.vstack([x - reached["x_low"].to_numpy(), reached["x_high"].to_numpy() - x])
        ax.errorbar(x, y, yerr=yerr, xerr=xerr, fmt="o", color=color, capsize=3, elinewidth=1,
                    label=f"{label} (95% CI{', bin edges' if binned else ''})")
        open_high = ~np.isnan(low) & np.isnan(high)
        if open_high.any():  # CI with no upper limit inside the budget: an arrow up from the point
            ax.plot(x[open_high], y[open_high] * 1.12, marker="^", linestyle="none", color=color, markersize=5)
            open_ci += int(open_high.sum())
        no_ci += int((np.isnan(low) & np.isnan(high)).sum())
        fit = result.fit if not result.by else result.fit.get(str(key[0]), {})
        if fit.get("exponent") is not None and (x > 0).any():
            grid = np.geomspace(x[x > 0].min(), x.max(), 50)
            ci = (f" [{fit['exponent_low']:.2f}, {fit['exponent_high']:.2f}]"
                  if fit.get("exponent_low") is not None else "")
            ax.plot(grid, fit["prefactor"] * grid ** fit["exponent"], "--", color=color,
                    label=f"fit: exponent {fit['exponent']:.2f}{ci}")
        all_x.extend(x)
        all_y.extend(y)
        censored = rows.filter(pl.col("km_median").is_null())
        if censored.height:
            cx = censored[result.x].to_numpy().astype(float)
            keys = censored.select(*([result.by] if result.by else []), result.x).rows()
            cy = np.array([result.censored_at.get(tuple(k), np.nan) for k in keys], float)
            ax.plot(cx, cy, marker="^", linestyle="none", color=color, markerfacecolor="white", markersize=8,
                    label="median not reached: > budget (largest censored step)" if index == 0 else None)
            for xi, yi in zip(cx, cy, strict=True):
                if np.isfinite(yi):
                    ax.annotate("> budget", (xi, yi), textcoords="offset points", xytext=(0, 7), ha="center",
                                fontsize=6, color=color)
            all_x.extend(cx)
            all_y.extend(cy[np.isfinite(cy)])
    xs, ys = np.asarray(all_x, float), np.asarray(all_y, float)
    has_fit = any(f.get("exponent") is not None for f in ([result.fit] if not result.by else result.fit.values()))
    if (has_fit or _spans_decades(xs)) and xs.size and (xs > 0).all():
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    elif (has_fit or _spans_decades(xs)) and (xs > 0).any():  # x = 0 (e.g. no weight decay) stays visible
        ax.set_xscale("symlog", linthresh=float(xs[xs > 0].min()))
    if has_fit or _spans_decades(ys):  # a power law is a straight line only on log-log axes
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        if ys.size:
            ax.set_ylim(top=float(ys.max()) * 1.4)  # room for the "> budget" labels
    ax.set_xlabel(_label(result.x) + (f" ({result.bins} bins)" if result.bins else ""))
    ax.set_ylabel(f"{_label(result.metric)} (optimiser steps, KM median)")
    ax.set_title(title or f"Time to {_label(result.metric).removeprefix('steps to ')} vs {_label(result.x)}")
    notes = []
    if open_ci:
        notes.append(f"▲ above {open_ci} point(s): CI has no upper limit within the budget")
    if no_ci:
        notes.append(f"{no_ci} point(s) without CI (too few jobs or events)")
    if notes:
        ax.text(0.01, 0.01, "; ".join(notes), transform=ax.transAxes, fontsize=6, va="bottom", color="0.3")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(figure, path)


def _axis_transform(values: list[Any]) -> tuple[str, Any, Any, float | None]:
    """(scale, forward, inverse, linthresh) for a numeric axis: log where the values span decades and are
    positive, symlog where they span decades and include 0 (weight decay 0), else linear."""
    array = np.asarray(values, float)
    if _spans_decades(array) and (array > 0).all():
        return "log", np.log10, lambda u: 10 ** u, None
    if _spans_decades(array) and (array > 0).any():
        c = float(array[array > 0].min())
        return ("symlog", lambda v: np.sign(v) * np.log10(1 + np.abs(v) / c),
                lambda u: np.sign(u) * c * (10 ** np.abs(u) - 1), c)
    return "linear", lambda v: np.asarray(v, float), lambda u: u, None


def _edges(values: list[float], forward: Any, inverse: Any) -> np.ndarray:
    """Cell edges between sorted values (midpoints on the axis's own scale)."""
    u = forward(np.asarray(values, float))
    if u.size == 1:
        half = 0.15 if abs(u[0]) > 0 else 0.5
        return inverse(np.array([u[0] - half, u[0] + half]))
    mid = (u[1:] + u[:-1]) / 2
    return inverse(np.concatenate([[u[0] - (mid[0] - u[0])], mid, [u[-1] + (u[-1] - mid[-1])]]))


def _is_number(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def phase_plot(diagram: PhaseDiagram, path: str | Path, title: str | None = None) -> Path:
    """Liu et al.'s phases on numeric axes (log where values span decades): for a grid, each (x, y) cell
    coloured by its most common phase with its share and count, and an x on cells holding censored jobs;
    for a random / Optuna sweep, one point per job (open: censored)."""
    rows, jobs = diagram.rows.drop_nulls([diagram.x, diagram.y]), diagram.trials.drop_nulls([diagram.x, diagram.y])
    xs = sorted(rows[diagram.x].unique().to_list())
    ys = sorted(rows[diagram.y].unique().to_list())
    figure = Figure(figsize=(6.2, 4.4))
    ax = figure.add_subplot()
    axes = {}
    for values, setter in ((xs, "x"), (ys, "y")):
        if _is_number(values):
            scale, forward, inverse, linthresh = _axis_transform(values)
            axes[setter] = (values, forward, inverse)
            kwargs = {"linthresh": linthresh} if scale == "symlog" else {}
            (ax.set_xscale if setter == "x" else ax.set_yscale)(scale, **kwargs)
            if scale == "log":
                _plain_log_ticks(ax.xaxis if setter == "x" else ax.yaxis)
        else:  # categorical: positions 0..n-1, labelled
            axes[setter] = (values, None, None)
            (ax.set_xticks if setter == "x" else ax.set_yticks)(range(len(values)), [str(v) for v in values])

    def position(setter: str, value: Any) -> float:
        values, forward, _ = axes[setter]
        return float(value) if forward is not None else float(values.index(value))

    if diagram.continuous:
        for p in PHASES:
            members = jobs.filter(pl.col("phase") == p)
            if members.height:
                flags = members[CENSORED].fill_null(False).to_numpy()
                px = np.array([position("x", v) for v in members[diagram.x].to_list()])
                py = np.array([position("y", v) for v in members[diagram.y].to_list()])
                if (~flags).any():
                    ax.scatter(px[~flags], py[~flags], color=PHASE_COLORS[p], s=22, label=p)
                if flags.any():
                    ax.scatter(px[flags], py[flags], facecolors="none", edgecolors=PHASE_COLORS[p], s=22,
                               label=f"{p} (censored)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="phase (one point per job)",
                  title_fontsize=7)
    else:
        def edges(setter: str) -> np.ndarray:
            values, forward, inverse = axes[setter]
            if forward is None:
                return np.arange(len(values) + 1) - 0.5
            return _edges(values, forward, inverse)

        grid = np.full((len(ys), len(xs)), np.nan)
        censored = jobs.group_by(diagram.x, diagram.y).agg(pl.col(CENSORED).fill_null(False).sum().alias("c"))
        censored_cells = {(r[diagram.x], r[diagram.y]) for r in censored.filter(pl.col("c") > 0).iter_rows(named=True)}
        for row in rows.iter_rows(named=True):
            i, j = ys.index(row[diagram.y]), xs.index(row[diagram.x])
            grid[i, j] = PHASES.index(row["phase"])
            if len(xs) * len(ys) <= 150:
                share = row[f"n_{row['phase']}"] / row["n_trials"]
                ax.text(position("x", row[diagram.x]), position("y", row[diagram.y]),
                        f"{share:.0%}\nn={row['n_trials']}", ha="center", va="top", fontsize=6)
        cmap = ListedColormap([PHASE_COLORS[p] for p in PHASES])
        ax.pcolormesh(edges("x"), edges("y"), grid, cmap=cmap, vmin=-0.5, vmax=len(PHASES) - 0.5,
                      edgecolors="white", linewidth=0.5)
        handles = [Patch(color=PHASE_COLORS[p], label=p) for p in PHASES]
        if censored_cells:
            cx = [position("x", c[0]) for c in censored_cells]
            cy = [position("y", c[1]) for c in censored_cells]
            from matplotlib.transforms import offset_copy

            above = offset_copy(ax.transData, fig=figure, y=9, units="points")  # clear of the cell's text
            handles.append(ax.scatter(cx, cy, marker="x", color="black", s=18, linewidths=1, transform=above,
                                      label="cell holds censored jobs"))
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel(_label(diagram.x))
    ax.set_ylabel(_label(diagram.y))
    t = diagram.thresholds
    ax.set_title((title + "\n" if title else "") + f"Phases (train ≥ {t.memorize_acc:g}, val ≥ "
                 f"{t.generalize_acc:g}, grokking: delay ≥ {t.grok_factor:g}×t_mem)", fontsize=8)
    return _save(figure, path)


def _colors(trials: pl.DataFrame, color_by: str | None) -> tuple[dict[str, Any], Any]:
    """A colour per job from `color_by`: a palette and a legend of values for up to 10 values, else a
    viridis scale (log where the values span decades) with a colour bar. Returns ({trial_id: colour}, legend
    handles or a ScalarMappable)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.lines import Line2D

    ids = trials["trial_id"].to_list()
    if color_by is None:
        return {t: f"C{i % 10}" for i, t in enumerate(ids)}, None
    values = trials[color_by].to_list()
    distinct = sorted({v for v in values if v is not None}, key=lambda v: (isinstance(v, str), v))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in distinct)
    if len(distinct) <= 10 or not numeric:
        palette = {v: f"C{i % 10}" for i, v in enumerate(distinct)}
        handles = [Line2D([], [], color=palette[v], label=f"{v:g}" if isinstance(v, float) else str(v))
                   for v in distinct]
        return {t: palette.get(v, "0.5") for t, v in zip(ids, values, strict=True)}, handles
    array = np.asarray(distinct, float)
    norm = (LogNorm(array.min(), array.max()) if _spans_decades(array) and (array > 0).all()
            else Normalize(array.min(), array.max()))
    cmap = colormaps["viridis"]
    return ({t: cmap(norm(v)) if v is not None else "0.5" for t, v in zip(ids, values, strict=True)},
            ScalarMappable(norm=norm, cmap=cmap))


def curves_plot(curves: pl.DataFrame, trials: pl.DataFrame, path: str | Path, color_by: str | None = None,
                title: str | None = None) -> Path:
    """Validation (solid) and training (dashed) accuracy and loss against step for each job, coloured by
    `color_by` with a legend of its values (or a colour bar); memorisation (o, on the training curve) and
    generalisation (*, on the validation curve) marked where they happened. The step axis is symlog, so
    step 0 is kept."""
    figure = Figure(figsize=(11, 4.2))
    acc_ax, loss_ax = figure.subplots(1, 2)
    events = {row["trial_id"]: row for row in trials.iter_rows(named=True)}
    colors, legend = _colors(trials, color_by)
    n = curves["trial_id"].n_unique()
    alpha = 1.0 if n <= 12 else max(0.15, 12 / n)
    for (trial_id,), curve in curves.sort("step").partition_by("trial_id", as_dict=True, maintain_order=True).items():
        color = colors.get(trial_id, "0.5")
        step = curve["step"].to_numpy()
        train, val = curve["train_acc"].to_numpy(), curve["val_acc"].to_numpy()
        acc_ax.plot(step, train, "--", color=color, linewidth=0.8, alpha=alpha * 0.8)
        acc_ax.plot(step, val, "-", color=color, linewidth=1.2, alpha=alpha)
        loss_ax.plot(step, curve["train_loss"].to_numpy(), "--", color=color, linewidth=0.8, alpha=alpha * 0.8)
        loss_ax.plot(step, curve["val_loss"].to_numpy(), "-", color=color, linewidth=1.2, alpha=alpha)
        row = events.get(trial_id, {})
        for event, values, marker in (("steps_to_memorize", train, "o"), ("steps_to_generalize", val, "*")):
            at = row.get(event)
            if at is not None and (step == at).any():
                acc_ax.plot(at, values[np.flatnonzero(step == at)[0]], marker=marker, color=color,
                            markersize=5 if marker == "o" else 8, markeredgecolor="black", markeredgewidth=0.4,
                            linestyle="none", alpha=min(1.0, alpha * 1.5))
    positive = curves["step"].filter(curves["step"] > 0)
    linthresh = float(positive.min()) if positive.len() else 1.0
    for ax in (acc_ax, loss_ax):
        ax.set_xscale("symlog", linthresh=linthresh, linscale=0.3)
        ax.set_xlim(left=0)
        ax.set_xlabel("step (optimiser steps; linear below " + f"{linthresh:g})")
        ax.grid(True, which="both", alpha=0.3)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(-0.02, 1.05)
    loss_ax.set_ylabel("loss")
    losses = curves.select(pl.concat_list("train_loss", "val_loss").explode()).to_series().drop_nulls().to_numpy()
    if _spans_decades(losses):
        loss_ax.set_yscale("log")
    style_handles = [
        acc_ax.plot([], [], "k--", linewidth=0.8, label="train")[0],
        acc_ax.plot([], [], "k-", linewidth=1.2, label="validation")[0],
        acc_ax.plot([], [], "ko", markersize=4, label=f"memorised (train ≥ {MEMORIZE_ACC:g})")[0],
        acc_ax.plot([], [], "k*", markersize=7, label=f"generalised (val ≥ {GENERALIZE_ACC:g})")[0],
    ]
    acc_ax.legend(handles=style_handles, fontsize=7, loc="center left")
    if isinstance(legend, list) and legend:
        loss_ax.legend(handles=legend, fontsize=7, title=_label(color_by), title_fontsize=7, loc="best")
    elif legend is not None:
        figure.colorbar(legend, ax=loss_ax, label=_label(color_by))
    acc_ax.set_title("Accuracy")
    loss_ax.set_title("Loss")
    sweeps = ", ".join(sorted(set(trials["sweep"].to_list()))) if "sweep" in trials.columns else ""
    figure.suptitle(title or f"{sweeps}: {n} job{'s' if n != 1 else ''}"
                    + (f", coloured by {_label(color_by)}" if color_by else ""), fontsize=10)
    return _save(figure, path)


def inspect_plot(curve: pl.DataFrame, row: dict, path: str | Path) -> Path:
    """One job's picture, from its stored curve and row alone: accuracy and loss with the events marked; the
    embedding's Fourier spectrum at memorisation and at the end (key frequencies marked); restricted and
    excluded loss beside validation loss; Fourier Gini and neuron frequency share; weight norm per group."""
    curve = curve.sort("step")
    step = curve["step"].to_numpy()
    events = {"memorised": row.get("steps_to_memorize"), "generalised": row.get("steps_to_generalize"),
              "circuit": EventTracker.replay(curve.to_dicts(), p=row.get("p")).events["circuit_step"]}
    figure = Figure(figsize=(15, 8.5))
    (acc_ax, loss_ax, spec_ax), (circ_ax, order_ax, norm_ax) = figure.subplots(2, 3)

    def column(name: str) -> np.ndarray:
        return curve[name].cast(pl.Float64).to_numpy() if name in curve.columns else np.full(len(step), np.nan)

    def mark(ax) -> None:
        for (label, at), style in zip(events.items(), (":", "-.", "--"), strict=True):
            if at is not None:
                ax.axvline(at, color="k", linestyle=style, linewidth=0.8, alpha=0.7, label=f"{label} ({at})")

    acc_ax.plot(step, column("train_acc"), "--", label="train")
    acc_ax.plot(step, column("val_acc"), "-", label="validation")
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_title("Accuracy")
    loss_ax.plot(step, column("train_loss"), "--", label="train")
    loss_ax.plot(step, column("val_loss"), "-", label="validation")
    loss_ax.set_title("Loss")
    circ_ax.plot(step, column("val_loss"), "-", color="C1", label="validation")
    circ_ax.plot(step, column("restricted_loss"), "-", color="C2", label="restricted (key directions only)")
    circ_ax.plot(step, column("excluded_loss"), "-", color="C3", label="excluded (train, key directions removed)")
    circ_ax.set_title("Circuit: restricted and excluded loss (Nanda 2023)")
    for ax in (loss_ax, circ_ax):
        values = np.concatenate([line.get_ydata() for line in ax.get_lines()])
        if _spans_decades(values):
            ax.set_yscale("log")
        ax.set_ylabel("loss")
    for name, label in (("fourier_gini", "Fourier Gini of the embedding"),
                        ("neuron_frequency_share", "neuron frequency share")):
        if np.isfinite(column(name)).any():  # the transformer's neuron share is measured in `full` only
            order_ax.plot(step, column(name), label=label)
    order_ax.set_ylim(-0.02, 1.02)
    order_ax.set_title("Concentration")
    for group in ("embedding", "attention", "mlp", "unembedding"):
        values = column(f"weight_norm_{group}")
        if np.isfinite(values).any():
            norm_ax.plot(step, values, label=group)
    norm_ax.plot(step, column("weight_norm"), "k-", linewidth=1.3, label="total")
    norm_ax.set_ylabel("L2 norm")
    norm_ax.set_title("Weight norm per group")
    for ax in (acc_ax, loss_ax, circ_ax, order_ax, norm_ax):
        mark(ax)
        ax.set_xlabel("step (optimiser steps)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    _spectrum_panel(spec_ax, curve, events["memorised"])
    figure.suptitle(f"{row.get('sweep', '')} / {row.get('trial_id', '')}: {row.get('model')} on {row.get('op')} "
                    f"mod {row.get('p')}, weight decay {row.get('weight_decay')}, seed {row.get('seed')}")
    return _save(figure, path)


def _spectrum_panel(ax, curve: pl.DataFrame, memorized: int | None) -> None:
    """The embedding's norm per frequency at memorisation and at the last evaluation, key frequencies hatched."""
    ax.set_title("Embedding Fourier spectrum")
    ax.set_xlabel("frequency k")
    ax.set_ylabel("norm")
    if "fourier_spectrum" not in curve.columns or curve["fourier_spectrum"].drop_nulls().is_empty():
        ax.text(0.5, 0.5, "no Fourier measures\n(other operation, or progress_measures none)",
                ha="center", va="center", transform=ax.transAxes)
        return
    rows = curve.filter(pl.col("fourier_spectrum").is_not_null())
    at_mem = rows.filter(pl.col("step") >= (memorized or 0)).head(1)
    picks = [("at memorisation", at_mem), ("at the end", rows.tail(1))]
    width = 0.4
    for i, (label, pick) in enumerate(picks):
        if pick.is_empty():
            continue
        record = pick.row(0, named=True)
        spectrum = np.asarray(record["fourier_spectrum"], dtype=float)
        k = np.arange(1, len(spectrum) + 1)
        keys = set(record["key_frequencies"] or [])
        bars = ax.bar(k + (i - 0.5) * width, spectrum, width, color=f"C{i}",
                      label=f"{label} (step {record['step']}; {len(keys)} key)")
        for frequency, bar in zip(k, bars, strict=True):
            if frequency in keys:
                bar.set_hatch("///")
        if i == 1:
            for frequency in sorted(keys, key=lambda f: -spectrum[f - 1])[:8]:  # label the strongest keys
                ax.annotate(str(frequency), (frequency + 0.5 * width, spectrum[frequency - 1]), ha="center",
                            va="bottom", fontsize=7)
    ax.legend(fontsize=7, title="hatched: key frequencies", title_fontsize=7)
