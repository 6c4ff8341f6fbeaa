"""A real multi-node Ray cluster on this machine: a head and N workers, each a `ray start` of its own.

Why: to try `groksweep sweep --address` (and node loss) for real without cloud machines. Every node gets
its own loopback address (127.0.0.2, 127.0.0.3, ...: Ray keeps those as given, while it rewrites
127.0.0.1 to the interface address), its own CPUs/GPUs and its own short temp dir. Token auth is on
with a token generated here, and every node runs with a temporary HOME, so nothing is read from or
written to ~/.ray. `stop` ends exactly the processes this script started, by PID (each node runs in a
session of its own; its members are found through /proc), never by name. Linux only.

    python cluster/local_cluster.py start --workers 2 --cpus 1          # prints the cluster's directory
    eval "$(python cluster/local_cluster.py env --dir DIR)"             # RAY_ADDRESS + auth for a driver
    groksweep sweep examples/SPEC.yaml --address "$RAY_ADDRESS"
    python cluster/local_cluster.py stop --dir DIR

Tests drive the same code through `LocalCluster` (start_head, add_worker, kill, stop).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
# Ray puts sockets at <temp dir>/session_<date>_<time>_<micros>_<pid>/sockets/<name>; AF_UNIX paths
# are limited to 107 bytes. This suffix is the longest Ray writes there (pid up to 7 digits).
SOCKET_SUFFIX = "/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store"
MAX_SOCKET_PATH = 107
STARTED_LINE = "Ray runtime started"  # `ray start` logs it once the node is registered with the GCS


class ClusterError(RuntimeError):
    """The local cluster could not be started or found; the message says why (and where the log is)."""


@dataclass
class Node:
    name: str  # head, worker1, worker2, ...
    ip: str  # its own loopback address
    pid: int  # the `ray start --block` process: leader of the node's own session
    temp_dir: str
    log: str  # `ray start`'s output
    num_cpus: int
    num_gpus: int
    resources: dict[str, float] = field(default_factory=dict)


def _loopback(base_ip: str, index: int) -> str:
    """127.0.0.2 + index, refusing anything outside 127.0.0.0/8."""
    parts = [int(x) for x in base_ip.split(".")]
    if len(parts) != 4 or parts[0] != 127:
        raise ClusterError(f"--base-ip: must be a loopback address (127.x.y.z), got {base_ip!r}")
    value = (parts[1] << 16) + (parts[2] << 8) + parts[3] + index
    if value >= 1 << 24 or value % 256 in (0, 255):
        raise ClusterError(f"no loopback address left after {base_ip} + {index}")
    return f"127.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def free_port(ip: str) -> int:
    """A port that is free on `ip` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _session_members(leader: int) -> list[int]:
    """PIDs whose session is `leader`'s (the node's `ray start` and everything it spawned)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # fields after "(comm)": state ppid pgrp session ...
        after_comm = stat.rsplit(")", 1)[1].split()
        if int(after_comm[3]) == leader and after_comm[0] != "Z":  # zombies are already gone
            members.append(int(entry.name))
    return sorted(members)


def _is_our_ray_start(node: Node) -> bool:
    """Guard against PID reuse: the leader must still be this node's `ray start`."""
    try:
        cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return "start" in args and f"--temp-dir={node.temp_dir}" in args


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class LocalCluster:
    """Head + workers as `ray start` processes under one directory (state, token, HOME, temp dirs)."""

    def __init__(self, directory: str | Path | None = None, base_ip: str = "127.0.0.2",
                 object_store_mb: int = 256, env: dict[str, str] | None = None) -> None:
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="gscl", dir="/tmp"))
        self.base_ip = base_ip
        self.object_store_mb = object_store_mb
        self.env = dict(env or {})  # extra environment for every node, e.g. RAY_health_check_period_ms
        self.nodes: list[Node] = []
        self.address: str | None = None  # GCS address of the head, ip:port
        self.started = 0  # nodes started so far: names and addresses are never reused
        self.token_path = self.dir / TOKEN_FILE
        self.home = self.dir / "home"
        self._procs: dict[str, subprocess.Popen] = {}  # nodes started by this process, to reap them

    # --- state on disk, so `stop` from another process ends exactly these PIDs ---

    def save(self) -> None:
        state = {"address": self.address, "started": self.started, "base_ip": self.base_ip,
                 "object_store_mb": self.object_store_mb, "env": self.env, "nodes": [asdict(n) for n in self.nodes]}
        (self.dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> LocalCluster:
        path = Path(directory) / STATE_FILE
        if not path.exists():
            raise ClusterError(f"no local cluster in {directory} ({STATE_FILE} missing)")
        state = json.loads(path.read_text())
        cluster = cls(directory, state["base_ip"], state["object_store_mb"], state["env"])
        cluster.address = state["address"]
        cluster.started = state["started"]
        cluster.nodes = [Node(**n) for n in state["nodes"]]
        return cluster

    # --- environment ---

    def driver_env(self) -> dict[str, str]:
        """What a driver (groksweep, ray status) needs to join: the address and the token, nothing else."""
        if self.address is None:
            raise ClusterError("the cluster has no head yet")
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def _node_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        # a temporary HOME: Ray reads ~/.ray/auth_token and writes there; this cluster must not depend on it
        # as the shipped cluster configs: a task with no GPU gets CUDA_VISIBLE_DEVICES="" (Ray 2.60 leaves it
        # unset, and torch would see every GPU of the node)
        env.update(HOME=str(self.home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path),
                   RAY_USAGE_STATS_ENABLED="0", RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="1")
        env.update(self.env)
        return env

    # --- nodes ---

    def _start_node(self, name: str, num_cpus: int, num_gpus: int, resources: dict[str, float] | None,
                    head: bool) -> Node:
        ip = _loopback(self.base_ip, self.started)  # never reused, even after a node is killed
        temp_dir = str(self.dir / name)
        if len(temp_dir) + len(SOCKET_SUFFIX) > MAX_SOCKET_PATH:
            raise ClusterError(f"{temp_dir}: too long for Ray's unix sockets (<= {MAX_SOCKET_PATH} bytes in all); "
                               "use a shorter --dir")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        if not self.token_path.exists():
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", f"--node-ip-address={ip}",
               f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
               f"--object-store-memory={self.object_store_mb * 2**20}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port(ip)}"]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        if head:
            port = free_port(ip)
            cmd += ["--head", f"--port={port}", f"--dashboard-host={ip}", f"--dashboard-port={free_port(ip)}"]
            self.address = f"{ip}:{port}"
        else:
            cmd.append(f"--address={self.address}")
        log = self.dir / f"{name}.log"
        with open(log, "w") as out:
            # a session of its own: every process of this node can be found (and ended) through it
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._node_env(), cwd=self.dir, start_new_session=True)
        node = Node(name, ip, proc.pid, temp_dir, str(log), num_cpus, num_gpus, dict(resources or {}))
        self._procs[name] = proc
        self.nodes.append(node)
        self.started += 1
        self.save()
        self._wait_started(node, proc)
        return node

    def _wait_started(self, node: Node, proc: subprocess.Popen, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if STARTED_LINE in Path(node.log).read_text(errors="replace"):
                return
            if proc.poll() is not None:
                raise ClusterError(f"{node.name} ({node.ip}) exited with {proc.returncode}; see {node.log}")
            time.sleep(0.2)
        raise ClusterError(f"{node.name} ({node.ip}) not up after {timeout_s:.0f}s; see {node.log}")

    def start_head(self, num_cpus: int = 0, num_gpus: int = 0, resources: dict[str, float] | None = None) -> Node:
        """The head: GCS, dashboard, autoscaler monitor; by default no CPUs, so trials run on workers."""
        if self.nodes:
            raise ClusterError("the head is already started")
        return self._start_node("head", num_cpus, num_gpus, resources, head=True)

    def add_worker(self, num_cpus: int = 1, num_gpus: int = 0, resources: dict[str, float] | None = None) -> Node:
        if self.address is None:
            raise ClusterError("start the head first")
        name = f"worker{self.started}"
        return self._start_node(name, num_cpus, num_gpus, resources, head=False)

    def pids(self, node: Node) -> list[int]:
        """The node's live processes (its session). A session ID is not reused while any member lives, so
        a live leader that is not our `ray start` means the session is gone (its PID now someone else's)."""
        try:
            leader_state = Path(f"/proc/{node.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            leader_state = None  # gone: its session may still have members, and they are ours
        if leader_state not in (None, "Z") and not _is_our_ray_start(node):  # a zombie's PID is not reused
            return []
        return _session_members(node.pid)

    def kill(self, node: Node, graceful: bool = True, timeout_s: float = 15) -> list[int]:
        """End one node's processes, by PID; `graceful=False` is a machine lost (SIGKILL, no goodbye).
        Returns the PIDs that were ended."""
        ended = self.pids(node)
        if not ended:
            self.nodes = [n for n in self.nodes if n is not node]
            self.save()
            return []
        if graceful and _is_our_ray_start(node):
            _signal([node.pid], signal.SIGTERM)  # `ray start --block` then stops its node's processes
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and _session_members(node.pid):
                time.sleep(0.2)
        remaining = _session_members(node.pid)
        _signal(remaining, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _session_members(node.pid):
            time.sleep(0.1)
        ended = sorted(set(ended) | set(remaining))
        if node.name in self._procs:
            self._procs.pop(node.name).wait(timeout_s)  # reap our child
        self.nodes = [n for n in self.nodes if n is not node]
        self.save()
        return ended

    def stop(self) -> list[int]:
        """Workers first, then the head. Returns every PID that was ended."""
        ended: list[int] = []
        for node in sorted(self.nodes, key=lambda n: n.name == "head"):
            ended += self.kill(node)
        return ended

    def remove_files(self) -> None:
        """Delete what this cluster wrote under its directory (logs, temp dirs, token, state), once stopped;
        the directory itself goes only if nothing else is left in it."""
        if self.nodes:
            raise ClusterError("stop the cluster before removing its files")
        for index in range(self.started):
            name = "head" if index == 0 else f"worker{index}"
            shutil.rmtree(self.dir / name, ignore_errors=True)
            (self.dir / f"{name}.log").unlink(missing_ok=True)
        shutil.rmtree(self.home, ignore_errors=True)
        for name in (TOKEN_FILE, STATE_FILE):
            (self.dir / name).unlink(missing_ok=True)
        if self.dir.exists() and not any(self.dir.iterdir()):
            self.dir.rmdir()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a head and N workers; prints the cluster's directory")
    start.add_argument("--workers", type=int, default=2)
    start.add_argument("--cpus", type=int, default=1, help="logical CPUs per worker")
    start.add_argument("--gpus", type=int, default=0, help="logical GPUs per worker (a CPU machine may declare some)")
    start.add_argument("--head-cpus", type=int, default=0, help="0: trials never run on the head")
    start.add_argument("--base-ip", default="127.0.0.2", help="the head's loopback address; workers take the next")
    start.add_argument("--object-store-mb", type=int, default=256, help="per node")
    start.add_argument("--dir", help="where state, token, HOME and temp dirs go (default: a new /tmp/gsclXXXX)")
    start.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                       help="extra environment for every node, e.g. RAY_health_check_period_ms=1000 (repeatable)")
    for name, text in (("stop", "end exactly the processes of this cluster, by PID, and delete its files"),
                       ("env", "print `export` lines for a driver: RAY_ADDRESS and the token"),
                       ("status", "print the nodes and their live PIDs as JSON")):
        sub.add_parser(name, help=text).add_argument("--dir", required=True)
    sub.choices["stop"].add_argument("--keep-files", action="store_true", help="keep the logs and temp dirs")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            if any("=" not in item for item in args.env):
                raise ClusterError(f"--env: expected KEY=VALUE, got {[e for e in args.env if '=' not in e]}")
            cluster = LocalCluster(args.dir, args.base_ip, args.object_store_mb,
                                   dict(item.split("=", 1) for item in args.env))
            try:
                cluster.start_head(num_cpus=args.head_cpus)
                for _ in range(args.workers):
                    cluster.add_worker(num_cpus=args.cpus, num_gpus=args.gpus)
            except BaseException:
                cluster.stop()
                if not cluster.started:  # nothing ran: no logs worth keeping
                    cluster.remove_files()
                raise
            print(cluster.dir)
            print(f"# {len(cluster.nodes)} nodes up at {cluster.address}; for a driver:\n"
                  f"#   eval \"$(python {sys.argv[0]} env --dir {cluster.dir})\"", file=sys.stderr)
            return 0
        cluster = LocalCluster.load(args.dir)
        if args.command == "stop":
            ended = cluster.stop()
            if not args.keep_files:
                cluster.remove_files()
            print(f"ended {len(ended)} processes: {' '.join(map(str, ended))}")
        elif args.command == "env":
            for key, value in cluster.driver_env().items():
                print(f"export {key}={shlex.quote(value)}")
        else:
            print(json.dumps([{**asdict(n), "live_pids": cluster.pids(n)} for n in cluster.nodes], indent=2))
        return 0
    except ClusterError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
