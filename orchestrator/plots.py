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


def inspect_plot(curve: pl.DataFrame, row: dict, path: str | Path) -> Path:
    """One job's picture, from its stored curve and row alone: accuracy and loss with the events marked; the
    embedding's Fourier spectrum at memorisation and at the end (key frequencies marked); restricted and
    excluded loss beside validation loss; Fourier Gini and neuron frequency share; weight norm per group."""
    curve = curve.sort("step")
    step = curve["step"].to_numpy()
    events = {"memorised": row.get("steps_to_memorize"), "generalised": row.get("steps_to_generalize"),
              "circuit": circuit_step(curve, row.get("p"), row.get("steps_to_memorize"))}
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


CIRCUIT_FRACTION = 0.1  # circuit_step: restricted_loss <= this x ln p (the loss of a uniform guess)


def circuit_step(curve: pl.DataFrame, p: int | None, memorized: int | None) -> int | None:
    """The first evaluation at or after memorisation whose restricted loss is at most 0.1 ln p; None if never."""
    if memorized is None or not p or "restricted_loss" not in curve.columns:
        return None
    hit = curve.filter((pl.col("step") >= memorized) & (pl.col("restricted_loss") <= CIRCUIT_FRACTION * np.log(p)))
    return None if hit.is_empty() else int(hit["step"].min())
