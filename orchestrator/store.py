"""The Parquet result store: the only module that writes result files. Ray-free, torch-free.

Layout under a root (a local path, a file:// URI, or a pyarrow filesystem URI such as s3://bucket/prefix):
  trials/<name>/<trial_id>.parquet                one row per trial, replaced atomically while it runs
  curves/<name>/<trial_id>/<ns>-part.parquet      long format, one row per (trial_id, step): one file
  curves/<name>/<trial_id>/<ns>-zcompact.parquet  per report, merged into one when the trial ends
  trials/<name>/<ns>-sweep.parquet                when the sweep ends, `compact_sweep` merges its final
  curves/<name>/<ns>-sweep.parquet                trials' rows and curves into one file per table
  sweeps/<name>/                                  the sweep's own files (spec, tune/, optuna.journal, logs)
  .staging/                                       files being written, renamed into place when whole
<ns> is the write time in nanoseconds (20 digits): files sort in write order, and readers keep the latest
row of each key. The sweep folders are plain names, not Hive `sweep=<name>` partitions: the `sweep` column
in every file is then the only `sweep` a reader sees, a string in every tool (a Hive folder clashed with it
in pandas and pyarrow, and Hive type inference turns a name like `2024` into a number). Roots written
before 0.2 (`sweep=<name>` folders, older schemas) still read; `migrate` brings them up to date.

Every column's dtype is fixed once (TRIAL_SCHEMA, CURVE_SCHEMA; documented in results/README.md). Readers
scan with that schema, so a column added later reads as null in old files instead of failing the scan, and
they deduplicate (object stores have no atomic rename; Tune may re-send steps after a restore).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import io
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator import UserError
from orchestrator.results_root import ResultsRoot, default_root
from trainers.config import FIELD_NAMES, PRESETS, TrainConfig, _field_type
from trainers.metrics import BUMP, CENSORED, EVENTS, METRICS, PROGRESS, PROGRESS_LISTS

# Job (trial row) status values. A row whose status is FINAL is never overwritten; ENDED rows need no more
# training (`resume` retries FAILED ones); INTERRUPTED: was running when its writer stopped (Ctrl-C, crash).
RUNNING, COMPLETED, FAILED, STOPPED, INTERRUPTED = "running", "completed", "failed", "stopped", "interrupted"
STATUSES = (RUNNING, COMPLETED, FAILED, STOPPED, INTERRUPTED)
FINAL = frozenset({COMPLETED, STOPPED})
ENDED = frozenset({COMPLETED, STOPPED, FAILED})

# Libraries whose versions every trial row records (read from package metadata: nothing is imported).
VERSIONED = ("torch", "ray", "optuna", "polars", "groksweep")

_POLARS_TYPE = {str: pl.String, int: pl.Int64, float: pl.Float64, bool: pl.Boolean}
TIMESTAMP = pl.Datetime("us", "UTC")

# --- the schema, defined once: add new columns at the end; never change a dtype ---
TRIAL_SCHEMA: dict[str, pl.DataType] = {
    "sweep": pl.String,
    "trial_id": pl.String,
    **{name: _POLARS_TYPE[_field_type(name)[0]] for name in FIELD_NAMES},
    "status": pl.String,
    "steps_run": pl.Int64,
    **{name: pl.Int64 for name in EVENTS},
    CENSORED: pl.Boolean,
    **{name: pl.Float64 for name in METRICS},
    "wall_s": pl.Float64,
    "device": pl.String,
    "host": pl.String,
    **{f"{lib}_version": pl.String for lib in VERSIONED},
    "started_at": TIMESTAMP,
    "ended_at": TIMESTAMP,
    "error": pl.String,
    "optuna_trial": pl.Int64,
    "pack_size": pl.Int64,
    "batched": pl.Boolean,
    "spec_hash": pl.String,
    "source_revision": pl.String,
    "budget_history": pl.List(pl.Int64),  # an extended job's budgets (max_steps), oldest first; else null
    "extended_from_steps": pl.Int64,  # an extended job's steps_run before its last extension; else null
    **{name: (pl.Int64 if name.endswith("_step") else pl.Float64) for name in BUMP},
}
CURVE_SCHEMA: dict[str, pl.DataType] = {
    "sweep": pl.String,
    "trial_id": pl.String,
    "step": pl.Int64,
    **{name: pl.Float64 for name in METRICS},
    **{name: pl.Float64 for name in PROGRESS},  # trainers/progress.py; null where not measured
    **{name: pl.List(_POLARS_TYPE[kind]) for name, kind in PROGRESS_LISTS.items()},
}
TRIAL_KEY = ("sweep", "trial_id")
CURVE_KEY = ("sweep", "trial_id", "step")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # sweep names and trial ids become path parts


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 200:
        raise UserError(f"{kind} {name!r}: use letters, digits, '_', '-', '.' (starting with a letter or digit)")
    if kind == "trial id" and _WRITTEN.match(name):
        raise UserError(f"trial id {name!r}: 20 digits and '-' are reserved for compacted files")
    return name


_WRITTEN = re.compile(r"^(\d{20})-")  # file names that start with their write time in ns


def _write_order(path: str) -> tuple[str, str]:
    """Sort key: files named by write time in write order (after any others), then by path."""
    name = path.rsplit("/", 1)[-1]
    return (name[:20] if _WRITTEN.match(name) else "", path)


# --- filesystems: local paths, file:// and any pyarrow URI (s3://, gs://, hdfs://) ---

Root = str | Path | ResultsRoot | None


def _fs(root: Root) -> tuple[pafs.FileSystem, str, str | None]:
    """(filesystem, base path in it, URI prefix polars needs for it or None when local)."""
    where = ResultsRoot.of(root)
    return where.fs, where.base, where.prefix


def unknown_sweep(name: str, root: Any, known: list[str]) -> UserError:
    """The one wording for a sweep name that is not there, whichever command met it."""
    return UserError(f"no sweep named {name!r} under {root} (sweeps there: {', '.join(known) or 'none'})")


def sweep_dir(root: Root, name: str) -> str:
    """Where a sweep's own files live: <root>/sweeps/<name> (a local path, or a URI for remote roots)."""
    return ResultsRoot.of(root).uri_of("sweeps", check_name("sweep", name))


LEGACY = "sweep="  # folder prefix before 0.2 (Hive partitions); read, and renamed away by `migrate`
STAGING = ".staging"  # <root>/.staging: files being written, outside every reader's glob


def _table_dir(base: str, table: str, sweep: str) -> str:
    """<base>/<table>/<sweep>: where a sweep's rows (table "trials") or curves ("curves") are written."""
    return f"{base}/{table}/{check_name('sweep', sweep)}"


def _sweep_files(fs: pafs.FileSystem, base: str, table: str, sweep: str, recursive: bool = True) -> list[str]:
    """A sweep's files of one table, in write order, including a not yet migrated `sweep=<name>` folder."""
    files = _parquet_files(fs, _table_dir(base, table, sweep), recursive)
    legacy = _parquet_files(fs, f"{base}/{table}/{LEGACY}{sweep}", recursive)
    return sorted(files + legacy, key=_write_order) if legacy else files


def _write_parquet(fs: pafs.FileSystem, base: str, path: str, frame: pl.DataFrame) -> None:
    """Write so that readers never see a partial file: written under <root>/.staging (where no reader's
    glob of trials/ or curves/ looks; polars' directory scan would trip on a hidden file beside the
    tables) and renamed into place (atomic on POSIX); object stores publish an object only when its
    upload completes, so write it in place there."""
    directory, name = path.rsplit("/", 1)
    fs.create_dir(directory, recursive=True)
    buffer = io.BytesIO()
    frame.write_parquet(buffer, statistics=True)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(f"{base}/{STAGING}", exist_ok=True)
        temp = f"{base}/{STAGING}/{name}.{uuid.uuid4().hex}.tmp"
        with fs.open_output_stream(temp) as out:
            out.write(buffer.getvalue())
        os.replace(temp, path)
    else:
        with fs.open_output_stream(path) as out:
            out.write(buffer.getvalue())


def _parquet_files(fs: pafs.FileSystem, directory: str, recursive: bool = True) -> list[str]:
    """Every visible .parquet file under `directory`, in write order (see _write_order)."""
    selector = pafs.FileSelector(directory, recursive=recursive, allow_not_found=True)
    return sorted((info.path for info in fs.get_file_info(selector)
                   if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
                   and not info.base_name.startswith(".")), key=_write_order)


def _sweep_names(fs: pafs.FileSystem, directory: str) -> list[str]:
    selector = pafs.FileSelector(directory, recursive=False, allow_not_found=True)
    return sorted({info.base_name.removeprefix(LEGACY) for info in fs.get_file_info(selector)
                   if info.type == pafs.FileType.Directory and not info.base_name.startswith((".", "_"))})


def sweeps(root: Root = None) -> list[str]:
    """Names of the sweeps that have trial rows or curves under `root`."""
    fs, base, _ = _fs(root)
    return sorted(set(_sweep_names(fs, f"{base}/trials")) | set(_sweep_names(fs, f"{base}/curves")))


# --- trial rows ---

def _timestamp(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
    parsed = dt.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


@cache
def library_versions() -> dict[str, str | None]:
    versions = {}
    for lib in VERSIONED:
        try:
            versions[f"{lib}_version"] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[f"{lib}_version"] = None
    return versions


@cache
def source_revision() -> str | None:
    """The git commit of the checkout groksweep runs from (an editable install), `+dirty` when tracked
    files differ from it; None for an installed package. Read once per process."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    if head.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None
    return commit + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _config_values(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """Every config field: defaults, then the named preset (if any), then the given values. Not
    validated -- a failed trial's bad config is still recorded as given."""
    if isinstance(config, TrainConfig):
        return dataclasses.asdict(config)
    values = dataclasses.asdict(TrainConfig())
    if config.get("preset") in PRESETS:
        values.update(PRESETS[config["preset"]])
    values.update({name: config[name] for name in FIELD_NAMES if name in config})
    return values


def trial_row(sweep: str, trial_id: str, config: TrainConfig | dict[str, Any], status: str, *,
              steps_run: int | None = None, wall_s: float | None = None,
              events: dict[str, int | None] | None = None, censored: bool | None = None,
              final_metrics: dict[str, float] | None = None, device: str | None = None,
              started_at: Any = None, ended_at: Any = None, error: str | None = None,
              optuna_trial: int | None = None, pack_size: int | None = None,
              batched: bool | None = None, spec_hash: str | None = None,
              budget_history: list[int] | None = None, extended_from_steps: int | None = None,
              bump: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full trial row: sweep, trial_id, every config field, status, results, host, library versions,
    provenance (`spec_hash`: SweepSpec.spec_hash of the sweep as run; the source revision).
    Timestamps may be datetimes, epoch seconds or ISO strings (stored as UTC)."""
    if status not in STATUSES:
        raise ValueError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    events, final_metrics = events or {}, final_metrics or {}
    row = {
        "sweep": check_name("sweep", sweep),
        "trial_id": check_name("trial id", trial_id),
        **_config_values(config),
        "status": status,
        "steps_run": steps_run,
        **{name: events.get(name) for name in EVENTS},
        CENSORED: censored,
        **{name: final_metrics.get(name) for name in METRICS},
        "wall_s": wall_s,
        "device": device,
        "host": socket.gethostname(),
        **library_versions(),
        "started_at": _timestamp(started_at),
        "ended_at": _timestamp(ended_at),
        "error": strip_ansi(error),
        "optuna_trial": optuna_trial,
        "pack_size": pack_size,
        "batched": batched,
        "spec_hash": spec_hash,
        "source_revision": source_revision(),
        "budget_history": budget_history,
        "extended_from_steps": extended_from_steps,
        **{name: (bump or {}).get(name) for name in BUMP},
    }
    assert row.keys() == TRIAL_SCHEMA.keys()
    return row


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def strip_ansi(text: str | None) -> str | None:
    """Tracebacks from Ray carry terminal colour codes: never store them."""
    return None if text is None else _ANSI.sub("", text)


def _trial_path(base: str, sweep: str, trial_id: str) -> str:
    return f"{_table_dir(base, 'trials', sweep)}/{check_name('trial id', trial_id)}.parquet"


def read_trial_row(root: Root, sweep: str, trial_id: str) -> dict[str, Any] | None:
    """One trial's stored row, or None if it has none yet."""
    fs, base, _ = _fs(root)
    path = _trial_path(base, sweep, trial_id)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_file(path) as source:
        return pq.read_table(source).to_pylist()[0]


def read_trial_status(root: Root, sweep: str, trial_id: str) -> str | None:
    """A job's stored status from its own row file (one column: ~50x cheaper than the whole row), or None."""
    fs, base, _ = _fs(root)
    path = _trial_path(base, sweep, trial_id)
    try:
        with fs.open_input_file(path) as source:
            return pq.read_table(source, columns=["status"]).column(0)[0].as_py()
    except FileNotFoundError:
        return None


def _compacted_trial_row(root: Root, sweep: str, trial_id: str) -> dict[str, Any] | None:
    """A trial's row in the sweep's compacted trial files (final rows only), or None."""
    fs, base, prefix = _fs(root)
    files = [f for f in _sweep_files(fs, base, "trials", sweep, recursive=False)
             if _WRITTEN.match(f.rsplit("/", 1)[-1])]
    found = _scan(files, TRIAL_SCHEMA, prefix).filter(pl.col("trial_id") == trial_id).head(1).collect()
    return found.row(0, named=True) if found.height else None


def write_trial_row(root: Root, row: dict[str, Any], known_not_final: bool = False) -> bool:
    """Write (or replace) a trial's row atomically; a FINAL row already there is kept. True if written.
    Idempotent on (sweep, trial_id): the trial's one file is replaced. `known_not_final`: the caller
    knows that no FINAL row exists and that `row` has its started_at, so the stored row is not read
    (the sweep driver, which is the only writer of its sweep, keeps track)."""
    fs, base, _ = _fs(root)
    stored = None if known_not_final else (read_trial_row(root, row["sweep"], row["trial_id"])
                                           or _compacted_trial_row(root, row["sweep"], row["trial_id"]))
    if stored is not None and stored.get("status") in FINAL:
        return False
    if stored is not None and row.get("started_at") is None:  # the running row knew when it started
        row = {**row, "started_at": stored.get("started_at")}
    unknown = set(row) - TRIAL_SCHEMA.keys()
    if unknown:
        raise ValueError(f"trial row: unknown columns {sorted(unknown)}; build rows with trial_row()")
    frame = pl.DataFrame([{name: row.get(name) for name in TRIAL_SCHEMA}], schema=TRIAL_SCHEMA)
    _write_parquet(fs, base, _trial_path(base, row["sweep"], row["trial_id"]), frame)
    return True


def mark_interrupted(root: Root, sweep: str) -> list[str]:
    """Rows still `running` become `interrupted`: their writer has stopped (Ctrl-C, a crash, a takeover).
    Call only under the sweep's lease, with no trial of it running. Returns their ids."""
    fs, base, prefix = _fs(root)
    trial_dir = _table_dir(base, 'trials', sweep)
    files = [f for f in _parquet_files(fs, trial_dir, recursive=False) if not _WRITTEN.match(f.rsplit("/", 1)[-1])]
    if not files:
        return []
    running = _scan(files, TRIAL_SCHEMA, prefix).filter(pl.col("status") == RUNNING).collect()
    for row in running.iter_rows(named=True):
        write_trial_row(root, {**row, "status": INTERRUPTED, "ended_at": _timestamp(time.time())},
                        known_not_final=True)
    return sorted(running["trial_id"].to_list())


def raw_trial_ids(root: Root, sweep: str) -> pl.DataFrame:
    """Every stored trial row's (trial_id, status), not deduplicated: `check` counts rows per job."""
    fs, base, prefix = _fs(root)
    files = _sweep_files(fs, base, "trials", sweep, recursive=False)
    return _scan(files, TRIAL_SCHEMA, prefix).select("trial_id", "status").collect()


def raw_curve_duplicates(root: Root, sweep: str) -> pl.DataFrame:
    """(trial_id, step, copies) of every curve key stored more than once, before deduplication."""
    fs, base, prefix = _fs(root)
    files = _sweep_files(fs, base, "curves", sweep)
    return (_scan(files, CURVE_SCHEMA, prefix).group_by("trial_id", "step").agg(pl.len().alias("copies"))
            .filter(pl.col("copies") > 1).sort("trial_id", "step").collect())


def rewrite_sweep_tables(root: Root, sweep: str) -> None:
    """Rewrite a sweep's tables without duplicate rows (repair): every job's curve compacted, then the
    finished jobs merged, and the remaining per-job row files rewritten from their deduplicated rows."""
    fs, base, prefix = _fs(root)
    curve_dir = _table_dir(base, 'curves', sweep)
    selector = pafs.FileSelector(curve_dir, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.Directory:
            compact_curves(root, sweep, info.base_name)
    compact_sweep(root, sweep)
    curve_files = [f for f in _parquet_files(fs, curve_dir, recursive=False)]
    if len(curve_files) > 1:  # two sweep-level curve files (concurrent compactions): merge them
        merged = (_scan(curve_files, CURVE_SCHEMA, prefix).unique(subset=list(CURVE_KEY), keep="last",
                                                                  maintain_order=True).sort("trial_id", "step")
                  .collect())
        target = f"{curve_dir}/{time.time_ns():020d}-sweep.parquet"
        _write_parquet(fs, base, target, merged)
        _delete(fs, curve_files)
    trial_dir = _table_dir(base, 'trials', sweep)
    files = _parquet_files(fs, trial_dir, recursive=False)
    sweep_files = [f for f in files if _WRITTEN.match(f.rsplit("/", 1)[-1])]
    if len(sweep_files) > 1:
        merged = (_scan(sweep_files, TRIAL_SCHEMA, prefix).unique(subset=list(TRIAL_KEY), keep="last",
                                                                  maintain_order=True).sort("trial_id").collect())
        target = f"{trial_dir}/{time.time_ns():020d}-sweep.parquet"
        _write_parquet(fs, base, target, merged)
        _delete(fs, sweep_files)


def replace_trial_row(root: Root, row: dict[str, Any]) -> None:
    """Write a job's row even over a final one: only for a row rederived from the job's own stored curve
    (`check --repair`), where the curve is the truth. The row moves out of any compacted file."""
    fs, base, prefix = _fs(root)
    write_trial_row(root, row, known_not_final=True)
    trial_dir = _table_dir(base, 'trials', row['sweep'])
    for path in [f for f in _parquet_files(fs, trial_dir, recursive=False) if _WRITTEN.match(f.rsplit("/", 1)[-1])]:
        frame = _scan([path], TRIAL_SCHEMA, prefix).collect()
        if row["trial_id"] in frame["trial_id"].to_list():
            rest = frame.filter(pl.col("trial_id") != row["trial_id"])
            if rest.height:
                _write_parquet(fs, base, path, rest)  # same name: its place in write order is kept
            else:
                _delete(fs, [path])


# --- a sweep's own files: spec, metadata, logs, checkpoints ---

def write_sweep_file(root: Root, sweep: str, name: str, data: bytes) -> None:
    """Write `<root>/sweeps/<sweep>/<name>` whole (atomic rename locally)."""
    where = ResultsRoot.of(root)
    path = where.path("sweeps", check_name("sweep", sweep), name)
    fs = where.fs
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if where.remote:
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    temp = f"{path}.{uuid.uuid4().hex}.tmp"
    Path(temp).write_bytes(data)
    os.replace(temp, path)


def read_sweep_file(root: Root, sweep: str, name: str) -> bytes | None:
    where = ResultsRoot.of(root)
    path = where.path("sweeps", check_name("sweep", sweep), name)
    fs = where.fs
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def sweep_folders(root: Root) -> list[str]:
    """Names of the folders under <root>/sweeps."""
    fs, base, _ = _fs(root)
    selector = pafs.FileSelector(f"{base}/sweeps", allow_not_found=True)
    return sorted(info.base_name for info in fs.get_file_info(selector) if info.type == pafs.FileType.Directory)


def remove_sweep(root: Root, sweep: str, keep_lease: bool = True) -> None:
    """Delete a sweep's tables and its own files (the results root itself stays). The caller holds the
    lease: its lease files stay until it releases them (`keep_lease`)."""
    fs, base, _ = _fs(root)
    check_name("sweep", sweep)
    for path in (_table_dir(base, "trials", sweep), _table_dir(base, "curves", sweep),
                 f"{base}/trials/{LEGACY}{sweep}", f"{base}/curves/{LEGACY}{sweep}"):
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)
    own = f"{base}/sweeps/{sweep}"
    for info in fs.get_file_info(pafs.FileSelector(own, allow_not_found=True)):
        if keep_lease and info.base_name.startswith("lease."):
            continue
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        else:
            fs.delete_file(info.path)


LOG_DIR, CHECKPOINT_DIR = "logs", "checkpoints"


class JobLog:
    """A job's log `<root>/sweeps/<sweep>/logs/<trial_id>.log`: appended as it grows on a local root;
    on a remote root kept in memory and uploaded whole at each flush."""

    def __init__(self, root: Root, sweep: str, trial_id: str):
        self.where = ResultsRoot.of(root)
        log_name = f"{check_name('trial id', trial_id)}.log"
        self.path = self.where.path("sweeps", check_name("sweep", sweep), LOG_DIR, log_name)
        self._lines: list[str] = []
        self._file = None
        if not self.where.remote:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        else:
            old = read_sweep_file(root, sweep, f"{LOG_DIR}/{trial_id}.log")
            self._lines.append(old.decode() if old else "")

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
        else:
            self._lines.append(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            return
        fs = self.where.fs
        fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(self.path) as out:
            out.write("".join(self._lines).encode())

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def write_job_error(root: Root, sweep: str, trial_id: str, text: str) -> None:
    write_sweep_file(root, sweep, f"{LOG_DIR}/{check_name('trial id', trial_id)}.error.txt",
                     (strip_ansi(text) or "").encode())


def read_job_log(root: Root, sweep: str, trial_id: str) -> tuple[str | None, str | None]:
    """(traceback if the job failed, its log), None where absent."""
    check_name("trial id", trial_id)
    error = read_sweep_file(root, sweep, f"{LOG_DIR}/{trial_id}.error.txt")
    log = read_sweep_file(root, sweep, f"{LOG_DIR}/{trial_id}.log")
    return (None if error is None else error.decode()), (None if log is None else log.decode())


def logged_jobs(root: Root, sweep: str) -> list[str]:
    fs, base, _ = _fs(root)
    selector = pafs.FileSelector(f"{base}/sweeps/{check_name('sweep', sweep)}/{LOG_DIR}", allow_not_found=True)
    return sorted(i.base_name.removesuffix(".log") for i in fs.get_file_info(selector) if i.base_name.endswith(".log"))


def checkpoint_path(root: Root, sweep: str, trial_id: str) -> str:
    """A job's checkpoint folder `<root>/sweeps/<sweep>/checkpoints/<trial_id>` (a path in the root's fs)."""
    return ResultsRoot.of(root).path("sweeps", check_name("sweep", sweep), CHECKPOINT_DIR,
                                     check_name("trial id", trial_id))


def checkpointed_jobs(root: Root, sweep: str) -> set[str]:
    """Ids of the jobs with a complete checkpoint (a `step-*` folder holding its `step` file)."""
    fs, base, _ = _fs(root)
    selector = pafs.FileSelector(f"{base}/sweeps/{check_name('sweep', sweep)}/{CHECKPOINT_DIR}",
                                 recursive=True, allow_not_found=True)
    done = set()
    for info in fs.get_file_info(selector):
        parts = info.path.rsplit("/", 3)
        if info.type == pafs.FileType.File and info.base_name == "step" and parts[-2].startswith("step-"):
            done.add(parts[-3])
    return done


def upload_checkpoint(root: Root, sweep: str, trial_id: str, local_dir: str) -> None:
    """Copy a job's local checkpoint folder to a remote root (each object appears whole)."""
    where = ResultsRoot.of(root)
    target = checkpoint_path(where, sweep, trial_id)
    fs = where.fs
    if fs.get_file_info(target).type == pafs.FileType.Directory:
        fs.delete_dir(target)
    fs.create_dir(target, recursive=True)
    pafs.copy_files(local_dir, target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download_checkpoint(root: Root, sweep: str, trial_id: str, local_dir: str) -> bool:
    """Copy a job's remote checkpoint folder into `local_dir`; False when it has none."""
    where = ResultsRoot.of(root)
    source = checkpoint_path(where, sweep, trial_id)
    fs = where.fs
    if fs.get_file_info(source).type != pafs.FileType.Directory:
        return False
    pafs.copy_files(source, local_dir, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return True


def delete_checkpoint(root: Root, sweep: str, trial_id: str) -> None:
    where = ResultsRoot.of(root)
    path = checkpoint_path(where, sweep, trial_id)
    fs = where.fs
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


# --- curves ---

def _curve_dir(base: str, sweep: str, trial_id: str) -> str:
    return f"{_table_dir(base, 'curves', sweep)}/{check_name('trial id', trial_id)}"


def _curve_frame(sweep: str, trial_id: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows (each: step + any of METRICS, PROGRESS and PROGRESS_LISTS; other keys ignored) as a frame with
    the curve schema."""
    records = [{"sweep": sweep, "trial_id": trial_id, "step": int(r["step"]),
                **{name: (None if r.get(name) is None else float(r[name])) for name in (*METRICS, *PROGRESS)},
                **{name: r.get(name) for name in PROGRESS_LISTS}} for r in rows]
    return pl.DataFrame(records, schema=CURVE_SCHEMA)


def write_curve_rows(root: Root, sweep: str, trial_id: str, rows: list[dict[str, Any]]) -> None:
    """Append evaluation rows (each: step + metrics); idempotent on (trial_id, step).

    Each call adds one small file named by its write time; readers and `compact_curves` keep the most
    recently written row per step, so steps re-sent after a restore replace the old ones."""
    if not rows:
        return
    frame = _curve_frame(sweep, trial_id, rows)
    steps = [int(r["step"]) for r in rows]
    if all(a < b for a, b in zip(steps, steps[1:], strict=False)):  # a trainer's rows: already the stored shape
        fs, base, _ = _fs(root)
        _write_parquet(fs, base, _new_curve_path(base, sweep, trial_id), frame)
    else:
        write_curve_frame(root, sweep, trial_id, frame)


def write_curve_frame(root: Root, sweep: str, trial_id: str, frame: pl.DataFrame) -> str | None:
    """`write_curve_rows` for a polars frame with a `step` column and any of METRICS (e.g. a whole
    TrialResult.history at once); other columns are ignored, missing metrics are null. Returns the file
    written (None for an empty frame)."""
    if frame.is_empty():
        return None
    fs, base, _ = _fs(root)
    frame = frame.with_columns(sweep=pl.lit(sweep), trial_id=pl.lit(trial_id))
    frame = (frame.select(pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
                          for name, dtype in CURVE_SCHEMA.items())
             .unique(subset="step", keep="last", maintain_order=True))
    path = _new_curve_path(base, sweep, trial_id)
    _write_parquet(fs, base, path, frame)
    return path


def _new_curve_path(base: str, sweep: str, trial_id: str) -> str:
    return f"{_curve_dir(base, sweep, trial_id)}/{time.time_ns():020d}-part.parquet"


def compact_curves(root: Root, sweep: str, trial_id: str) -> None:
    """Merge a trial's per-report curve files into one, deduplicated on step (latest write wins).

    The merged file sorts after every part it replaces and before any part written later; the parts are
    deleted only after it is in place, so a reader sees every step at least once (and deduplicates)."""
    fs, base, prefix = _fs(root)
    directory = _curve_dir(base, sweep, trial_id)
    files = _parquet_files(fs, directory)
    if len(files) <= 1:
        return
    merged = (_scan(files, CURVE_SCHEMA, prefix).unique(subset="step", keep="last", maintain_order=True)
              .sort("step").collect())
    newest = files[-1].rsplit("/", 1)[1].split("-", 1)[0]
    _write_parquet(fs, base, f"{directory}/{newest}-zcompact.parquet", merged)
    for path in files:
        if not path.endswith(f"/{newest}-zcompact.parquet"):
            fs.delete_file(path)


def replace_curve(root: Root, sweep: str, trial_id: str, rows: list[dict[str, Any]]) -> None:
    """Make `rows` the job's whole curve, dropping any other step stored in its folder. Only for an extended
    job (`uncompact` it first), whose old curve may hold an evaluation that the longer run does not make
    (at the old budget's end); its row is not final meanwhile, so a crash here is redone by `resume`."""
    fs, base, _ = _fs(root)
    written = write_curve_frame(root, sweep, trial_id, _curve_frame(sweep, trial_id, rows))
    _delete(fs, [f for f in _parquet_files(fs, _curve_dir(base, sweep, trial_id)) if f != written])


def uncompact(root: Root, sweep: str, trial_ids: set[str]) -> int:
    """Move these jobs' rows and curves out of the sweep's compacted files into their own files (as before
    `compact_sweep`), so that their rows can be replaced and their curves grow: what `extend` does first.
    One pass over the compacted files, however many jobs; idempotent. Returns how many rows moved."""
    if not trial_ids:
        return 0
    fs, base, prefix = _fs(root)
    wanted = sorted(trial_ids)
    moved = 0
    for table, schema in (("curves", CURVE_SCHEMA), ("trials", TRIAL_SCHEMA)):  # curves first, as compact_sweep
        directory = _table_dir(base, table, sweep)
        for path in [f for f in _parquet_files(fs, directory, recursive=False) if _WRITTEN.match(f.rsplit("/", 1)[-1])]:
            frame = _scan([path], schema, prefix).collect()
            leaving = frame.filter(pl.col("trial_id").is_in(wanted))
            if leaving.is_empty():
                continue
            for (trial_id,), part in leaving.group_by("trial_id"):
                if table == "curves":
                    write_curve_frame(root, sweep, trial_id, part)
                else:
                    _write_parquet(fs, base, _trial_path(base, sweep, trial_id), part.head(1))
                    moved += 1
            rest = frame.filter(~pl.col("trial_id").is_in(wanted))
            if rest.height:
                _write_parquet(fs, base, path, rest)  # same name: its place in write order is kept
            else:
                _delete(fs, [path])
    return moved


def compact_sweep(root: Root, sweep: str) -> None:
    """When a sweep ends: merge its FINAL trials' rows into one trial file and their curves into one curve
    file, so reading a 10,000-trial sweep opens two files, not 20,000. Trials still running or failed keep
    their own files. Safe to repeat and to run beside readers (they deduplicate while both copies exist)."""
    fs, base, prefix = _fs(root)
    trial_dir = _table_dir(base, 'trials', sweep)
    curve_dir = _table_dir(base, 'curves', sweep)
    trial_files = _parquet_files(fs, trial_dir, recursive=False)
    rows = _scan(trial_files, TRIAL_SCHEMA, prefix).unique(subset=list(TRIAL_KEY), keep="last").collect()
    final = rows.filter(pl.col("status").is_in(list(FINAL))).sort("trial_id")
    if final.is_empty():
        return
    final_ids = set(final["trial_id"].to_list())

    def merged(path: str, directory: str) -> bool:  # a compacted file, or a file of a final trial
        relative = path[len(directory) + 1:]
        return ("/" not in relative and _WRITTEN.match(relative) is not None) or relative.split("/")[0] in final_ids \
            or relative.removesuffix(".parquet") in final_ids

    curve_files = [f for f in _parquet_files(fs, curve_dir) if merged(f, curve_dir)]
    if curve_files:  # curves first: a final trial's curve files are deleted only once they are merged
        curves_merged = (_scan(curve_files, CURVE_SCHEMA, prefix)
                         .unique(subset=list(CURVE_KEY), keep="last", maintain_order=True)
                         .sort("trial_id", "step").collect())
        newest = max(_write_order(f)[0] for f in curve_files) or f"{time.time_ns():020d}"
        target = f"{curve_dir}/{newest}-sweep.parquet"
        _write_parquet(fs, base, target, curves_merged)
        _delete(fs, [f for f in curve_files if f != target])
        for trial_id in final_ids:
            _delete_empty_dir(fs, f"{curve_dir}/{trial_id}")
    target = f"{trial_dir}/{time.time_ns():020d}-sweep.parquet"
    _write_parquet(fs, base, target, final)
    _delete(fs, [f for f in trial_files if f != target and merged(f, trial_dir)])


def _delete(fs: pafs.FileSystem, paths: list[str]) -> None:
    for path in paths:
        try:
            fs.delete_file(path)
        except FileNotFoundError:  # another compaction got there first
            pass


def _delete_empty_dir(fs: pafs.FileSystem, path: str) -> None:
    if not isinstance(fs, pafs.LocalFileSystem):
        return  # object stores have no directories to leave behind
    try:
        os.rmdir(path)
    except OSError:  # not empty (a part arrived meanwhile) or already gone
        pass


# --- corrupt files: one line naming the file, or skipped with a warning (--skip-corrupt) ---

class CorruptFile(UserError):
    """A file under trials/ or curves/ that is not readable Parquet (truncated, empty, something else)."""


_SKIP_CORRUPT: ContextVar[Callable[[str], None] | None] = ContextVar("skip_corrupt", default=None)
_SKIPPED: ContextVar[set[str] | None] = ContextVar("skipped", default=None)


@contextmanager
def skipping_corrupt(warn: Callable[[str], None]) -> Iterator[None]:
    """Within this block readers leave out unreadable files, calling `warn` once per file with its line."""
    token, seen = _SKIP_CORRUPT.set(warn), _SKIPPED.set(set())
    try:
        yield
    finally:
        _SKIP_CORRUPT.reset(token)
        _SKIPPED.reset(seen)


def _unreadable(fs: pafs.FileSystem, path: str, full: bool = False) -> str | None:
    """Why `path` is not readable Parquet (its footer; with `full`, every page too), or None."""
    try:
        with fs.open_input_file(path) as source:
            if full:
                pq.read_table(source)
            else:
                pq.read_metadata(source)
    except FileNotFoundError:
        return None  # removed by a compaction meanwhile: not corrupt
    except (OSError, pa.ArrowException, ValueError) as error:
        return _one_line(error)[:120]
    return None


def corrupt_message(path: str, reason: str) -> str:
    return (f"{path}: not a readable Parquet file ({reason}); move it out of the results root (or restore it), "
            "or pass --skip-corrupt to read without it")


def find_corrupt(root: Root) -> str | None:
    """The one-line message for the first unreadable file under trials/ and curves/, or None. Called after
    a read failed: footers first (truncated, empty, not Parquet), then whole files."""
    fs, base, _ = _fs(root)
    files = _parquet_files(fs, f"{base}/trials") + _parquet_files(fs, f"{base}/curves")
    for full in (False, True):
        for path in files:
            reason = _unreadable(fs, path, full)
            if reason is not None:
                return corrupt_message(path, reason)
    return None


def _readable(files: list[str], fs: pafs.FileSystem) -> list[str]:
    """`files` without the unreadable ones when --skip-corrupt is on (each named once by a warning)."""
    warn = _SKIP_CORRUPT.get()
    if warn is None:
        return files
    kept, seen = [], _SKIPPED.get()
    for path in files:
        reason = _unreadable(fs, path)
        if reason is None:
            kept.append(path)
        elif seen is not None and path not in seen:
            seen.add(path)
            warn(f"skipped {path}: not a readable Parquet file ({reason})")
    return kept


# --- migration: every file carries the current schema, in the current layout ---

SCHEMA_MARK = ".groksweep-schema"  # <root>/.groksweep-schema: the schema fingerprint the root was migrated to


@cache
def _arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema polars writes for a table (what every file must carry)."""
    buffer = io.BytesIO()
    pl.DataFrame(schema=TRIAL_SCHEMA if table == "trials" else CURVE_SCHEMA).write_parquet(buffer)
    buffer.seek(0)
    return pq.read_schema(buffer).remove_metadata()


def schema_fingerprint() -> str:
    import hashlib

    text = f"{_arrow_schema('trials')}|{_arrow_schema('curves')}|layout-2"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def root_migrated(root: Root) -> bool:
    """True when the root's mark says it was migrated to this schema (or it holds no tables at all)."""
    fs, base, _ = _fs(root)
    try:
        with fs.open_input_stream(f"{base}/{SCHEMA_MARK}") as f:
            return f.read().decode().strip() == schema_fingerprint()
    except (FileNotFoundError, OSError):
        return not sweeps(root)


def mark_new_root(root: Root) -> None:
    """A root whose first tables are being written in the current layout gets the schema mark now, so that
    later commands do not take it for an old root and migrate it (call after `ensure_migrated`)."""
    fs, base, _ = _fs(root)
    if fs.get_file_info(f"{base}/{SCHEMA_MARK}").type == pafs.FileType.NotFound and root_migrated(root):
        mark_migrated(root)


def mark_migrated(root: Root) -> None:
    where = ResultsRoot.of(root)
    fs = where.fs
    fs.create_dir(where.base, recursive=True)
    with fs.open_output_stream(f"{where.base}/{SCHEMA_MARK}") as out:
        out.write(schema_fingerprint().encode())


def migrate_sweep(root: Root, sweep: str, spec_hash: str | None = None) -> list[str]:
    """Bring one sweep's files to the current layout and schema (call under its lease): a `sweep=<name>`
    folder is renamed to `<name>`, and each file whose schema is not the current one is rewritten with
    it (atomically, under the same name: its place in write order stays); old rows get `spec_hash` when
    given. Returns the paths rewritten or moved. An unreadable file stops it with CorruptFile."""
    fs, base, prefix = _fs(root)
    changed = []
    for table in ("trials", "curves"):
        legacy, target = f"{base}/{table}/{LEGACY}{sweep}", _table_dir(base, table, sweep)
        if fs.get_file_info(legacy).type == pafs.FileType.Directory:
            if fs.get_file_info(target).type == pafs.FileType.NotFound:
                fs.move(legacy, target)
            else:  # both (an older groksweep wrote after a partial migration): move file by file
                for path in _parquet_files(fs, legacy):
                    moved = target + path[len(legacy):]
                    fs.create_dir(moved.rsplit("/", 1)[0], recursive=True)
                    fs.move(path, moved)
                fs.delete_dir(legacy)
            changed.append(target)
        schema = TRIAL_SCHEMA if table == "trials" else CURVE_SCHEMA
        for path in _parquet_files(fs, target):
            try:
                with fs.open_input_file(path) as source:
                    current = pq.read_schema(source).remove_metadata()
            except (OSError, pa.ArrowException) as error:
                raise CorruptFile(corrupt_message(path, _one_line(error)[:120])) from None
            if current.equals(_arrow_schema(table)):
                continue
            frame = _scan([path], schema, prefix).collect()
            if table == "trials" and spec_hash is not None:
                frame = frame.with_columns(pl.col("spec_hash").fill_null(spec_hash))
            _write_parquet(fs, base, path, frame)
            changed.append(path)
    return changed


# --- readers ---

_WIDEN = pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast", datetime_cast=["nanosecond-downcast",
                                                                                      "convert-timezone"])


def lists_as_text(frame: pl.DataFrame) -> pl.DataFrame:
    """List columns as JSON array text (`[0.5,1.25]`; null elements `null`; a null list stays null), the
    documented form in CSV, which has no nested values; other columns unchanged."""
    return frame.with_columns(
        pl.format("[{}]", pl.col(name).list.eval(pl.element().cast(pl.String).fill_null("null")).list.join(","))
        .alias(name)
        for name, dtype in frame.schema.items() if isinstance(dtype, pl.List))


def _scan(files: list[str], schema: dict[str, pl.DataType], prefix: str | None) -> pl.LazyFrame:
    if files and _SKIP_CORRUPT.get() is not None:
        files = _readable(files, ResultsRoot.of(files[0] if prefix is None else prefix + files[0]).fs)
    if not files:
        return pl.LazyFrame(schema=schema)
    sources = files if prefix is None else [prefix + path for path in files]
    # `schema` fixes every dtype; `missing_columns="insert"` reads a column older files lack as null; files
    # written by other tools with narrower numbers (int32 steps, float32 metrics) are widened.
    return pl.scan_parquet(sources, schema=schema, missing_columns="insert", extra_columns="ignore",
                           cast_options=_WIDEN, hive_partitioning=False, glob=False)


def _table_files(root: Root, table: str, names: list[str] | None) -> tuple[list[str], str | None]:
    fs, base, prefix = _fs(root)
    if names is None:
        return _parquet_files(fs, f"{base}/{table}"), prefix
    known = sweeps(root)
    for name in names:
        if name not in known:
            raise unknown_sweep(name, root if root is not None else default_root(), known)
    return [f for name in names for f in _sweep_files(fs, base, table, name)], prefix


def trials(root: Root = None, sweeps: list[str] | None = None) -> pl.LazyFrame:
    """All trial rows (deduplicated on sweep, trial_id), with the documented dtypes. A lazy scan over the
    files present now: collect it soon (a later compaction may remove curve files it lists)."""
    files, prefix = _table_files(root, "trials", sweeps)
    return _scan(files, TRIAL_SCHEMA, prefix).unique(subset=list(TRIAL_KEY), keep="last", maintain_order=True)


def curves(root: Root = None, sweeps: list[str] | None = None) -> pl.LazyFrame:
    """All curve rows (deduplicated on sweep, trial_id, step; latest write wins), with the documented
    dtypes. Files are scanned in write order, so `keep="last"` keeps the newest value of a step."""
    files, prefix = _table_files(root, "curves", sweeps)
    clean, mixed, suspect_trials, suspect_sweeps = _split_by_overlap(files, f"{_fs(root)[1]}/curves")
    if not mixed:
        return _scan(clean, CURVE_SCHEMA, prefix)
    suspect = (pl.concat_str("sweep", pl.lit("/"), "trial_id").is_in(sorted(suspect_trials))
               | pl.col("sweep").is_in(sorted(suspect_sweeps)))
    return pl.concat([
        _scan(clean, CURVE_SCHEMA, prefix),
        _scan(mixed, CURVE_SCHEMA, prefix).filter(~suspect),
        _scan(mixed, CURVE_SCHEMA, prefix).filter(suspect)
        .unique(subset=list(CURVE_KEY), keep="last", maintain_order=True),
    ])


def _split_by_overlap(files: list[str], table_dir: str) -> tuple[list[str], list[str], set[str], set[str]]:
    """Deduplicating 10M rows costs 3x the memory and 8x the time of reading them, so deduplicate only the
    trials that can have a step in two files: several files in its folder, or a folder beside a sweep-level
    file (plus every trial of a sweep with two sweep-level files, left by concurrent compactions).
    Returns (files holding only unique rows, the other files in write order, suspect "sweep/trial_id"s,
    suspect sweeps)."""
    per_trial: dict[tuple[str, str], list[str]] = {}
    per_sweep: dict[str, list[str]] = {}
    for path in files:
        parts = path[len(table_dir) + 1:].split("/")
        sweep = parts[0].removeprefix(LEGACY)
        if len(parts) == 2:
            per_sweep.setdefault(sweep, []).append(path)
        else:
            per_trial.setdefault((sweep, parts[1]), []).append(path)
    suspect_sweeps = {sweep for sweep, paths in per_sweep.items() if len(paths) > 1}
    suspect_trials = {f"{sweep}/{trial}" for (sweep, trial), paths in per_trial.items()
                      if len(paths) > 1 or sweep in per_sweep}
    if not suspect_trials and not suspect_sweeps:
        return files, [], suspect_trials, suspect_sweeps
    clean = [f for (sweep, trial), paths in per_trial.items() for f in paths
             if f"{sweep}/{trial}" not in suspect_trials and sweep not in suspect_sweeps]
    clean_set = set(clean)
    mixed = [f for f in files if f not in clean_set]  # `files` is in write order
    return clean, mixed, suspect_trials, suspect_sweeps


def collect(build: Any, retries: int = 1000) -> pl.DataFrame:
    """Collect `build()` (a function returning a LazyFrame), listing files afresh if one vanished or was
    replaced mid-read (a compaction, a job's row turning final). Each retry lists anew, so it can only fail
    again if a writer keeps going: it retries for as long as every failure differs (a writer is making
    progress), and raises when the same failure comes three times in a row (a file listed but unreadable;
    polars' "out of specification" names no file, so two replacements in a row would read alike)."""
    previous, repeats = None, 0
    for attempt in range(retries + 1):
        try:
            frame = build()
            return frame.collect() if isinstance(frame, pl.LazyFrame) else frame
        except (FileNotFoundError, pl.exceptions.ComputeError) as error:
            repeats = repeats + 1 if str(error) == previous else 0
            if attempt == retries or not _looks_missing(error) or repeats == 2:
                raise
            previous = str(error)
            time.sleep(min(0.01 * (attempt + 1), 0.2))
    raise AssertionError("unreachable")


def _looks_missing(error: Exception) -> bool:
    """A file that vanished (compacted away) or was replaced (a job's row file: `running`, then final)
    between polars' planning, which reads each file's footer, and its reading the data by path again."""
    text = str(error).lower()
    return (isinstance(error, FileNotFoundError) or "no such file" in text or "not found" in text
            or "out of specification" in text)


def query(sql: str, root: Root = None) -> pl.DataFrame:
    """Polars SQL over the tables `trials` and `curves`; UserError on bad SQL or unknown columns."""

    def build() -> pl.DataFrame:
        context = pl.SQLContext(trials=trials(root), curves=curves(root))
        return context.execute(sql, eager=False).collect()

    try:
        return collect(build)
    except pl.exceptions.PolarsError as error:
        corrupt = find_corrupt(root)
        if corrupt is not None:
            raise CorruptFile(corrupt) from None
        raise UserError(f"query: {_one_line(error)}") from None
    except (ValueError, TypeError) as error:  # polars raises some SQL parse errors as plain Python errors
        if isinstance(error, UserError):
            raise
        raise UserError(f"query: {_one_line(error)}") from None


def _one_line(error: Exception) -> str:
    """The first meaningful line of a polars error (they append plan dumps and hints)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def job_curve(root: Root, sweep: str, trial_id: str) -> pl.DataFrame:
    """One job's curve from its own folder (not the sweep's compacted file), deduplicated on step, sorted:
    cheap at any sweep size, for the driver while the sweep runs."""
    fs, base, prefix = _fs(root)
    files = _parquet_files(fs, _curve_dir(base, sweep, trial_id))
    return (_scan(files, CURVE_SCHEMA, prefix).unique(subset="step", keep="last", maintain_order=True)
            .sort("step").collect())
