"""The Parquet result store: the only module that writes result files. Ray-free.

INTERFACE (pinned; the sweep driver, `groksweep train` and the studies build on it) -- filled in by
the results work.

Layout under a root (a local path or a pyarrow filesystem URI such as s3://bucket/prefix):
  trials/sweep=<name>/<trial_id>.parquet          one row per trial
  curves/sweep=<name>/<trial_id>/<...>.parquet    long format, one row per (trial_id, step); compacted
                                                  into one file per trial when the trial ends
  sweeps/<name>/                                  the sweep's own files (spec, tune/, optuna.journal, logs)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl

# Trial status values. A row whose status is FINAL is never overwritten.
RUNNING, COMPLETED, FAILED, STOPPED = "running", "completed", "failed", "stopped"
FINAL = frozenset({COMPLETED, STOPPED})


def default_root() -> str:
    """`GROKSWEEP_RESULTS`, else ./results."""
    return os.environ.get("GROKSWEEP_RESULTS", "results")


def sweep_dir(root: str | Path, name: str) -> str:
    """Where a sweep's own files live: <root>/sweeps/<name>."""
    raise NotImplementedError


def trial_row(sweep: str, trial_id: str, config: dict[str, Any], status: str, *, steps_run: int | None = None,
              wall_s: float | None = None, events: dict[str, int | None] | None = None,
              censored: bool | None = None, final_metrics: dict[str, float] | None = None,
              device: str | None = None, started_at: Any = None, ended_at: Any = None,
              error: str | None = None) -> dict[str, Any]:
    """The full trial row: sweep, trial_id, every config field, status, results, host, library versions."""
    raise NotImplementedError


def write_trial_row(root: str | Path, row: dict[str, Any]) -> bool:
    """Write (or replace) a trial's row atomically; a FINAL row already there is kept. True if written."""
    raise NotImplementedError


def write_curve_rows(root: str | Path, sweep: str, trial_id: str, rows: list[dict[str, Any]]) -> None:
    """Append evaluation rows (each: step + metrics); idempotent on (trial_id, step)."""
    raise NotImplementedError


def compact_curves(root: str | Path, sweep: str, trial_id: str) -> None:
    """Merge a trial's per-report curve files into one, deduplicated on step."""
    raise NotImplementedError


def trials(root: str | Path | None = None, sweeps: list[str] | None = None) -> pl.LazyFrame:
    """All trial rows (deduplicated), with the documented dtypes."""
    raise NotImplementedError


def curves(root: str | Path | None = None, sweeps: list[str] | None = None) -> pl.LazyFrame:
    """All curve rows (deduplicated on sweep, trial_id, step), with the documented dtypes."""
    raise NotImplementedError


def query(sql: str, root: str | Path | None = None) -> pl.DataFrame:
    """Polars SQL over the tables `trials` and `curves`; UserError on bad SQL or unknown columns."""
    raise NotImplementedError
