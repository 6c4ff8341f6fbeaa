"""The `groksweep` command line: a thin face over library functions.

Every command parses, validates, calls one library function and prints. User errors are one plain
line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from orchestrator import UserError
from trainers.config import ConfigError

app = typer.Typer(
    name="groksweep",
    help="Distributed sweeps of grokking experiments on Ray Tune + Optuna, with Parquet result tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# --- shared options (defined once) ---
ResultsOpt = Annotated[
    str | None, typer.Option("--results", help="Results root (default $GROKSWEEP_RESULTS or ./results).")
]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Join this Ray cluster (or $RAY_ADDRESS).")]
FormatOpt = Annotated[str, typer.Option("--format", help="table | json")]


def fail(message: str, code: int = 2) -> None:
    """One plain line on stderr, then exit."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors a user can fix into one line and exit code 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (UserError, ConfigError) as error:
            fail(str(error))

    return wrapper


def check_format(value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        fail(f"--format: {value!r} is not allowed; choose one of {', '.join(allowed)}")


# ===== trainers: train, presets =====================================================================


# ===== sweeps: sweep, resume, status, ls, logs, rm ==================================================


# ===== results: query, study, phase, plot ===========================================================

TABLE_ROWS = 100  # `--format table` shows at most this many rows; use csv/json/parquet for all of them


def _table(frame: Any, title: str | None = None) -> str:
    """A polars frame as a plain text table (all columns, at most TABLE_ROWS rows)."""
    import polars as pl

    with pl.Config(tbl_rows=TABLE_ROWS, tbl_cols=-1, tbl_width_chars=10_000, fmt_str_lengths=80,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, float_precision=None):
        text = str(frame)
    more = f"\n({frame.height} rows; showing {TABLE_ROWS})" if frame.height > TABLE_ROWS else ""
    return (f"{title}\n" if title else "") + text + more


def _emit(text: str, output: str | None) -> None:
    if output is None:
        typer.echo(text.removesuffix("\n"))
    else:
        from pathlib import Path

        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text if text.endswith("\n") else text + "\n")


@app.command(rich_help_panel="Results")
@user_errors
def query(
    sql: Annotated[str, typer.Argument(help="Polars SQL over the tables `trials` and `curves`.")],
    results: ResultsOpt = None,
    format: Annotated[str, typer.Option("--format", help="table | csv | json | parquet")] = "table",
    output: Annotated[str | None, typer.Option("--output", help="Write here instead of stdout.")] = None,
) -> None:
    """Run SQL over the result tables (`trials`: one row per trial; `curves`: one row per evaluation).

    Example: groksweep query "SELECT weight_decay, avg(steps_to_generalize) FROM trials GROUP BY 1"
    """
    from orchestrator import store

    check_format(format, ("table", "csv", "json", "parquet"))
    if format == "parquet" and output is None:
        fail("--format parquet needs --output PATH")
    frame = store.query(sql, results)
    if format == "parquet":
        from pathlib import Path

        Path(output).parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(output)
    elif format == "csv":
        _emit(frame.write_csv(), output)
    elif format == "json":
        _emit(frame.write_json(), output)
    else:
        _emit(_table(frame), output)


@app.command(rich_help_panel="Results")
@user_errors
def study(
    names: Annotated[list[str], typer.Argument(help="Sweep name(s), pooled.", metavar="NAME...")],
    x: Annotated[str, typer.Option("--x", help="Trial column to scale against, e.g. weight_decay.")],
    by: Annotated[str | None, typer.Option("--by", help="Trial column to group by (one fit per group).")] = None,
    metric: Annotated[str, typer.Option("--metric", help="Event to time.")] = "steps_to_generalize",
    plot: Annotated[str | None, typer.Option("--plot", help="Write the scaling plot (PNG) here.")] = None,
    format: FormatOpt = "table",
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the exponent CI.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    results: ResultsOpt = None,
) -> None:
    """Kaplan-Meier median time-to-grok per x (censored trials count), and a power-law fit against x.

    Example: groksweep study wd-scan --x weight_decay --plot wd.png
    """
    import json

    from orchestrator import plots, studies

    check_format(format, ("table", "json"))
    if bootstrap < 1:
        fail(f"--bootstrap: must be >= 1, got {bootstrap}")
    result = studies.study(names, x=x, by=by, metric=metric, root=results, n_boot=bootstrap, seed=seed)
    if plot:
        plots.study_plot(result, plot)
    if format == "json":
        typer.echo(json.dumps(result.to_json()))
        return
    fits = {"all": result.fit} if by is None else result.fit
    lines = [f"{'fit' if by is None else f'fit {by}={group}'}: {metric} ≈ {fit['prefactor']:.4g} · {x}^"
             f"{fit['exponent']:.3f}  (95% CI {_ci(fit)}, {fit['n_points']} points)"
             if fit["exponent"] is not None else
             f"{'fit' if by is None else f'fit {by}={group}'}: too few points with a KM median "
             f"({fit['n_points']})" for group, fit in fits.items()]
    typer.echo(_table(result.rows) + "\n" + "\n".join(lines))


def _ci(fit: dict[str, Any]) -> str:
    if fit.get("exponent_low") is None:
        return "n/a"
    return f"{fit['exponent_low']:.3f} to {fit['exponent_high']:.3f}"


@app.command(rich_help_panel="Results")
@user_errors
def phase(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    x: Annotated[str, typer.Option("--x", help="Trial column on the x axis, e.g. weight_decay.")],
    y: Annotated[str, typer.Option("--y", help="Trial column on the y axis, e.g. lr.")],
    plot: Annotated[str | None, typer.Option("--plot", help="Write the phase heat map (PNG) here.")] = None,
    format: FormatOpt = "table",
    memorize_acc: Annotated[float, typer.Option("--memorize-acc", help="Train accuracy that counts as "
                                                "memorised.")] = 0.99,
    generalize_acc: Annotated[float, typer.Option("--generalize-acc", help="Validation accuracy that counts "
                                                  "as generalised.")] = 0.99,
    grok_factor: Annotated[float, typer.Option("--grok-factor", help="Grokking if delay >= this × "
                                               "memorisation step; else comprehension.")] = 1.0,
    results: ResultsOpt = None,
) -> None:
    """Liu et al. 2022's phases per (x, y) cell: comprehension, grokking, memorization, confusion.

    Example: groksweep phase lr-wd --x weight_decay --y lr --plot phases.png
    """
    import json

    from orchestrator import plots, studies

    check_format(format, ("table", "json"))
    thresholds = studies.PhaseThresholds(memorize_acc=memorize_acc, generalize_acc=generalize_acc,
                                         grok_factor=grok_factor)
    diagram = studies.phase([name], x=x, y=y, root=results, thresholds=thresholds)
    if plot:
        plots.phase_plot(diagram, plot)
    if format == "json":
        typer.echo(json.dumps(diagram.to_json()))
    else:
        typer.echo(_table(diagram.rows))


@app.command(rich_help_panel="Results")
@user_errors
def plot(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    trial: Annotated[list[str] | None, typer.Option("--trial", help="Trial id (repeatable); default: up to "
                                                    "8 trials spread over the sweep.")] = None,
    output: Annotated[str | None, typer.Option("--output", help="PNG path (default NAME-curves.png).")] = None,
    results: ResultsOpt = None,
) -> None:
    """Train/validation accuracy and loss against step (log x) with events marked, as a PNG.

    Example: groksweep plot wd-scan --trial wd-scan_00003 --output curves.png
    """
    from orchestrator import plots, studies

    path = plots.curves_plot(*studies.curves_for_plot(name, trial or None, results), output or f"{name}-curves.png")
    typer.echo(str(path))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
