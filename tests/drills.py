"""Helpers for the drills: start a CLI driver in its own process group, wait on conditions, kill it and
every process it started (by PID, from /proc), and check a sweep's invariants."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import yaml
from typer.testing import CliRunner

from orchestrator import store
from orchestrator.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def start_cli(*args: str, log: Path | None = None) -> subprocess.Popen:
    """`groksweep ARGS` as a driver process of its own (its own process group: Ray's head processes join it),
    its output (stdout and stderr) to the file `log` (a pipe nobody reads would fill and block it)."""
    out = subprocess.DEVNULL if log is None else open(log, "w")  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env={**os.environ, "TERM": "dumb", "COLUMNS": "200"})
    finally:
        if log is not None:
            out.close()


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid`, from /proc (ppid links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_driver(driver: subprocess.Popen) -> None:
    """SIGKILL the driver and the Ray it started (its process group), then wait for every process it had
    started (Ray's workers have their own process groups and outlive it briefly), by PID."""
    doomed = descendants(driver.pid) | {driver.pid}
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    driver.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in doomed) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in doomed:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def rows(root, name: str) -> pl.DataFrame:
    if name not in store.sweeps(root):
        return pl.DataFrame(schema=store.TRIAL_SCHEMA)
    return store.collect(lambda: store.trials(root, [name]).sort("trial_id"))


def curve_steps(root, sweep: str) -> dict[str, list[int]]:
    frame = store.collect(lambda: store.curves(root, [sweep]).select("trial_id", "step").sort("trial_id", "step"))
    return {tid: group["step"].to_list() for (tid,), group in frame.group_by("trial_id", maintain_order=True)}


def assert_sweep_whole(root, name: str, n_jobs: int, eval_every: int = 10) -> pl.DataFrame:
    """The invariants every drill ends with: `check` exits 0, one ended row per owed job, each with its
    spec_hash, no duplicate row or step, every completed job's curve from step 0 to its last step without a
    gap (and with the evaluation at its budget's end where that is off the grid)."""
    result = runner.invoke(app, ["check", name, "--results", str(root)])
    assert result.exit_code == 0, result.output
    table = rows(root, name)
    assert table.height == n_jobs == table["trial_id"].n_unique()
    assert set(table["status"]) <= set(store.ENDED)
    assert table["spec_hash"].null_count() == 0  # every row says which spec produced it, batched ones too
    assert store.raw_trial_ids(root, name).height == n_jobs  # compacted: one stored row each
    assert store.raw_curve_duplicates(root, name).height == 0
    steps = curve_steps(root, name)
    for row in table.filter(pl.col("status") == store.COMPLETED).iter_rows(named=True):
        expected = list(range(0, row["steps_run"] + 1, eval_every))
        if row["steps_run"] % eval_every and row["steps_run"] == row["max_steps"]:
            expected.append(row["steps_run"])  # a budget off the evaluation grid ends with one more evaluation
        assert steps[row["trial_id"]] == expected, row["trial_id"]
    return table
