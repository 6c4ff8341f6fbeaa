"""An exclusive, crash-safe writer lease per sweep. Ray-free, torch-free.

Every command that writes a sweep holds its lease while it writes, so two drivers never interleave their
writes to one sweep; a second writer is refused at once with one line naming the holder. Readers never take
the lease: they ask `live_holder` whether someone is writing.

The lease is a series of generation files in the sweep's directory D:
  D/lease.000001.json, D/lease.000002.json, ...   the record with the highest generation is the current one
A writer takes the lease by creating generation g+1, where g is the highest one there, and only if record g is
released or its holder is gone. A generation file is created whole and exclusively: its JSON is written to a
hidden temp file, then hard-linked to the final name (`os.link` fails if that name exists, atomically, on NFS
too). Of two writers taking over the same stale lease at once, exactly one creates g+1; the other is refused.
The winner then deletes the lower generations, so D holds one or two lease files.

Liveness (`is_live`): a released record is not live. A record written on this host is live while its process
exists: the pid, and the process start time from /proc (so a reused pid does not count). A record from
another host is live while its heartbeat is fresh: the holder rewrites its own file every HEARTBEAT_S (10 s)
seconds, and a record whose heartbeat is STALE_AFTER_S (60 s) old or older is judged abandoned, which
tolerates several missed heartbeats and clock differences between hosts of a few seconds. A holder that finds
a higher generation than its own has been taken over: it sets `lease.lost` and never writes the lease again.

On an object store (s3://, gs://, ...) there is no atomic create-if-absent through pyarrow: the lease is
best effort there. A generation file is written only if it does not exist yet, then read back after a short
pause to check that our token is in it; this is not guaranteed: on s3/gs two writers starting within the same
second may both proceed. Local paths, NFS and file:// URIs get real exclusion.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from orchestrator import UserError

STALE_AFTER_S = 60.0  # a record from another host whose heartbeat is this old is judged abandoned
HEARTBEAT_S = 10.0  # how often the holder renews its record's heartbeat_at

_SETTLE_S = 1.0  # object stores: pause between writing a generation and reading it back (see module doc)
_ATTEMPTS = 3  # acquire re-reads at most this often when a race was lost to a writer that is gone already
_GENERATION = re.compile(r"^lease\.(\d+)\.json$")


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """One generation file's contents: who holds (or held) the lease, and since when."""

    token: str
    generation: int
    host: str
    pid: int
    pid_start: int | None
    command: str
    started_at: float
    heartbeat_at: float
    released: bool


class LeaseHeld(UserError):
    """Another live process holds the sweep's lease; `holder` is its record (None if it could not be read)."""

    def __init__(self, message: str, holder: LeaseRecord | None = None):
        super().__init__(message)
        self.holder = holder


# --- process identity ---

def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat, or None if there is no such file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as source:
            data = source.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data.rsplit(b")", 1)[1].split()  # the command name (field 2) may hold spaces and ')'
    return fields[0].decode(), int(fields[19])  # fields 3 and 22


def _has_proc() -> bool:
    return os.path.exists("/proc/self/stat")


def _pid_start(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time), or None where /proc is absent."""
    stat = _proc_stat(pid) if _has_proc() else None
    return None if stat is None else stat[1]


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_live(record: LeaseRecord) -> bool:
    """Whether the record's holder may still be writing (see the module doc for the rules)."""
    if record.released:
        return False
    if record.host != socket.gethostname():
        return time.time() - record.heartbeat_at < STALE_AFTER_S
    if record.pid_start is None or not _has_proc():
        return _pid_exists(record.pid)
    stat = _proc_stat(record.pid)
    if stat is None:  # gone; or hidden by a hidepid /proc mount, where only kill(pid, 0) can tell
        return _pid_exists(record.pid)
    state, start = stat
    return state != "Z" and start == record.pid_start  # a zombie has stopped; another start: a reused pid


def describe(record: LeaseRecord) -> str:
    """One line for messages: pid, host, command, since when, how fresh its heartbeat is."""
    since = dt.datetime.fromtimestamp(record.started_at, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    age = max(0, round(time.time() - record.heartbeat_at))
    return (f"pid {record.pid} on host {record.host} (command: {record.command}, since {since}, "
            f"last heartbeat {age} s ago)")


def _held_message(name: str, holder: LeaseRecord | None) -> str:
    who = describe(holder) if holder is not None else "another process"
    return f"sweep '{name}' is being written by {who}; wait for it to end, or stop that process"


def _why_stale(record: LeaseRecord) -> str:
    if record.host == socket.gethostname():
        return "that process is gone"
    return f"no heartbeat for {max(0, round(time.time() - record.heartbeat_at))} s"


# --- where generation files live: a local directory, or a pyarrow filesystem ---

def _parse(data: bytes, generation: int) -> LeaseRecord | None:
    """The record in a file's bytes, or None if they are not a whole record (never raises)."""
    try:
        raw = json.loads(data)
        return LeaseRecord(token=str(raw["token"]), generation=generation, host=str(raw["host"]),
                           pid=int(raw["pid"]), pid_start=None if raw["pid_start"] is None else int(raw["pid_start"]),
                           command=str(raw["command"]), started_at=float(raw["started_at"]),
                           heartbeat_at=float(raw["heartbeat_at"]), released=bool(raw["released"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _encode(record: LeaseRecord) -> bytes:
    return json.dumps(dataclasses.asdict(record)).encode()


def _file_name(generation: int) -> str:
    return f"lease.{generation:06d}.json"


class _LocalStore:
    """Generation files in a local (or NFS) directory: temp file + link to create, temp file + replace to renew."""

    def __init__(self, path: str):
        self.path = path

    def generations(self) -> list[int]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_GENERATION.match, names) if m)

    def read(self, generation: int) -> LeaseRecord | None:
        """None if the file is missing or not a whole record; other OSErrors (e.g. NFS trouble) propagate."""
        try:
            with open(os.path.join(self.path, _file_name(generation)), "rb") as source:
                return _parse(source.read(), generation)
        except FileNotFoundError:
            return None

    def _temp(self, record: LeaseRecord) -> str:
        temp = os.path.join(self.path, f".lease.{record.generation:06d}.{uuid.uuid4().hex}.tmp")
        with open(temp, "xb") as out:
            out.write(_encode(record))
            out.flush()
            os.fsync(out.fileno())
        return temp

    def create(self, record: LeaseRecord) -> bool:
        """Create the record's generation file whole; False if that generation exists already."""
        os.makedirs(self.path, exist_ok=True)
        temp = self._temp(record)
        try:
            os.link(temp, os.path.join(self.path, _file_name(record.generation)))
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
        return True

    def replace(self, record: LeaseRecord) -> None:
        os.replace(self._temp(record), os.path.join(self.path, _file_name(record.generation)))

    def delete(self, generation: int) -> None:
        try:
            os.unlink(os.path.join(self.path, _file_name(generation)))
        except FileNotFoundError:
            pass

    def tidy(self) -> None:
        """Delete temp files left by processes that died between writing and linking them."""
        for name in os.listdir(self.path):
            if name.startswith(".lease.") and name.endswith(".tmp"):
                path = os.path.join(self.path, name)
                try:
                    if time.time() - os.stat(path).st_mtime > STALE_AFTER_S:
                        os.unlink(path)
                except FileNotFoundError:
                    pass


class _ArrowStore:
    """Generation files on a pyarrow filesystem (object stores): best effort, see the module doc."""

    def __init__(self, fs: Any, path: str):
        self.fs, self.path = fs, path.rstrip("/")

    def generations(self) -> list[int]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False, allow_not_found=True))
        return sorted(int(m.group(1)) for m in (_GENERATION.match(info.base_name) for info in infos
                                                 if info.type == pafs.FileType.File) if m)

    def read(self, generation: int) -> LeaseRecord | None:
        try:
            with self.fs.open_input_stream(f"{self.path}/{_file_name(generation)}") as source:
                return _parse(source.read(), generation)
        except FileNotFoundError:
            return None

    def create(self, record: LeaseRecord) -> bool:
        import pyarrow.fs as pafs

        path = f"{self.path}/{_file_name(record.generation)}"
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        self.fs.create_dir(self.path, recursive=True)
        self.replace(record)
        time.sleep(_SETTLE_S)  # a writer that checked just before us writes within this pause: its copy wins
        back = self.read(record.generation)
        return back is not None and back.token == record.token

    def replace(self, record: LeaseRecord) -> None:
        with self.fs.open_output_stream(f"{self.path}/{_file_name(record.generation)}") as out:
            out.write(_encode(record))  # an object is published only once its upload completes

    def delete(self, generation: int) -> None:
        try:
            self.fs.delete_file(f"{self.path}/{_file_name(generation)}")
        except FileNotFoundError:
            pass

    def tidy(self) -> None:
        pass  # no temp files


def _open_store(directory: str) -> _LocalStore | _ArrowStore:
    directory = str(directory)
    if "://" in directory and not directory.startswith("file://"):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(directory)
        return _ArrowStore(fs, path)
    if directory.startswith("file://"):
        import pyarrow.fs as pafs

        _, directory = pafs.FileSystem.from_uri(directory)
    return _LocalStore(os.path.abspath(directory))


def _current(store: _LocalStore | _ArrowStore) -> tuple[LeaseRecord | None, int]:
    """(the highest-generation record that parses, the highest generation named in D: 0 if none)."""
    for _ in range(3):  # a file listed and then deleted by a winner's clean-up: list again
        generations = store.generations()
        vanished = False
        for generation in reversed(generations):
            record = store.read(generation)
            if record is not None:
                return record, generations[-1]
            vanished = vanished or generation not in store.generations()
        if not vanished:
            break
    return None, (generations[-1] if generations else 0)


def current(directory: str) -> LeaseRecord | None:
    """The sweep's current lease record (released or not), or None if it has none or D does not exist."""
    return _current(_open_store(directory))[0]


def live_holder(directory: str) -> LeaseRecord | None:
    """The record of the process writing the sweep now, or None if nobody is."""
    record = current(directory)
    return record if record is not None and is_live(record) else None


# --- the holder's side ---

def _print_notice(message: str) -> None:
    print(message, file=sys.stderr)


class Lease:
    """A held lease: renews its heartbeat on a daemon thread until `release()` (or the end of a `with`).
    `lost` turns True if another process took the lease over; the holder should then stop writing."""

    def __init__(self, store: _LocalStore | _ArrowStore, directory: str, record: LeaseRecord, name: str,
                 heartbeat_s: float, notice: Callable[[str], None]):
        self.directory, self.record, self.lost = directory, record, False
        self._store, self._name, self._heartbeat_s, self._notice = store, name, heartbeat_s, notice
        self._stop = threading.Event()
        self._released = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat-{name}", daemon=True)
        self._thread.start()
        atexit.register(self.release)  # a plain exit releases too (SIGKILL cannot: liveness covers that)

    def _superseded(self) -> LeaseRecord | None | bool:
        """False while we hold the lease; else the record that replaced ours (None if unknown)."""
        generations = self._store.generations()
        if generations and generations[-1] > self.record.generation:
            return _current(self._store)[0]
        own = self._store.read(self.record.generation)
        if own is None or own.token != self.record.token:
            return own
        return False

    def _lose(self, by: LeaseRecord | None) -> None:
        self.lost = True
        who = f" to {describe(by)}" if by is not None else ""
        self._notice(f"lost the lease of sweep '{self._name}'{who}; no longer renewing it")

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                with self._lock:
                    if self._stop.is_set():
                        return
                    by = self._superseded()
                    if by is not False:
                        self._lose(by)
                        return
                    record = dataclasses.replace(self.record, heartbeat_at=time.time())
                    self._store.replace(record)
                    self.record = record
            except OSError:
                continue  # e.g. an NFS hiccup: try again next time; others judge us only after STALE_AFTER_S

    def release(self) -> None:
        """Stop renewing and mark the record released (unless the lease was lost). Idempotent."""
        with self._lock:
            if self._released or os.getpid() != self.record.pid:  # a forked child never releases its parent's
                return
            self._released = True
            self._stop.set()
        atexit.unregister(self.release)
        if self._thread is not threading.current_thread():
            self._thread.join()
        if self.lost:
            return
        by = self._superseded()
        if by is not False:
            self._lose(by)
            return
        record = dataclasses.replace(self.record, heartbeat_at=time.time(), released=True)
        self._store.replace(record)
        self.record = record

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.release()
            return
        try:  # an exception is on its way out: do not hide it behind a failure to release
            self.release()
        except OSError as error:
            self._notice(f"could not release the lease of sweep '{self._name}': {error}")


def acquire(directory: str, command: str, *, name: str | None = None, heartbeat_s: float = HEARTBEAT_S,
            notice: Callable[[str], None] | None = None) -> Lease:
    """Take the sweep's lease in `directory` (created if missing), or raise LeaseHeld naming its live holder.

    A stale lease (holder gone, or no heartbeat for STALE_AFTER_S) is taken over, with a one-line `notice`
    (default: printed to stderr)."""
    directory = str(directory)
    name = name or directory.rstrip("/").rsplit("/", 1)[-1]
    notice = notice or _print_notice
    store = _open_store(directory)
    for _ in range(_ATTEMPTS):
        previous, highest = _current(store)
        if previous is not None and is_live(previous):
            raise LeaseHeld(_held_message(name, previous), previous)
        now = time.time()
        mine = LeaseRecord(token=uuid.uuid4().hex, generation=highest + 1, host=socket.gethostname(),
                           pid=os.getpid(), pid_start=_pid_start(os.getpid()), command=command,
                           started_at=now, heartbeat_at=now, released=False)
        if store.create(mine):
            if store.generations()[-1] == mine.generation:
                break
            store.delete(mine.generation)  # we re-created a generation the winner had cleaned up: not ours
        winner = _current(store)[0]  # another process won the race for this generation
        if winner is not None and is_live(winner):
            raise LeaseHeld(_held_message(name, winner), winner)
        # the winner is done already (or is gone): look again
    else:
        raise LeaseHeld(_held_message(name, _current(store)[0]), _current(store)[0])
    if previous is not None and not previous.released:
        notice(f"took over the lease of sweep '{name}' from pid {previous.pid} on host {previous.host} "
               f"(command: {previous.command}, {_why_stale(previous)})")
    for generation in store.generations():
        if generation < mine.generation:
            store.delete(generation)
    store.tidy()
    return Lease(store, directory, mine, name, heartbeat_s, notice)
