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

def _flags_show_no_type() -> None:
    """Typer's rich help prints `<bool>` beside every flag (--help too), as if it took a value: show none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag and self.metavar is None else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"groksweep {version('groksweep')}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    """Distributed sweeps of grokking experiments on Ray Tune + Optuna, with Parquet result tables."""


# --- shared options (defined once) ---
ResultsOpt = Annotated[
    str | None, typer.Option("--results", help="Results root (default $GROKSWEEP_RESULTS or ./results).")
]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Join this Ray cluster (or $RAY_ADDRESS).")]
FormatOpt = Annotated[str, typer.Option("--format", help="table | json", metavar="[table|json]")]
SkipCorruptOpt = Annotated[bool, typer.Option("--skip-corrupt", help="Leave out result files that are not readable "
                                              "Parquet (each named in a warning) instead of stopping.")]


def fail(message: str, code: int = 2) -> None:
    """One plain line on stderr, then exit."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors a user can fix into one line and exit code 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import contextlib

        import polars as pl
        import pyarrow as pa

        from orchestrator import store

        skipping = (store.skipping_corrupt(lambda line: typer.echo(f"Warning: {line}", err=True))
                    if kwargs.get("skip_corrupt") else contextlib.nullcontext())
        try:
            with skipping:
                return command(*args, **kwargs)
        except (UserError, ConfigError) as error:
            fail(str(error))
        except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as error:
            # a read failed: if an unreadable file under the root is why, name it (one line), else re-raise
            corrupt = None if isinstance(error, FileNotFoundError) else store.find_corrupt(kwargs.get("results"))
            if corrupt is None:
                raise
            fail(corrupt)

    return wrapper


def check_format(value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        fail(f"--format: {value!r} is not allowed; choose one of {', '.join(allowed)}")


# ===== trainers: train, presets =====================================================================

SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                                  help="Override a config field (repeatable), e.g. lr=3e-3.")]
FINAL_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")  # in `train --format json`


def parse_sets(values: list[str] | None) -> dict[str, str]:
    """`KEY=VALUE` strings to a dict (values stay strings: TrainConfig coerces and validates them)."""
    pairs = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value
    return pairs


def _store_run(results: str, name: str, result: Any) -> str:
    """Write a finished `train` run to the result store as trial `<name>/<config hash>`; return the trial id."""
    import hashlib
    import json

    from orchestrator import store

    config = result.config.to_dict()
    trial_id = "t" + hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    store.mark_new_root(results)
    store.write_curve_rows(results, name, trial_id, result.history)
    store.compact_curves(results, name, trial_id)
    from orchestrator.jobs import outcome_from_curve, row_fields

    row = store.trial_row(name, trial_id, config, store.COMPLETED, wall_s=result.wall_s, device=result.device,
                          **row_fields(outcome_from_curve(result.history, p=result.config.p)))
    store.write_trial_row(results, row)
    return trial_id


@app.command(rich_help_panel="Trainers")
@user_errors
def train(
    preset_name: Annotated[str, typer.Option("--preset", help="Start from this preset (see `presets`).")] = "gromov",
    set_values: SetOpt = None,
    checkpoint_dir: Annotated[str | None, typer.Option(
        "--checkpoint-dir", help="Checkpoint here periodically; run again to resume from the last one.")] = None,
    format: FormatOpt = "table",
    results: Annotated[str | None, typer.Option(
        "--results", help="Also store the run (trial row + curve) under this results root.")] = None,
    name: Annotated[str, typer.Option("--name", help="Sweep name for --results.")] = "train",
) -> None:
    """Train one job with a progress bar, then print its events (with --format json: the last line of
    stdout is one flat JSON object of config, steps_run, wall_s, events, censored and final metrics).

    Example: groksweep train --preset gromov --set weight_decay=0.3
    """
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trainers import preset, run
    from trainers.loop import keep_freed_memory
    from trainers.metrics import EVENTS

    keep_freed_memory()  # this process only trains

    check_format(format, ("table", "json"))
    config = preset(preset_name, **parse_sets(set_values))
    if results is not None:
        from orchestrator import store
        from orchestrator.sweep import ensure_migrated, resolve_root

        store.check_name("sweep", name)
        ensure_migrated(resolve_root(results))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=Console(stderr=True), transient=format == "json") as progress:
        task = progress.add_task(f"{preset_name}", total=config.max_steps, status="")

        def report(evaluation: Any) -> None:
            m = evaluation.metrics
            progress.update(task, completed=evaluation.step,
                            status=f"train_acc {m['train_acc']:.3f}  val_acc {m['val_acc']:.3f}")

        result = run(config, report=report, checkpoint_dir=checkpoint_dir)
    trial_id = _store_run(results, name, result) if results is not None else None
    if format == "json":
        final = {k: result.final_metrics[k] for k in FINAL_METRICS}
        typer.echo(json.dumps({**config.to_dict(), "steps_run": result.steps_run, "wall_s": result.wall_s,
                               **result.events, "censored": result.censored, **final}))
        return
    typer.echo(f"{preset_name}: {result.steps_run} steps in {result.wall_s:.1f} s on {result.device}")
    for event in EVENTS:
        value = result.events[event]
        typer.echo(f"  {event:<24} {'-' if value is None else value}")
    verdict = "censored: the budget ended before val_acc >= 0.99" if result.censored else "generalised"
    typer.echo(f"  {'censored':<24} {result.censored}  ({verdict})")
    typer.echo("  " + "  ".join(f"{k} {result.final_metrics[k]:.4g}" for k in FINAL_METRICS))
    if trial_id is not None:
        typer.echo(f"stored as sweep {name!r}, trial {trial_id} under {results}")


@app.command(rich_help_panel="Trainers")
@user_errors
def presets(format: FormatOpt = "table") -> None:
    """The presets, their sources, and the config fields on which they differ.

    Example: groksweep presets
    """
    import json

    from trainers.config import FIELD_NAMES, PRESET_SOURCES, PRESETS, preset

    check_format(format, ("table", "json"))
    configs = {name: preset(name).to_dict() for name in PRESETS}
    differing = [f for f in FIELD_NAMES if len({json.dumps(c[f]) for c in configs.values()}) > 1]
    if format == "json":
        typer.echo(json.dumps({name: {"source": PRESET_SOURCES[name], **{f: c[f] for f in differing}}
                               for name, c in configs.items()}))
        return
    for name in PRESETS:
        typer.echo(f"{name:<10} {PRESET_SOURCES[name]}")
    typer.echo("")
    width = max(map(len, differing)) + 2
    typer.echo(" " * width + "".join(f"{name:>13}" for name in PRESETS))
    for field_name in differing:
        typer.echo(f"{field_name:<{width}}" + "".join(f"{str(c[field_name]):>13}" for c in configs.values()))


# ===== sweeps: sweep, resume, status, ls, logs, rm ==================================================

NameOpt = Annotated[str, typer.Argument(help="The sweep's name.")]


def _integers_as_integers(frame: Any) -> Any:
    """For display: a float column whose values are all whole numbers (a median of steps, a count) prints
    as integers -- `50`, not `50.0`. JSON, CSV and Parquet keep the stored dtypes."""
    import polars as pl

    whole = [name for name, dtype in frame.schema.items() if dtype.is_float() and frame.height
             and frame[name].drop_nulls().drop_nans().len()
             and (frame[name].drop_nulls().drop_nans() % 1 == 0).all()
             and frame[name].drop_nulls().drop_nans().abs().max() < 2**53]
    return frame.with_columns(pl.col(name).fill_nan(None).cast(pl.Int64) for name in whole) if whole else frame


def _frame_text(frame: Any) -> str:
    import polars as pl

    with pl.Config(tbl_rows=200, tbl_cols=-1, tbl_width_chars=10_000, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, fmt_str_lengths=60):
        return str(_integers_as_integers(frame))


def _sweep_report(outcome: Any, spec: Any) -> None:
    """The summary table at the end of a sweep, and the resume command if it stopped early."""
    from orchestrator.overview import summary

    if outcome.already_complete:
        typer.echo(f"sweep {outcome.name} is complete: {outcome.finished}/{outcome.n_jobs} jobs ended; nothing to "
                   "resume")
    else:
        typer.echo(f"\n{outcome.finished}/{outcome.n_jobs} jobs ended ({outcome.fit_s:.1f} s in Tune)")
    if outcome.table.height:
        typer.echo(_frame_text(summary(spec, outcome.table)))
        _budget_report(spec, outcome.root)
    if outcome.interrupted:
        shown = f" ({len(outcome.interrupted_jobs)} job(s) interrupted)" if outcome.interrupted_jobs else ""
        typer.echo(f"\nStopped before the end{shown}; nothing finished is lost. Continue with:\n"
                   f"  {outcome.resume_command}")
        raise typer.Exit(130)


def _budget_groups(spec: Any, root: str) -> Any:
    """Per configuration: the budget spent and why it stopped (a `budget` sweep, or one that was extended);
    empty for the others."""
    import polars as pl

    from orchestrator import budgets

    if spec.budget is None and not budgets.rounds(root, spec.name):
        return pl.DataFrame()
    return budgets.group_budgets(root, spec)


def _budget_report(spec: Any, root: str) -> None:
    groups = _budget_groups(spec, root)
    if groups.height:
        typer.echo(f"\nbudget per configuration ({groups['trial_steps'].sum()} trial-steps in all):")
        typer.echo(_frame_text(groups))


def _optuna_hint(spec: Any, root: str) -> None:
    if spec.method == "optuna":
        from orchestrator import store

        typer.echo(f"Optuna study {spec.name!r}: optuna-dashboard {store.sweep_dir(root, spec.name)}/optuna.journal")


def _run_to_end(fit: Callable[[], Any], spec: Any, root: str) -> None:
    """Run or resume a sweep, then report it; Ctrl-C prints how to continue."""
    try:
        outcome = fit()
    except KeyboardInterrupt:
        typer.echo(f"\nInterrupted; nothing finished is lost. Continue with:\n  groksweep resume {spec.name} "
                   f"--results {root}")
        raise typer.Exit(130) from None
    _sweep_report(outcome, spec)


def _notice(message: str) -> None:
    typer.echo(f"Note: {message}", err=True)


@app.command(rich_help_panel="Sweeps")
@user_errors
def sweep(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="Sweep spec (YAML); see examples/.")],
    results: ResultsOpt = None,
    address: AddressOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Sweep name (default: the spec's).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing sweep of this name.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the jobs (and packs) it would run; run "
                                          "nothing.")] = False,
) -> None:
    """Run a sweep on Ray Tune (embedded Ray on loopback, or --address); results go to the store.

    Example: groksweep sweep examples/wd-study.yaml --results results
    """
    from orchestrator import sweep as sweeps
    from orchestrator.jobs import pack_sizes
    from orchestrator.overview import dry_run as planned
    from orchestrator.spec import NAME_PATTERN, load_spec

    if name is not None and not NAME_PATTERN.match(name):
        fail(f"--name {name!r}: letters, digits, '_', '.', '-' (starting with a letter or digit, at most 80)")
    spec = load_spec(spec_path, name=name)
    if dry_run:
        import polars as pl

        jobs = planned(spec)
        if spec.method == "optuna":
            typer.echo(f"sweep {spec.name}: optuna ({spec.sampler}) would try {spec.num_samples} configurations "
                       f"x {len(spec.seeds)} seeds = {spec.n_jobs} jobs, one Tune trial per configuration "
                       f"(its seeds packed), over:")
            for key, (kind, bounds) in jobs[0]["space"].items():
                typer.echo(f"  {key}: {kind} {bounds}")
        else:
            typer.echo(_frame_text(pl.DataFrame(jobs)))
            sizes = pack_sizes(spec, len(jobs))
            shown = str(sizes[0]) if len(set(sizes)) == 1 else f"{sizes[0]} down to {min(sizes)}"
            typer.echo(f"sweep {spec.name}: {spec.method} would run {spec.n_jobs} jobs in {len(sizes)} "
                       f"Tune trials (packs of {shown}), {spec.max_concurrent} at a time")
        return
    root = sweeps.resolve_root(results)
    sweeps.refuse_existing(root, spec.name, overwrite)
    typer.echo(f"sweep {spec.name}: {spec.method}, {spec.n_jobs} jobs, results in {root}")
    _optuna_hint(spec, root)
    _run_to_end(lambda: sweeps.run_sweep(spec_path, results=root, address=address, name=name,
                                         overwrite=overwrite, progress=True, notice=_notice), spec, root)


@app.command(rich_help_panel="Sweeps")
@user_errors
def resume(name: NameOpt, results: ResultsOpt = None, address: AddressOpt = None) -> None:
    """Continue a stopped or crashed sweep: run every job it still owes (unfinished ones from their
    checkpoints); a complete sweep says so and exits 0.

    Example: groksweep resume wd-study
    """
    from orchestrator import sweep as sweeps

    root = sweeps.resolve_root(results)
    spec = sweeps.load_sweep_spec(root, name)
    _optuna_hint(spec, root)
    _run_to_end(lambda: sweeps.resume_sweep(name, results=root, address=address, progress=True, notice=_notice),
                spec, root)


@app.command(rich_help_panel="Sweeps")
@user_errors
def extend(
    name: NameOpt,
    max_steps: Annotated[int, typer.Option("--max-steps", help="The new budget (optimiser steps) of the selected "
                                           "censored jobs; above their current one.")],
    where: Annotated[str | None, typer.Option("--where", help="SQL predicate over trials columns selecting the "
                                              "censored jobs to extend, e.g. \"train_fraction < 0.25\".")] = None,
    rerun_missing: Annotated[bool, typer.Option("--rerun-missing", help="Rerun from step 0 the selected jobs "
                                                "that kept no checkpoint (else they are listed and left).")] = False,
    results: ResultsOpt = None,
    address: AddressOpt = None,
) -> None:
    """Continue censored jobs of a grid/random sweep from their checkpoints up to a larger budget; each
    extended job ends exactly as if it had had that budget from the start. Resumable with `resume`.

    Example: groksweep extend wd-study --max-steps 8000 --where "train_fraction < 0.25"
    """
    from orchestrator import budgets
    from orchestrator import sweep as sweeps

    root = sweeps.resolve_root(results)
    spec = sweeps.load_sweep_spec(root, name)
    selection = budgets.select(root, spec, max_steps, where, rerun_missing)
    typer.echo(f"extend {name}: {len(selection.jobs)} censored job(s) continue from their checkpoints to "
               f"{max_steps} steps" + (f"; {len(selection.missing)} without a checkpoint "
                                       + ("rerun from step 0" if rerun_missing else "left (add --rerun-missing to "
                                          "rerun them from step 0): " + ", ".join(selection.missing[:20])
                                          + (" ..." if len(selection.missing) > 20 else ""))
                                       if selection.missing else ""))
    if not selection.to_run:
        return
    _run_to_end(lambda: sweeps.extend_sweep(name, max_steps, where=where, rerun_missing=rerun_missing,
                                            results=root, address=address, progress=True, notice=_notice)[1],
                spec, root)


@app.command(rich_help_panel="Sweeps")
@user_errors
def status(name: NameOpt, results: ResultsOpt = None, format: FormatOpt = "table",
           skip_corrupt: SkipCorruptOpt = False) -> None:
    """A sweep's jobs: status, events, censoring; its per-configuration summary; who is writing it.

    Example: groksweep status wd-study --format json
    """
    import json

    from orchestrator import lease, overview
    from orchestrator.sweep import resolve_root

    check_format(format, ("table", "json"))
    spec, table = overview.sweep_status(name, results)
    holder = overview.writer(resolve_root(results), name)
    searched = [k for k, p in spec.parameters.items() if p.kind != "value"]
    columns = ["trial_id", *searched, "seed", "status", "steps_run", "steps_to_memorize", "steps_to_generalize",
               "censored", "wall_s"]
    trials = table.select([c for c in columns if c in table.columns]) if table.height else table
    if format == "json":
        typer.echo(json.dumps({"sweep": name, "n_trials": spec.n_jobs, "n_jobs": spec.n_jobs,
                               "writer": None if holder is None else lease.describe(holder),
                               "trials": trials.to_dicts(), "summary": overview.summary(spec, table).to_dicts(),
                               "budget": _budget_groups(spec, resolve_root(results)).to_dicts()},
                              default=str))
        return
    typer.echo(f"sweep {name}: {table.height}/{spec.n_jobs} jobs recorded; "
               + ("no process is writing it" if holder is None else f"being written by {lease.describe(holder)}"))
    if table.height:
        typer.echo(_frame_text(trials))
        typer.echo(_frame_text(overview.summary(spec, table)))
        _budget_report(spec, resolve_root(results))


@app.command("ls", rich_help_panel="Sweeps")
@user_errors
def list_sweeps(results: ResultsOpt = None, format: FormatOpt = "table") -> None:
    """The sweeps under the results root, with job counts by status.

    Example: groksweep ls --results results
    """
    from orchestrator import overview
    from orchestrator.sweep import resolve_root

    check_format(format, ("table", "json"))
    frame = overview.sweeps_overview(results)
    typer.echo(frame.write_json() if format == "json" else _frame_text(frame) if frame.height else
               f"no sweeps under {resolve_root(results)}")


@app.command(rich_help_panel="Sweeps")
@user_errors
def logs(name: NameOpt, trial: Annotated[str, typer.Argument(help="Job id, the trial_id column (see `status`).")],
         results: ResultsOpt = None) -> None:
    """A job's log, and its traceback if it failed.

    Example: groksweep logs wd-study c0003-s1-4be1a0
    """
    from orchestrator import overview

    typer.echo(overview.trial_log(name, trial, results))


@app.command(rich_help_panel="Sweeps")
@user_errors
def rm(name: NameOpt, results: ResultsOpt = None,
       yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False) -> None:
    """Delete a sweep: its rows, curves, Tune records, journal, logs and checkpoints (asks first).

    Example: groksweep rm wd-study --yes
    """
    from orchestrator import store
    from orchestrator import sweep as sweeps

    root = sweeps.resolve_root(results)
    store.check_name("sweep", name)
    if name not in sweeps.list_sweep_names(root):
        fail(str(store.unknown_sweep(name, root, sweeps.list_sweep_names(root))))
    if not yes and not typer.confirm(f"Delete sweep {name!r} and all its results under {root}?"):
        fail("not deleted", code=1)
    sweeps.remove_sweep(name, root, notice=_notice)
    typer.echo(f"deleted sweep {name}")


@app.command(rich_help_panel="Sweeps")
@user_errors
def check(name: NameOpt, results: ResultsOpt = None,
          repair: Annotated[bool, typer.Option("--repair", help="Fix what needs no training (under the sweep's "
                                               "lease); list what needs `resume`.")] = False,
          format: FormatOpt = "table", skip_corrupt: SkipCorruptOpt = False) -> None:
    """Verify a sweep's invariants; one line per violation, naming the job. Exit 0 clean, 1 violations.

    Example: groksweep check wd-study --repair
    """
    import json

    from orchestrator import sweep as sweeps

    check_format(format, ("table", "json"))
    report, repaired = sweeps.check_sweep(name, results, repair=repair, notice=_notice)
    if format == "json":
        typer.echo(json.dumps({**report.to_json(), "repaired": repaired}))
    else:
        for line in repaired:
            typer.echo(f"repaired: {line}")
        if report.holder:
            typer.echo(f"note: {report.holder}; jobs it has not ended yet are not counted as missing")
        for violation in report.violations:
            typer.echo(violation.line() + ("" if violation.repairable else "  [needs resume]"
                                           if violation.kind in ("missing", "optuna_running", "no_checkpoint") else ""))
        typer.echo(f"sweep {name}: " + ("ok" if report.ok else f"{len(report.violations)} violation(s)"))
    if not report.ok:
        raise typer.Exit(1)


# ===== results: query, study, phase, plot ===========================================================

TABLE_ROWS = 100  # `--format table` shows at most this many rows; use csv/json/parquet for all of them


def _table(frame: Any, title: str | None = None) -> str:
    """A polars frame as a plain text table (all columns, at most TABLE_ROWS rows)."""
    import polars as pl

    with pl.Config(tbl_rows=TABLE_ROWS, tbl_cols=-1, tbl_width_chars=10_000, fmt_str_lengths=80,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, float_precision=None):
        text = str(_integers_as_integers(frame))
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
    format: Annotated[str, typer.Option("--format", help="table | csv | json | parquet",
                                        metavar="[table|csv|json|parquet]")] = "table",
    output: Annotated[str | None, typer.Option("--output", help="Write here instead of stdout.")] = None,
    skip_corrupt: SkipCorruptOpt = False,
) -> None:
    """Run SQL over the result tables (`trials`: one row per trial; `curves`: one row per evaluation).

    Example: groksweep query "SELECT weight_decay, avg(steps_to_generalize) FROM trials GROUP BY 1"
    """
    from orchestrator import store

    check_format(format, ("table", "csv", "json", "parquet"))
    if format == "parquet" and output is None:
        fail("--format parquet needs --output PATH")
    frame = store.query(sql, results)
    if frame.is_empty():
        from orchestrator.sweep import resolve_root

        typer.echo(f"(no rows; results root {resolve_root(results)})", err=True)
    if format == "parquet":
        from pathlib import Path

        Path(output).parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(output)
    elif format == "csv":
        _emit(store.lists_as_text(frame).write_csv(), output)  # list columns as JSON array text
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
    bins: Annotated[int | None, typer.Option("--bins", help="Bin a continuous x (random/Optuna sweeps) into N "
                                             "quantile bins, edges in x_low/x_high; default: chosen from the "
                                             "data for such an x, none for grids; 0: never.")] = None,
    results: ResultsOpt = None,
    skip_corrupt: SkipCorruptOpt = False,
) -> None:
    """Kaplan-Meier median time-to-grok per x (censored trials count), and a power-law fit against x.

    Example: groksweep study wd-scan --x weight_decay --plot wd.png
    """
    import json

    from orchestrator import plots, studies

    check_format(format, ("table", "json"))
    if bootstrap < 1:
        fail(f"--bootstrap: must be >= 1, got {bootstrap}")
    result = studies.study(names, x=x, by=by, metric=metric, root=results, n_boot=bootstrap, seed=seed, bins=bins)
    if plot:
        _wrote(plots.study_plot(result, plot, title=f"{', '.join(names)}: time to "
                                f"{metric.removeprefix('steps_to_').replace('_', ' ')} vs {x}"), format)
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


def _wrote(path: Any, format: str = "table") -> None:
    """Say where a figure went: on stdout, or on stderr when stdout carries JSON."""
    typer.echo(f"wrote {path}", err=format == "json")


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
    skip_corrupt: SkipCorruptOpt = False,
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
        _wrote(plots.phase_plot(diagram, plot, title=f"{name}: {y} against {x}"), format)
    if format == "json":
        typer.echo(json.dumps(diagram.to_json()))
    else:
        typer.echo(_table(diagram.rows))


@app.command(rich_help_panel="Results")
@user_errors
def plot(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    trial: Annotated[list[str] | None, typer.Option("--trial", help="Trial id (repeatable); default: every "
                                                    "job of the sweep.")] = None,
    output: Annotated[str | None, typer.Option("--output", help="PNG path (default NAME-curves.png).")] = None,
    color_by: Annotated[str | None, typer.Option("--color-by", help="Trial column that colours the curves "
                                                 "(default: the first swept parameter).")] = None,
    results: ResultsOpt = None,
    skip_corrupt: SkipCorruptOpt = False,
) -> None:
    """Train/validation accuracy and loss against step (symlog x, step 0 kept) for every job, coloured by a
    swept parameter, with memorisation and generalisation marked on the curves, as a PNG. Prints its path.

    Example: groksweep plot wd-scan --color-by weight_decay --output curves.png
    """
    from orchestrator import plots, store, studies

    if color_by is not None and color_by not in store.TRIAL_SCHEMA:
        fail(f"--color-by: unknown column {color_by!r}; use a trial column such as weight_decay")
    curves, trials = studies.curves_for_plot(name, trial or None, results)
    swept = studies.swept_columns(results, name)
    color_by = color_by or (swept[0] if swept else None)
    path = plots.curves_plot(curves, trials, output or f"{name}-curves.png", color_by=color_by)
    typer.echo(str(path))


@app.command(rich_help_panel="Results")
@user_errors
def migrate(results: ResultsOpt = None) -> None:
    """Bring a results root to the current layout and schema: `sweep=<name>` folders (before 0.2) renamed
    to `<name>`, every file rewritten with the current columns (atomically, under each sweep's lease).
    Sweep, resume, check --repair and train --results do this by themselves before they write.

    Example: groksweep migrate --results results/reference
    """
    from orchestrator import sweep as sweeps

    root = sweeps.resolve_root(results)
    changed = sweeps.migrate_root(root, notice=_notice)
    typer.echo(f"migrated {len(changed)} file(s) or folder(s) under {root}" if changed else
               f"{root} is up to date")


@app.command(rich_help_panel="Results")
@user_errors
def report(
    names: Annotated[list[str], typer.Argument(help="Sweep name(s), drawn together.", metavar="NAME...")],
    output: Annotated[str | None, typer.Option("--output", help="HTML path (default NAME-report.html).")] = None,
    color_by: Annotated[str | None, typer.Option("--color-by", help="Trial column that colours the curves and "
                                                 "groups the survival curves (default: the first swept one).")] = None,
    results: ResultsOpt = None,
) -> None:
    """A self-contained HTML page of the sweep(s) that opens offline: spec and summary, learning curves,
    Kaplan-Meier survival, scaling study, phase diagram, parallel coordinates, ranked configurations,
    Optuna importances and progress measures. Prints the path it wrote.

    Example: groksweep report wd-study --output wd-study.html
    """
    from orchestrator.report import write_report

    typer.echo(str(write_report(names, output, results, color_by)))


@app.command(rich_help_panel="Results")
@user_errors
def inspect(
    name: Annotated[str, typer.Argument(help="Sweep name (`train` for `groksweep train --results` runs).")],
    trial_id: Annotated[str, typer.Argument(help="The job's trial id.")],
    output: Annotated[str | None, typer.Option("--output", help="PNG path (default NAME-TRIAL_ID.png).")] = None,
    results: ResultsOpt = None,
) -> None:
    """One job's figure from its stored curve: accuracy and loss with events, the embedding's Fourier spectrum
    at memorisation and at the end, restricted/excluded loss, concentration and weight norms per group.

    Example: groksweep inspect wd-study c0003-s1-4be1a0 --output job.png
    """
    from orchestrator import plots, studies

    curve, row = studies.job_for_inspect(name, trial_id, results)
    typer.echo(str(plots.inspect_plot(curve, row, output or f"{name}-{trial_id}.png")))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
