"""The Parquet result store: rows, atomic/idempotent writes, curve dedup and compaction, schema evolution,
concurrent readers. Real Parquet files, real polars scans."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import UserError, store
from trainers.config import FIELD_NAMES, TrainConfig, preset
from trainers.metrics import EVENTS, METRICS

REPO = Path(__file__).resolve().parents[1]


def _completed(sweep: str, trial_id: str, **config) -> dict:
    return store.trial_row(sweep, trial_id, {"preset": "tiny", **config}, store.COMPLETED, steps_run=500,
                           events={"steps_to_memorize": 100, "steps_to_generalize": 400,
                                   "steps_to_generalize_95": 390, "grokking_delay": 300},
                           censored=False, final_metrics={"val_acc": 1.0, "train_acc": 1.0}, wall_s=2.5,
                           device="cpu", started_at=1_700_000_000, ended_at=1_700_000_010)


def test_trial_row_has_every_column_named_like_the_config(tmp_path):
    row = _completed("s", "t0", weight_decay=0.3)
    assert list(row) == list(store.TRIAL_SCHEMA)
    assert set(FIELD_NAMES) | set(EVENTS) | set(METRICS) <= set(row)
    tiny = preset("tiny", weight_decay=0.3)
    assert {name: row[name] for name in FIELD_NAMES} == tiny.to_dict()
    assert row["torch_version"] and row["polars_version"] == pl.__version__ and row["host"]
    assert row["started_at"] == dt.datetime.fromtimestamp(1_700_000_000, tz=dt.timezone.utc)
    # a TrainConfig works as well as a dict, and the row round-trips through Parquet with the schema dtypes
    assert store.trial_row("s", "t1", tiny, store.RUNNING)["weight_decay"] == 0.3
    assert store.write_trial_row(tmp_path, row)
    frame = store.trials(tmp_path).collect()
    assert frame.schema == pl.Schema(store.TRIAL_SCHEMA)
    assert frame.row(0, named=True) == row


def test_schema_is_documented_column_by_column():
    readme = (REPO / "results" / "README.md").read_text()
    for table, schema in (("trials", store.TRIAL_SCHEMA), ("curves", store.CURVE_SCHEMA)):
        section = readme.split(f"## `{table}`", 1)[1].split("\n## ", 1)[0]
        rows = dict(re.findall(r"^\| (\w+) \| ([\w(), ]+) \|", section, flags=re.M))
        rows.pop("column")  # the header
        assert list(rows) == list(schema), table
        for name, dtype in schema.items():
            expected = "Datetime(us, UTC)" if dtype == store.TIMESTAMP else str(dtype)
            assert rows[name] == expected, name


def test_final_row_is_never_overwritten(tmp_path):
    running = store.trial_row("s", "t0", {}, store.RUNNING, started_at=1_700_000_000)
    assert store.write_trial_row(tmp_path, running)
    done = store.trial_row("s", "t0", {}, store.COMPLETED, steps_run=300, ended_at=1_700_000_100)
    assert store.write_trial_row(tmp_path, done)
    for late in (store.trial_row("s", "t0", {}, store.RUNNING),
                 store.trial_row("s", "t0", {}, store.FAILED, error="boom"),
                 store.trial_row("s", "t0", {}, store.COMPLETED, steps_run=999)):
        assert store.write_trial_row(tmp_path, late) is False
    row = store.trials(tmp_path).collect().row(0, named=True)
    assert (row["status"], row["steps_run"], row["error"]) == (store.COMPLETED, 300, None)
    assert row["started_at"] == dt.datetime.fromtimestamp(1_700_000_000, tz=dt.timezone.utc)  # kept from running
    # a failed trial is not final: a retry may replace it
    assert store.write_trial_row(tmp_path, store.trial_row("s", "t1", {}, store.FAILED, error="oom"))
    assert store.write_trial_row(tmp_path, store.trial_row("s", "t1", {}, store.COMPLETED))
    files = [p.name for p in (tmp_path / "trials" / "s").iterdir()]
    assert sorted(files) == ["t0.parquet", "t1.parquet"]  # no temp files left behind


def test_mark_interrupted_turns_only_running_rows_interrupted(tmp_path):
    for trial_id, status in (("a", store.RUNNING), ("b", store.RUNNING), ("done", store.COMPLETED),
                             ("failed", store.FAILED)):
        store.write_trial_row(tmp_path, store.trial_row("s", trial_id, {}, status, started_at=1.0))
    store.compact_sweep(tmp_path, "s")  # "done" now lives in the sweep's compacted files
    assert store.mark_interrupted(tmp_path, "s") == ["a", "b"]
    rows = store.trials(tmp_path).collect().sort("trial_id")
    assert rows["status"].to_list() == [store.INTERRUPTED, store.INTERRUPTED, store.COMPLETED, store.FAILED]
    assert rows["started_at"][0] is not None and rows["ended_at"][0] is not None
    assert store.mark_interrupted(tmp_path, "s") == [] and store.mark_interrupted(tmp_path, "other") == []


def test_rows_never_keep_terminal_colour_codes(tmp_path):
    row = store.trial_row("s", "t", {}, store.FAILED, error="\x1b[36mray::train\x1b[0m ValueError: boom")
    assert row["error"] == "ray::train ValueError: boom"


def _steps(frame: pl.DataFrame) -> dict[int, float]:
    return dict(zip(frame["step"].to_list(), frame["val_acc"].to_list(), strict=True))


def test_curves_are_deduplicated_latest_write_wins_and_compacted(tmp_path):
    write = store.write_curve_rows
    write(tmp_path, "s", "t0", [{"step": s, "val_acc": s / 100, "extra": 1} for s in (10, 20, 30, 40)])
    # a restore from the checkpoint at step 20 re-sends 30 and 40 (different values), then continues
    write(tmp_path, "s", "t0", [{"step": 30, "val_acc": 0.9}])
    write(tmp_path, "s", "t0", [{"step": 40, "val_acc": 0.95}, {"step": 50, "val_acc": 1.0}])
    write(tmp_path, "s", "t1", [{"step": 10, "val_acc": 0.5}])
    expected = {10: 0.1, 20: 0.2, 30: 0.9, 40: 0.95, 50: 1.0}
    before = store.curves(tmp_path).filter(pl.col("trial_id") == "t0").sort("step").collect()
    assert _steps(before) == expected
    store.compact_curves(tmp_path, "s", "t0")
    folder = tmp_path / "curves" / "s" / "t0"
    assert [p.name.endswith("-zcompact.parquet") for p in folder.iterdir()] == [True]
    after = store.curves(tmp_path).sort("trial_id", "step").collect()
    assert _steps(after.filter(pl.col("trial_id") == "t0")) == expected
    assert after.height == 6 and after.schema == pl.Schema(store.CURVE_SCHEMA)
    # a step re-sent after compaction still replaces the compacted value
    write(tmp_path, "s", "t0", [{"step": 50, "val_acc": 0.97}])
    assert _steps(store.curves(tmp_path, ["s"]).filter(pl.col("trial_id") == "t0").collect())[50] == 0.97
    store.compact_curves(tmp_path, "s", "t0")
    assert len(list(folder.iterdir())) == 1
    assert _steps(store.curves(tmp_path).filter(pl.col("trial_id") == "t0").collect())[50] == 0.97


def test_compact_sweep_merges_final_trials_into_one_file_per_table(tmp_path):
    for i in range(6):
        status = store.RUNNING if i == 5 else store.COMPLETED
        assert store.write_trial_row(tmp_path, store.trial_row("s", f"t{i}", {"seed": i}, status, steps_run=20))
        store.write_curve_rows(tmp_path, "s", f"t{i}", [{"step": 10, "val_acc": 0.1}])
        store.write_curve_frame(tmp_path, "s", f"t{i}", pl.DataFrame({"step": [20], "val_acc": [i / 10], "x": [1]}))
    before_trials = store.trials(tmp_path).sort("trial_id").collect()
    before_curves = store.curves(tmp_path).sort("trial_id", "step").collect()
    store.compact_sweep(tmp_path, "s")
    trial_files = sorted(p.name for p in (tmp_path / "trials" / "s").iterdir())
    assert len(trial_files) == 2 and trial_files[0].endswith("-sweep.parquet") and trial_files[1] == "t5.parquet"
    curve_entries = sorted(p.name for p in (tmp_path / "curves" / "s").iterdir())
    assert len(curve_entries) == 2 and curve_entries[0].endswith("-sweep.parquet") and curve_entries[1] == "t5"
    assert store.trials(tmp_path).sort("trial_id").collect().equals(before_trials)
    assert store.curves(tmp_path).sort("trial_id", "step").collect().equals(before_curves)
    # a compacted final row is still final; the running trial finishes and a second compaction takes it in
    assert store.write_trial_row(tmp_path, store.trial_row("s", "t0", {}, store.FAILED)) is False
    assert store.write_trial_row(tmp_path, store.trial_row("s", "t5", {"seed": 5}, store.COMPLETED, steps_run=20))
    store.write_curve_rows(tmp_path, "s", "t0", [{"step": 20, "val_acc": 0.5}])  # a re-sent step after compaction
    store.compact_sweep(tmp_path, "s")
    assert len(list((tmp_path / "trials" / "s").iterdir())) == 1
    assert len(list((tmp_path / "curves" / "s").iterdir())) == 1
    trials = store.trials(tmp_path).collect()
    assert trials.height == 6 and set(trials["status"]) == {store.COMPLETED}
    curves = store.curves(tmp_path).collect()
    assert curves.height == 12 and _steps(curves.filter(pl.col("trial_id") == "t0"))[20] == 0.5
    # two concurrent compactions can leave two sweep-level copies for a moment: still no duplicate
    (sweep_file,) = (tmp_path / "curves" / "s").iterdir()
    (sweep_file.parent / "00000000000000000001-sweep.parquet").write_bytes(sweep_file.read_bytes())
    assert store.curves(tmp_path).collect().height == 12
    with pytest.raises(UserError, match="reserved"):
        store.trial_row("s", "00000000000000000001-sweep", {}, store.RUNNING)


def test_file_uri_root_and_sweep_dir(tmp_path):
    uri = f"file://{tmp_path}"
    assert store.write_trial_row(uri, _completed("s", "t0"))
    store.write_curve_rows(uri, "s", "t0", [{"step": 10, "val_acc": 0.5}])
    assert store.trials(str(tmp_path)).collect().height == 1
    assert store.curves(uri).collect().height == 1
    assert store.sweeps(uri) == ["s"]
    assert store.sweep_dir(tmp_path, "s") == str(tmp_path / "sweeps" / "s")


def test_old_partitions_without_newer_columns_still_scan(tmp_path):
    """A file written before a column existed reads with that column null, and the dtypes stay fixed."""
    assert store.write_trial_row(tmp_path, _completed("new", "t0"))
    old_columns = [c for c in store.TRIAL_SCHEMA if c not in ("softmax_collapse", "groksweep_version", "error")]
    old = pl.DataFrame([_completed("old", "t0")], schema=store.TRIAL_SCHEMA).select(old_columns)
    (tmp_path / "trials" / "sweep=old").mkdir(parents=True)
    old.write_parquet(tmp_path / "trials" / "sweep=old" / "t0.parquet")
    # an old curve file lacking two metrics, with int32 steps
    folder = tmp_path / "curves" / "sweep=old" / "t0"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"sweep": ["old"], "trial_id": ["t0"], "step": pa.array([10], pa.int32()),
                             "val_acc": [0.5], "train_acc": [1.0]}), folder / "00000000000000000001-part.parquet")
    store.write_curve_rows(tmp_path, "new", "t0", [{"step": 10, "val_acc": 0.7, "softmax_collapse": 0.1}])

    trials = store.trials(tmp_path).sort("sweep").collect()
    assert trials.schema == pl.Schema(store.TRIAL_SCHEMA)
    assert trials["sweep"].to_list() == ["new", "old"]
    assert trials["error"].to_list() == [None, None]
    assert trials["softmax_collapse"].to_list() == [None, None]
    assert trials["groksweep_version"].to_list()[1] is None
    curves = store.curves(tmp_path).sort("sweep").collect()
    assert curves.schema == pl.Schema(store.CURVE_SCHEMA)
    assert curves["softmax_collapse"].to_list() == [0.1, None]
    assert store.query("SELECT count(*) AS n FROM trials WHERE error IS NULL", tmp_path)["n"][0] == 2


def test_unknown_sweep_and_bad_names(tmp_path):
    assert store.write_trial_row(tmp_path, _completed("s", "t0"))
    with pytest.raises(UserError, match="no sweep named 'nope'.*sweeps there: s"):
        store.trials(tmp_path, ["nope"])
    with pytest.raises(UserError, match="sweep"):
        store.trial_row("../escape", "t0", {}, store.RUNNING)
    with pytest.raises(ValueError, match="status"):
        store.trial_row("s", "t0", {}, "done")
    assert store.trials(tmp_path / "empty").collect().height == 0  # an empty root is empty tables


WRITER = textwrap.dedent("""
    import sys
    from orchestrator import store
    root, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):
        tid = f"t{i:03d}"
        store.write_trial_row(root, store.trial_row("live", tid, {"seed": i}, store.RUNNING))
        for start in (10, 60, 40, 90):  # the third batch re-sends steps 40..80 (a restore)
            rows = [{"step": s, "val_acc": s / 1000, "train_acc": 1.0} for s in range(start, start + 50, 10)]
            store.write_curve_rows(root, "live", tid, rows)
        store.write_trial_row(root, store.trial_row("live", tid, {"seed": i}, store.COMPLETED, steps_run=130))
        store.compact_curves(root, "live", tid)
        if i % 10 == 9:
            store.compact_sweep(root, "live")
""")


def test_concurrent_reader_sees_no_partial_file_and_no_duplicate(tmp_path):
    n = 40
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(n)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    reads, seen_partial_progress = 0, False
    try:
        while True:
            finished = writer.poll() is not None
            trials = store.collect(lambda: store.trials(tmp_path))
            curves = store.collect(lambda: store.curves(tmp_path))
            reads += 1
            assert trials.select("sweep", "trial_id").is_duplicated().sum() == 0
            assert curves.select("sweep", "trial_id", "step").is_duplicated().sum() == 0
            assert set(trials["status"].to_list()) <= {store.RUNNING, store.COMPLETED}
            if 0 < trials.height < n:
                seen_partial_progress = True
            # every curve file read is whole: steps per trial form a contiguous run from 10
            for _, steps in curves.group_by("trial_id").agg(pl.col("step").sort()).iter_rows():
                assert steps == list(range(10, 10 + 10 * len(steps), 10))
            if finished:
                break
            time.sleep(0.01)
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert seen_partial_progress and reads > 3
    final = store.curves(tmp_path).collect()
    assert final.height == n * 13 and trials.height == n
    assert (final.filter(pl.col("step") == 70)["val_acc"] == 0.07).all()
    assert not list(tmp_path.rglob(".*.tmp"))


def test_store_imports_neither_ray_nor_torch():
    code = "import sys, orchestrator.store, orchestrator.studies, orchestrator.plots; " \
           "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_trial_row_accepts_a_validated_config_unchanged():
    config = TrainConfig(weight_decay=0.0, batch_size=None)
    row = store.trial_row("s", "t", config, store.RUNNING)
    assert row["weight_decay"] == 0.0 and row["batch_size"] is None and row["status"] == store.RUNNING


def test_collect_reads_again_when_a_file_is_replaced_under_polars(tmp_path):
    """polars' lazy scan reads each file's footer when it plans and the data by path when it runs: a job's
    row file replaced in between (its `running` row turning final, by a rename) reads as out of
    specification. store.collect lists and reads again; a file that stays unreadable still raises."""
    path = tmp_path / "row.parquet"
    pl.DataFrame({"trial_id": ["a"], "status": ["running"]}).write_parquet(path)
    stale = pl.scan_parquet(tmp_path)
    stale.collect_schema()  # planned against the running row's file
    pl.DataFrame({"trial_id": ["a"], "status": ["completed"], "steps_run": [400]}).write_parquet(tmp_path / "new")
    os.replace(tmp_path / "new", path)
    with pytest.raises(pl.exceptions.ComputeError, match="out of specification"):
        stale.collect()
    builds = iter([stale, pl.scan_parquet(tmp_path)])
    assert store.collect(lambda: next(builds))["status"].to_list() == ["completed"]

    path.write_bytes(b"PAR1 not parquet at all")
    with pytest.raises(pl.exceptions.PolarsError):  # the same failure twice: raised (then reported as corrupt)
        store.collect(lambda: pl.scan_parquet(tmp_path))
