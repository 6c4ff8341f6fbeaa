"""The per-sweep writer lease: refusal, takeover of dead or silent holders, the takeover race, heartbeats,
readers. Real files, real processes (SIGKILL included); every wait is on a condition."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from orchestrator import UserError, lease

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
OTHER_HOST = "some-other-host.invalid"


def _wait(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def _python(code: str, *args: str, **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, env=ENV,
                            text=True, **kwargs)


def _write_record(directory: Path, generation: int, **fields: Any) -> dict[str, Any]:
    """A lease file written by hand (as some other process would have left it)."""
    now = time.time()
    record = {"token": f"hand{generation}", "generation": generation, "host": socket.gethostname(),
              "pid": os.getpid(), "pid_start": lease._pid_start(os.getpid()), "command": "by hand",
              "started_at": now, "heartbeat_at": now, "released": False, **fields}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"lease.{generation:06d}.json").write_text(json.dumps(record))
    return record


def _dead_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale(kind: str) -> dict[str, Any]:
    """Fields of a record whose holder is gone, in each of the ways a holder can be judged gone."""
    if kind == "reused pid":  # our own pid, but started at another time: the pid was reused
        return {"pid_start": (lease._pid_start(os.getpid()) or 0) + 1}
    if kind == "dead pid":
        return {"pid": _dead_pid()}
    return {"host": OTHER_HOST, "pid": 4242, "heartbeat_at": time.time() - lease.STALE_AFTER_S - 35}


def test_second_acquire_is_refused_until_release(tmp_path):
    d = tmp_path / "sweeps" / "grok1"
    notices: list[str] = []
    first = lease.acquire(str(d), "run grok1", notice=notices.append)
    assert [p.name for p in d.iterdir()] == ["lease.000001.json"]
    with pytest.raises(lease.LeaseHeld) as refused:
        lease.acquire(str(d), "resume grok1", notice=notices.append)
    message = str(refused.value)
    assert isinstance(refused.value, UserError) and "\n" not in message
    assert message.startswith("sweep 'grok1' is being written by ")
    assert f"pid {os.getpid()} on host {socket.gethostname()} (command: run grok1, since " in message
    assert "last heartbeat 0 s ago); wait for it to end, or stop that process" in message
    assert refused.value.holder == first.record
    first.release()
    first.release()  # idempotent
    assert lease.current(str(d)).released
    with lease.acquire(str(d), "resume grok1", name="nice name", notice=notices.append) as second:
        assert second.record.generation == 2 and not second.lost
        assert second.directory == str(d)
        with pytest.raises(lease.LeaseHeld, match="^sweep 'nice name' is being written by .*command: resume grok1"):
            lease.acquire(str(d), "third", name="nice name")
    assert notices == []  # a released lease is taken without a takeover
    assert [p.name for p in d.iterdir()] == ["lease.000002.json"]  # lower generations are cleaned up


def test_with_block_releases_on_exceptions_and_keyboard_interrupt(tmp_path):
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), lease.acquire(str(tmp_path), "run") as held:
            raise error()
        assert lease.current(str(tmp_path)).released
        assert lease.current(str(tmp_path)).token == held.record.token
        assert lease.live_holder(str(tmp_path)) is None


SECOND_WRITER = """
    import sys
    from orchestrator import lease
    try:
        lease.acquire(sys.argv[1], "second")
    except lease.LeaseHeld as error:
        print(error, file=sys.stderr)
        sys.exit(2)
"""


def test_second_writer_in_another_process_is_refused(tmp_path):
    with lease.acquire(str(tmp_path / "s"), "first"):
        proc = _python(SECOND_WRITER, str(tmp_path / "s"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, (out, err)
    assert err.count("\n") == 1
    assert f"sweep 's' is being written by pid {os.getpid()} on host" in err and "(command: first, " in err


HOLDER = """
    import sys, time
    from orchestrator import lease
    held = lease.acquire(sys.argv[1], "train doomed")
    print("acquired", flush=True)
    time.sleep(120)
"""


def test_a_sigkilled_holder_is_taken_over(tmp_path):
    d = str(tmp_path / "s")
    proc = _python(HOLDER, d, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "acquired\n"
        holder = _wait(lambda: lease.live_holder(d), what="the holder's lease")
        assert holder.pid == proc.pid and holder.command == "train doomed"
        with pytest.raises(lease.LeaseHeld, match=f"pid {proc.pid} "):
            lease.acquire(d, "resume s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert lease.live_holder(d) is None and not lease.current(d).released
    notices: list[str] = []
    with lease.acquire(d, "resume s", notice=notices.append) as held:
        assert held.record.generation == 2
    assert notices == [f"took over the lease of sweep 's' from pid {proc.pid} on host {socket.gethostname()} "
                       "(command: train doomed, that process is gone)"]


RACER = """
    import os, sys, time
    from pathlib import Path
    from orchestrator import lease
    directory, barrier, out, index = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    (out / f"ready.{index}").touch()
    while not barrier.exists():
        time.sleep(0.0002)
    notices = []
    try:
        held = lease.acquire(directory, f"racer {index}", notice=notices.append)
    except lease.LeaseHeld as error:
        result = f"held {error}"
    else:
        result = "won " + " | ".join(notices)
    (out / f".result.{index}").write_text(result)
    os.replace(out / f".result.{index}", out / f"result.{index}")
    if result.startswith("won "):
        while not (out / "quit").exists():
            time.sleep(0.005)
        held.release()
"""


@pytest.mark.parametrize("round_", range(6))
def test_racing_takeovers_of_one_stale_lease_have_exactly_one_winner(tmp_path, round_):
    n = 4
    d, out = tmp_path / "s", tmp_path / "out"
    out.mkdir()
    kind = ("reused pid", "dead pid", "silent host")[round_ % 3]
    _write_record(d, 1, command="crashed", **_stale(kind))
    procs = [_python(RACER, str(d), str(tmp_path / "go"), str(out), str(i)) for i in range(n)]
    try:
        _wait(lambda: all((out / f"ready.{i}").exists() for i in range(n)), 30, "the racers")
        (tmp_path / "go").touch()
        _wait(lambda: all((out / f"result.{i}").exists() for i in range(n)), 30, "the results")
        results = [(out / f"result.{i}").read_text() for i in range(n)]
        winners = [i for i, result in enumerate(results) if result.startswith("won ")]
        assert len(winners) == 1, results
        winner = procs[winners[0]].pid
        assert "took over the lease of sweep 's' from pid " in results[winners[0]]
        assert ("that process is gone" if kind != "silent host" else "no heartbeat for 95 s") in results[winners[0]]
        for i, result in enumerate(results):
            if i != winners[0]:
                assert result.startswith(f"held sweep 's' is being written by pid {winner} "), result
        assert lease.live_holder(str(d)).pid == winner
    finally:
        (out / "quit").touch()
        for proc in procs:
            proc.wait(timeout=30)
    assert [proc.returncode for proc in procs] == [0] * n
    assert sorted(p.name for p in d.iterdir()) == ["lease.000002.json"]  # no temp files, stale one cleaned up
    assert lease.current(str(d)).released and lease.current(str(d)).pid == winner


def test_records_from_another_host_live_by_heartbeat(tmp_path):
    d = tmp_path / "s"
    _write_record(d, 1, host=OTHER_HOST, pid=4242, command="run s",
                  heartbeat_at=time.time() - lease.STALE_AFTER_S + 20)
    assert lease.live_holder(str(d)).host == OTHER_HOST
    with pytest.raises(lease.LeaseHeld, match=f"pid 4242 on host {OTHER_HOST} .*last heartbeat 40 s ago"):
        lease.acquire(str(d), "resume s")
    _write_record(d, 2, host=OTHER_HOST, pid=4242, command="run s", heartbeat_at=time.time() - lease.STALE_AFTER_S - 35)
    assert lease.live_holder(str(d)) is None
    notices: list[str] = []
    with lease.acquire(str(d), "resume s", notice=notices.append) as held:
        assert held.record.generation == 3
    assert notices == [f"took over the lease of sweep 's' from pid 4242 on host {OTHER_HOST} "
                       "(command: run s, no heartbeat for 95 s)"]


def test_heartbeat_renews_and_a_takeover_stops_the_old_holder(tmp_path):
    d = tmp_path / "s"
    notices: list[str] = []
    held = lease.acquire(str(d), "run s", heartbeat_s=0.05, notice=notices.append)
    first = held.record.heartbeat_at
    renewed = _wait(lambda: (r := lease.current(str(d))) and r.heartbeat_at > first and r, what="a heartbeat")
    assert renewed.token == held.record.token and renewed.started_at == held.record.started_at
    _write_record(d, 2, host=OTHER_HOST, pid=4242, command="taker")  # someone judged us gone
    _wait(lambda: held.lost, what="the lease to be lost")
    held._thread.join(timeout=10)
    assert not held._thread.is_alive()
    own = (d / "lease.000001.json").read_bytes()
    held.release()
    assert (d / "lease.000001.json").read_bytes() == own  # never written again, not even to release
    assert lease.current(str(d)).command == "taker" and not lease.current(str(d)).released
    assert len(notices) == 1 and notices[0].startswith(f"lost the lease of sweep 's' to pid 4242 on host {OTHER_HOST}")


def test_live_holder_and_current(tmp_path):
    d = tmp_path / "s"
    assert lease.current(str(d)) is None and lease.live_holder(str(d)) is None  # no directory
    held = lease.acquire(str(d), "run s")
    assert lease.live_holder(str(d)) == held.record == lease.current(str(d))
    assert lease.is_live(held.record)
    held.release()
    assert lease.live_holder(str(d)) is None and lease.current(str(d)).released
    for generation, kind in enumerate(("reused pid", "dead pid", "silent host"), start=3):
        _write_record(d, generation, **_stale(kind))
        assert lease.current(str(d)).generation == generation
        assert lease.live_holder(str(d)) is None, kind
    _write_record(d, 6, pid_start=None)  # written where /proc was absent: kill(pid, 0) decides
    assert lease.live_holder(str(d)).generation == 6


def test_partial_files_never_crash_readers(tmp_path):
    d = tmp_path / "s"
    _write_record(d, 1, released=True)
    (d / "lease.000002.json").write_text('{"token": "abc", "gener')  # not a whole record
    (d / "lease.000003.json").write_text('["not", "a", "record"]')
    assert lease.current(str(d)).generation == 1
    with lease.acquire(str(d), "run s") as held:
        assert held.record.generation == 4  # past every generation named in D
    assert lease.current(str(d)).generation == 4


def test_file_uris_are_local_paths(tmp_path):
    with lease.acquire(f"file://{tmp_path}/s", "run s") as held:
        assert (tmp_path / "s" / "lease.000001.json").exists()
        assert lease.live_holder(str(tmp_path / "s")) == held.record
        with pytest.raises(lease.LeaseHeld, match="^sweep 's' "):
            lease.acquire(str(tmp_path / "s"), "resume s")


def test_object_store_best_effort(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "_SETTLE_S", 0.01)
    assert isinstance(lease._open_store("mock:///sweeps/s"), lease._ArrowStore)
    with lease.acquire("mock:///sweeps/s", "run s", heartbeat_s=0.05) as held:  # a fresh in-memory fs
        first = held.record.heartbeat_at
        _wait(lambda: held._store.read(1).heartbeat_at > first, what="a heartbeat")
    assert held._store.read(1).released

    # the pyarrow code path on a real directory (object-store semantics, minus the object store)
    monkeypatch.setattr(lease, "_open_store", lambda directory: lease._ArrowStore(pafs.LocalFileSystem(), directory))
    d = str(tmp_path / "s")
    with lease.acquire(d, "run s") as held:
        assert lease.live_holder(d) == held.record
        with pytest.raises(lease.LeaseHeld, match=f"pid {os.getpid()} "):
            lease.acquire(d, "resume s")
    _write_record(tmp_path / "s", 2, **_stale("dead pid"))
    notices: list[str] = []
    with lease.acquire(d, "resume s", notice=notices.append) as held:
        assert held.record.generation == 3
    assert len(notices) == 1 and "that process is gone" in notices[0]
    assert sorted(os.listdir(d)) == ["lease.000003.json"]
