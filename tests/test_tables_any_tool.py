"""The result tables open the obvious way in pandas, pyarrow, DuckDB and polars, with the same rows and
values as `groksweep query`; `sweep` is a string everywhere; older files are migrated, never lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from orchestrator import store
from orchestrator.cli import app

runner = CliRunner()


def _write_sweep(root: Path, sweep: str, n: int, compact: bool) -> None:
    for i in range(n):
        trial_id = f"c{i:04d}-s0-abc{i:03d}"
        censored = i % 3 == 0
        events = {"steps_to_memorize": 100, "steps_to_generalize": None if censored else 400 + 10 * i,
                  "steps_to_generalize_95": None if censored else 380, "grokking_delay": None if censored else 300}
        store.write_curve_rows(root, sweep, trial_id, [{"step": s, "train_acc": 0.5 + s / 1000, "val_acc": s / 1000,
                                                         "train_loss": 1.0 / s, "val_loss": 2.0 / s}
                                                        for s in (100, 200, 300)])
        store.compact_curves(root, sweep, trial_id)
        status = store.RUNNING if i == n - 1 else store.COMPLETED
        store.write_trial_row(root, store.trial_row(
            sweep, trial_id, {"preset": "tiny", "weight_decay": 0.1 * (i + 1), "seed": 0}, status, steps_run=300,
            events=events, censored=censored, final_metrics={"val_acc": 0.3, "train_acc": 0.8},
            started_at=1_700_000_000 + i, ended_at=None if status == store.RUNNING else 1_700_000_100 + i,
            optuna_trial=i if i % 2 else None, spec_hash="ab" * 32))
    if compact:
        store.compact_sweep(root, sweep)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Several sweeps: one compacted, one named like a number (Hive inference would make it an int), one
    left as per-job files with a running job."""
    root = tmp_path_factory.mktemp("anytool") / "results"
    _write_sweep(root, "alpha", 4, compact=True)
    _write_sweep(root, "2024", 3, compact=True)
    _write_sweep(root, "zeta", 3, compact=False)
    return root


def _same(frame: pl.DataFrame, want: pl.DataFrame, keys: list[str]) -> None:
    schema = dict(want.schema)
    got = frame.select([pl.col(name).cast(dtype) for name, dtype in schema.items()]).sort(keys)
    assert_frame_equal(got, want.sort(keys))


@pytest.mark.parametrize("table,keys", [("trials", ["sweep", "trial_id"]), ("curves", ["sweep", "trial_id", "step"])])
def test_every_tool_reads_the_same_rows(root: Path, table: str, keys: list[str]) -> None:
    want = store.query(f"select * from {table}", root)
    assert want.height > 0 and want["sweep"].n_unique() == 3
    pandas_frame = pd.read_parquet(root / table)
    assert pd.api.types.is_string_dtype(pandas_frame["sweep"])
    _same(pl.from_pandas(pandas_frame), want, keys)
    arrow = ds.dataset(root / table, partitioning="hive").to_table()
    assert str(arrow.schema.field("sweep").type) in ("string", "large_string")
    _same(pl.from_arrow(arrow), want, keys)
    duck = duckdb.sql(f"select * from read_parquet('{root}/{table}/**/*.parquet', hive_partitioning = true)")
    assert dict(zip(duck.columns, map(str, duck.types), strict=True))["sweep"] == "VARCHAR"
    _same(duck.pl(), want, keys)
    polars_frame = pl.scan_parquet(root / table, hive_partitioning=True).collect()
    assert polars_frame.schema["sweep"] == pl.String
    _same(polars_frame, want, keys)


def _old_schema(root: Path, sweep: str) -> None:
    """A sweep written before 0.2: Hive `sweep=` folders, no provenance columns."""
    _write_sweep(root, sweep, 2, compact=True)
    for table in ("trials", "curves"):
        new, old = root / table / sweep, root / table / f"sweep={sweep}"
        new.rename(old)
        for path in old.rglob("*.parquet"):
            frame = pl.read_parquet(path)
            frame.drop([c for c in ("spec_hash", "source_revision") if c in frame.columns]).write_parquet(path)


def test_old_files_are_migrated_first_or_last(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _old_schema(root, "aaa-old")  # sorts before the current sweep
    _write_sweep(root, "mid", 2, compact=True)
    _old_schema(root, "zzz-old")  # ... and after it
    before = store.query("select sweep, trial_id, spec_hash from trials", root)
    assert before.height == 6  # groksweep reads the old layout and schema as they are
    result = runner.invoke(app, ["migrate", "--results", str(root)])
    assert result.exit_code == 0, result.output
    assert not list(root.glob("*/sweep=*")) and (root / "trials" / "aaa-old").is_dir()
    after = pd.read_parquet(root / "trials")
    assert {"spec_hash", "source_revision"} <= set(after.columns) and len(after) == 6
    assert after.loc[after["sweep"] == "mid", "spec_hash"].notna().all()
    duck = duckdb.sql(f"select count(*), count(distinct sweep) from read_parquet('{root}/trials/**/*.parquet')")
    assert duck.fetchall() == [(6, 3)]
    assert duckdb.sql(f"select count(*) from read_parquet('{root}/curves/**/*.parquet')").fetchall() == [(18,)]
    assert runner.invoke(app, ["migrate", "--results", str(root)]).output.strip().endswith("is up to date")


def test_a_writer_migrates_before_it_writes(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _old_schema(root, "aaa-old")
    result = runner.invoke(app, ["train", "--preset", "tiny", "--set", "max_steps=40", "--set", "eval_every=20",
                                 "--results", str(root), "--name", "new"])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(root / "trials")
    assert set(frame["sweep"]) == {"aaa-old", "new"} and "source_revision" in frame.columns


def test_reference_study_is_current(tmp_path: Path) -> None:
    """The shipped study is in the current layout and schema: every tool sees all of its columns."""
    reference = Path(__file__).parent.parent / "results" / "reference"
    copy = tmp_path / "reference"
    shutil.copytree(reference, copy)
    assert store.root_migrated(copy)
    assert list(pd.read_parquet(copy / "trials").columns) == list(store.TRIAL_SCHEMA)
