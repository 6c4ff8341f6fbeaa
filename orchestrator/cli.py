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


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
