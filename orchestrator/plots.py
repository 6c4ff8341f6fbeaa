"""Figures for papers: matplotlib PNGs with labelled axes, legends and log scales where data spans decades.

Uses `matplotlib.figure.Figure` directly (no pyplot state, no GUI backend): safe in servers and notebooks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from orchestrator.studies import PHASES, PhaseDiagram, Study
from trainers.metrics import GENERALIZE_ACC, MEMORIZE_ACC

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


def _label(name: str) -> str:
    return name.replace("_", " ")


def study_plot(result: Study, path: str | Path) -> Path:
    """KM median time-to-grok against x (95% CI bars), the fitted power law, and censored groups marked at
    their budget with an upward arrow (median not reached)."""
    figure = Figure(figsize=(5.5, 4.0))
    ax = figure.add_subplot()
    groups = (result.rows.partition_by(result.by, maintain_order=True, as_dict=True)
              if result.by else {(None,): result.rows})
    all_x, all_y = [], []
    for index, (key, rows) in enumerate(groups.items()):
        color = f"C{index}"
        label = f"{_label(result.by)} = {key[0]}" if result.by else "KM median"
        reached = rows.filter(pl.col("km_median").is_not_null())
        x, y = reached[result.x].to_numpy().astype(float), reached["km_median"].to_numpy().astype(float)
        low = reached["km_median_low"].fill_null(np.nan).to_numpy().astype(float)
        high = reached["km_median_high"].fill_null(np.nan).to_numpy().astype(float)
        yerr = np.vstack([np.where(np.isnan(low), 0, y - low), np.where(np.isnan(high), 0, high - y)])
        ax.errorbar(x, y, yerr=yerr, fmt="o", color=color, capsize=3, label=f"{label} (95% CI)")
        open_high = ~np.isnan(y) & np.isnan(high)
        if open_high.any():  # CI with no upper limit inside the budget
            ax.plot(x[open_high], y[open_high], marker="^", linestyle="none", color=color, markersize=4)
        fit = result.fit if not result.by else result.fit.get(str(key[0]), {})
        if fit.get("exponent") is not None:
            grid = np.geomspace(x[x > 0].min(), x.max(), 50)
            ci = (f" [{fit['exponent_low']:.2f}, {fit['exponent_high']:.2f}]"
                  if fit.get("exponent_low") is not None else "")
            ax.plot(grid, fit["prefactor"] * grid ** fit["exponent"], "--", color=color,
                    label=f"fit: exponent {fit['exponent']:.2f}{ci}")
        all_x.extend(x)
        all_y.extend(y)
    censored_groups = result.rows.filter(pl.col("km_median").is_null())
    if censored_groups.height:
        ceiling = max(all_y) * 1.3 if all_y else 1.0
        cx = censored_groups[result.x].to_numpy().astype(float)
        ax.plot(cx, np.full(cx.size, ceiling), marker="^", linestyle="none", color="black",
                label="median not reached (>half censored)")
        all_x.extend(cx)
        all_y.append(ceiling)
    xs, ys = np.asarray(all_x, float), np.asarray(all_y, float)
    if _spans_decades(xs) and (xs > 0).all():
        ax.set_xscale("log")
    elif _spans_decades(xs):
        ax.set_xscale("symlog", linthresh=float(xs[xs > 0].min()) if (xs > 0).any() else 1.0)
    if _spans_decades(ys):
        ax.set_yscale("log")
    ax.set_xlabel(_label(result.x))
    ax.set_ylabel(f"{_label(result.metric)} (optimiser steps, KM median)")
    ax.set_title(f"Time to {_label(result.metric).removeprefix('steps to ')} vs {_label(result.x)}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(figure, path)


def phase_plot(diagram: PhaseDiagram, path: str | Path) -> Path:
    """Heat map of the most common phase in each (x, y) cell, each cell annotated with its trial count."""
    rows = diagram.rows
    xs = sorted(rows[diagram.x].unique().drop_nulls().to_list())
    ys = sorted(rows[diagram.y].unique().drop_nulls().to_list())
    grid = np.full((len(ys), len(xs)), np.nan)
    figure = Figure(figsize=(1.2 + 0.8 * max(len(xs), 3), 1.2 + 0.6 * max(len(ys), 3)))
    ax = figure.add_subplot()
    for row in rows.iter_rows(named=True):
        if row[diagram.x] is None or row[diagram.y] is None:
            continue
        i, j = ys.index(row[diagram.y]), xs.index(row[diagram.x])
        grid[i, j] = PHASES.index(row["phase"])
        share = row[f"n_{row['phase']}"] / row["n_trials"]
        ax.text(j, i, f"{share:.0%}\nn={row['n_trials']}", ha="center", va="center", fontsize=7)
    cmap = ListedColormap([PHASE_COLORS[p] for p in PHASES])
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(PHASES) - 0.5, origin="lower", aspect="auto")
    ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, float) else str(v) for v in ys])
    ax.set_xlabel(_label(diagram.x))
    ax.set_ylabel(_label(diagram.y))
    t = diagram.thresholds
    ax.set_title(f"Phases (train ≥ {t.memorize_acc:g}, val ≥ {t.generalize_acc:g}, "
                 f"grokking: delay ≥ {t.grok_factor:g}×t_mem)", fontsize=8)
    ax.legend(handles=[Patch(color=PHASE_COLORS[p], label=p) for p in PHASES], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)


def curves_plot(curves: pl.DataFrame, trials: pl.DataFrame, path: str | Path) -> Path:
    """Train (dashed) and validation (solid) accuracy and loss against step (log x) for each trial, with
    the memorisation (dotted) and generalisation (dash-dot) steps marked."""
    figure = Figure(figsize=(10, 4))
    acc_ax, loss_ax = figure.subplots(1, 2)
    events = {row["trial_id"]: row for row in trials.iter_rows(named=True)}
    for index, (key, curve) in enumerate(curves.sort("step").partition_by("trial_id", as_dict=True,
                                                                             maintain_order=True).items()):
        trial_id, color = key[0], f"C{index % 10}"
        step = curve["step"].to_numpy()
        acc_ax.plot(step, curve["train_acc"].to_numpy(), "--", color=color, linewidth=1)
        acc_ax.plot(step, curve["val_acc"].to_numpy(), "-", color=color, linewidth=1.3, label=trial_id)
        loss_ax.plot(step, curve["train_loss"].to_numpy(), "--", color=color, linewidth=1)
        loss_ax.plot(step, curve["val_loss"].to_numpy(), "-", color=color, linewidth=1.3, label=trial_id)
        row = events.get(trial_id, {})
        for event, style in (("steps_to_memorize", ":"), ("steps_to_generalize", "-.")):
            if row.get(event):
                for ax in (acc_ax, loss_ax):
                    ax.axvline(row[event], color=color, linestyle=style, linewidth=0.8, alpha=0.7)
    for ax in (acc_ax, loss_ax):
        ax.set_xscale("log")
        ax.set_xlabel("step (optimiser steps)")
        ax.grid(True, which="both", alpha=0.3)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(-0.02, 1.02)
    loss_ax.set_ylabel("loss")
    losses = curves.select(pl.concat_list("train_loss", "val_loss").explode()).to_series().drop_nulls().to_numpy()
    if _spans_decades(losses):
        loss_ax.set_yscale("log")
    style_handles = [
        acc_ax.plot([], [], "k--", linewidth=1, label="train")[0],
        acc_ax.plot([], [], "k-", linewidth=1.3, label="validation")[0],
        acc_ax.plot([], [], "k:", linewidth=0.8, label=f"memorised (train ≥ {MEMORIZE_ACC:g})")[0],
        acc_ax.plot([], [], "k-.", linewidth=0.8, label=f"generalised (val ≥ {GENERALIZE_ACC:g})")[0],
    ]
    acc_ax.legend(handles=style_handles, fontsize=7, loc="center left")
    if curves["trial_id"].n_unique() <= 12:
        loss_ax.legend(fontsize=7, title="trial", title_fontsize=7)
    acc_ax.set_title("Accuracy")
    loss_ax.set_title("Loss")
    return _save(figure, path)
