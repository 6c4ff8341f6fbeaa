"""Fault drills on a real multi-node Ray cluster on this machine (cluster/local_cluster.py): a head and two
workers started with `ray start`, each on its own loopback address, token auth on, and the sweep driven by
the real CLI (`groksweep sweep/resume --address`) in a subprocess with a temporary HOME.

The tests share one cluster (starting one costs ~8 s) and run in file order; the node-loss drill kills a
worker, so it comes last but one, and the last test stops the cluster and checks what ended.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from drills import wait_for

from orchestrator import store

REPO = Path(__file__).resolve().parents[1]
BASE_IP = "127.0.6.2"  # head; workers 127.0.6.3, .4, ... (own range: other tests use 127.0.0.2)
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local cluster reads /proc")


def _load_local_cluster():
    spec = importlib.util.spec_from_file_location("local_cluster", REPO / "cluster" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_cluster"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


local_cluster = _load_local_cluster()


@pytest.fixture(scope="module")
def cluster():
    """Head without CPUs (trials run on workers), worker1 with 2 CPUs and 1 logical GPU, worker2 with 2 CPUs."""
    c = local_cluster.LocalCluster(base_ip=BASE_IP)
    try:
        c.start_head()
        c.add_worker(num_cpus=2, num_gpus=1)
        c.add_worker(num_cpus=2)
        yield c
    finally:
        c.stop()
        c.remove_files()


def node_by_name(c, name: str):
    return next(n for n in c.nodes if n.name == name)


def driver_env(c, home: Path) -> dict[str, str]:
    """A driver's environment: the cluster's address and token, and a HOME of its own (no ~/.ray)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **c.driver_env(), "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}


def write_spec(path: Path, name: str, base: dict, parameters: dict, **top) -> Path:
    spec = {"name": name, "base": {"preset": "tiny", "stop_on_generalize": False, "threads": 1, **base},
            "method": "grid", "metric": {"name": "steps_to_generalize", "goal": "minimize"},
            "parameters": parameters, "max_failures": 2, **top}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def groksweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def trial_processes(c) -> dict[str, list[int]]:
    """Node name -> PIDs of its processes that are running a trial right now. Ray retitles a trial's
    worker `ray::ImplicitFunc.train`; the node is the one whose session the process belongs to."""
    running = {}
    for node in c.nodes:
        for pid in c.pids(node):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::ImplicitFunc") and not _title_of_parent(pid).startswith("ray::ImplicitFunc"):
                running.setdefault(node.name, []).append(pid)  # (a trial's trainer child, between its fork
    return running                                              # and exec, still carries the trial's title)


def _title_of_parent(pid: int) -> str:
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except (OSError, IndexError, ValueError):
        return ""


def run_watching(c, args: list[str], env: dict[str, str], timeout: float = 150):
    """Run the CLI while sampling where trials run; returns (returncode, output, samples)."""
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    samples: list[dict[str, list[int]]] = []
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            samples.append(trial_processes(c))
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=30)
    return proc.returncode, output, samples


def trial_rows(root: Path, name: str) -> list[dict]:
    if name not in store.sweeps(root):
        return []
    return store.collect(lambda: store.trials(root, [name]).sort("trial_id")).to_dicts()


def curve_steps(root: Path, name: str) -> dict[str, list[int]]:
    frame = store.collect(lambda: store.curves(root, [name]).sort("trial_id", "step"))
    return {tid: frame.filter(frame["trial_id"] == tid)["step"].to_list() for tid in frame["trial_id"].unique()}


def assert_check_clean(root: Path, name: str) -> None:
    """The sweep's invariants (`groksweep check`, which needs no cluster): exit 0."""
    clean = subprocess.run(groksweep("check", name, "--results", str(root)), cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]


def expected_steps(max_steps: int, eval_every: int) -> list[int]:
    return list(range(0, max_steps + 1, eval_every))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _tcp_table() -> list[tuple[str, str, str, str]]:
    """(local ip, remote ip, state, inode) of every TCP socket, from /proc/net/tcp{,6}."""
    rows = []
    for name in ("tcp", "tcp6"):
        table = Path(f"/proc/net/{name}")
        for line in (table.read_text().splitlines()[1:] if table.exists() else []):  # no tcp6 without IPv6
            fields = line.split()
            ips = []
            for address in fields[1:3]:
                raw = bytes.fromhex(address.split(":")[0])
                # the kernel prints each 32-bit word in host (little-endian) order
                ips.append(str(ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))))
            rows.append((ips[0], ips[1], fields[3], fields[9]))
    return rows


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _is_wildcard(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_unspecified


# --- the local recipe itself ---

def test_each_node_has_its_own_loopback_address_and_all_traffic_stays_on_loopback(cluster):
    assert [n.ip for n in cluster.nodes] == ["127.0.6.2", "127.0.6.3", "127.0.6.4"]
    assert cluster.address.startswith("127.0.6.2:")
    for node in cluster.nodes:
        assert len(Path(node.temp_dir).as_posix()) + len(local_cluster.SOCKET_SUFFIX) <= 107
        assert cluster.pids(node), f"{node.name} has no live processes"
    inodes = {i for node in cluster.nodes for pid in cluster.pids(node) for i in _socket_inodes(pid)}
    ours = [row for row in _tcp_table() if row[3] in inodes]
    listening = [row for row in ours if row[2] == "0A"]
    connected = [row for row in ours if row[2] == "01"]
    assert listening and connected
    # every bound address is loopback; Ray 2.60's GCS and raylets bind gRPC on the wildcard (README)
    assert all(_is_loopback(local) or _is_wildcard(local) for local, _, _, _ in listening), listening
    assert any(_is_loopback(local) for local, _, _, _ in listening)
    # and every connection has loopback at both ends
    assert all(_is_loopback(local) and _is_loopback(remote) for local, remote, _, _ in connected), connected


def test_token_auth_is_on_a_driver_without_the_token_is_refused(cluster, tmp_path):
    env = driver_env(cluster, tmp_path / "home")
    probe = [sys.executable, "-m", "ray.scripts.scripts", "status", f"--address={cluster.address}"]
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}  # and an empty HOME: none at all
    refused = run_cli(probe, {**no_token, "RAY_AUTH_MODE": "disabled"}, timeout=60)
    assert refused.returncode != 0 and "InvalidAuthToken" in refused.stdout + refused.stderr
    wrong = run_cli(probe, {**env, "RAY_AUTH_TOKEN": "0" * 64}, timeout=60)
    assert wrong.returncode != 0 and "InvalidAuthToken" in wrong.stdout + wrong.stderr
    accepted = run_cli(probe, env, timeout=60)
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert "Resources" in accepted.stdout  # (its totals lag behind nodes that just joined)
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()  # nothing came from, or went to, ~/.ray


def test_the_script_starts_reports_and_stops_a_cluster_from_the_command_line(tmp_path):
    script = [sys.executable, str(REPO / "cluster" / "local_cluster.py")]
    refused = run_cli([*script, "start", "--base-ip", "10.0.0.2"], dict(os.environ), timeout=30)
    assert refused.returncode == 2 and "loopback" in refused.stderr
    started = run_cli([*script, "start", "--workers", "1", "--base-ip", "127.0.6.20"],
                      dict(os.environ), timeout=120)
    assert started.returncode == 0, started.stderr[-3000:]
    directory = started.stdout.strip()
    try:
        env = run_cli([*script, "env", "--dir", directory], dict(os.environ), timeout=30).stdout
        assert "export RAY_ADDRESS=127.0.6.20:" in env and "export RAY_AUTH_MODE=token" in env
        assert f"export RAY_AUTH_TOKEN_PATH={directory}/auth_token" in env
        nodes = json.loads(run_cli([*script, "status", "--dir", directory], dict(os.environ), timeout=30).stdout)
        assert [(n["name"], n["ip"]) for n in nodes] == [("head", "127.0.6.20"), ("worker1", "127.0.6.21")]
        pids = [pid for n in nodes for pid in n["live_pids"]]
        assert all(n["live_pids"] for n in nodes)
    finally:
        stopped = run_cli([*script, "stop", "--dir", directory], dict(os.environ), timeout=60)
    assert stopped.returncode == 0
    ended = {int(pid) for pid in stopped.stdout.split(":")[1].split()}
    assert {n["pid"] for n in nodes} <= ended  # (others may have ended on their own meanwhile)
    assert not [pid for pid in pids if _alive(pid)]
    assert not Path(directory).exists()  # and its files are gone


# --- drills ---

def test_sweep_with_address_on_a_token_cluster_runs_trials_on_both_workers(cluster, tmp_path):
    root = tmp_path / "results"
    spec = write_spec(tmp_path / "spec.yaml", "addr", {"max_steps": 600, "eval_every": 50},
                      {"weight_decay": {"values": [0.5, 1.0]}}, seeds=[0, 1], max_concurrent=4,
                      resources={"cpu": 1})
    args = groksweep("sweep", str(spec), "--results", str(root), "--address", cluster.address)
    code, output, samples = run_watching(cluster, args, driver_env(cluster, tmp_path / "home"))
    assert code == 0, output[-4000:]
    rows = trial_rows(root, "addr")
    assert len(rows) == 4 and {r["status"] for r in rows} == {store.COMPLETED}
    assert all(steps == expected_steps(600, 50) for steps in curve_steps(root, "addr").values())
    nodes = {name for sample in samples for name in sample}
    assert nodes == {"worker1", "worker2"}  # really multi-node, never the CPU-less head
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()
    assert_check_clean(root, "addr")


def test_sweep_with_a_wrong_token_is_one_line_exit_2_and_writes_nothing(cluster, tmp_path):
    root = tmp_path / "results"
    spec = write_spec(tmp_path / "spec.yaml", "refused", {"max_steps": 100}, {"weight_decay": {"value": 1.0}})
    env = {**driver_env(cluster, tmp_path / "home"), "RAY_AUTH_TOKEN": "0" * 64}
    refused = run_cli(groksweep("sweep", str(spec), "--results", str(root), "--address", cluster.address), env,
                      timeout=90)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr and "auth token" in refused.stderr
    assert not (root / "sweeps" / "refused").exists()  # a retry with the right token is not refused


def test_four_trials_share_one_logical_gpu_at_once(cluster, tmp_path):
    root = tmp_path / "results"
    spec = write_spec(tmp_path / "spec.yaml", "gpu", {"max_steps": 2500, "eval_every": 50},
                      {"weight_decay": {"values": [0.5, 1.0]}}, seeds=[0, 1], max_concurrent=4,
                      resources={"cpu": 0.5, "gpu": 0.25})
    args = groksweep("sweep", str(spec), "--results", str(root), "--address", cluster.address)
    code, output, samples = run_watching(cluster, args, driver_env(cluster, tmp_path / "home"))
    assert code == 0, output[-4000:]
    rows = trial_rows(root, "gpu")
    assert len(rows) == 4 and {r["status"] for r in rows} == {store.COMPLETED}
    # all four ran at once: the last to start started before the first to end ended ...
    assert max(r["started_at"] for r in rows) < min(r["ended_at"] for r in rows)
    # ... on the one node with a GPU (worker2 has CPUs to spare, but no GPU), four processes at a time
    assert {name for sample in samples for name in sample} == {"worker1"}
    assert max(len(sample.get("worker1", [])) for sample in samples) == 4
    # the trainer used the device Ray gave it: a logical GPU on a machine without CUDA is the CPU
    assert {r["device"] for r in rows} == {"cpu"}
    assert_check_clean(root, "gpu")


GPU_PROBE = """
import os, ray
ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
visible = lambda: os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
no_gpu = ray.remote(num_cpus=0.5, num_gpus=0)(visible)
quarter = ray.remote(num_cpus=0.5, num_gpus=0.25)(visible)
on_gpu_node = {"node:GPU_NODE_IP": 0.01}
print(repr(ray.get(no_gpu.options(resources=on_gpu_node).remote())), repr(ray.get(quarter.remote())))
"""


def test_on_a_gpu_node_a_task_without_gpus_sees_none(cluster, tmp_path):
    # what keeps a `gpu: 0` trial off a node's GPUs: CUDA_VISIBLE_DEVICES="" (unset, torch would see them all)
    code = GPU_PROBE.replace("GPU_NODE_IP", node_by_name(cluster, "worker1").ip)
    probe = run_cli([sys.executable, "-c", code], driver_env(cluster, tmp_path / "home"), timeout=60)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.split() == ["''", "'0'"]


def test_driver_sigkill_then_resume_on_the_cluster_loses_and_duplicates_nothing(cluster, tmp_path):
    root = tmp_path / "results"
    # three short and three long trials: the kill lands when some have ended and others are mid-way
    spec = write_spec(tmp_path / "spec.yaml", "crash", {"eval_every": 50},
                      {"max_steps": {"values": [300, 2500]}}, seeds=[0, 1, 2], max_concurrent=4,
                      resources={"cpu": 1}, checkpoint_every=4, checkpoint_every_s=0)
    env = driver_env(cluster, tmp_path / "home")
    args = groksweep("sweep", str(spec), "--results", str(root), "--address", cluster.address)
    driver = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        def some_ended_some_running():
            rows = trial_rows(root, "crash")
            final = [r for r in rows if r["status"] in store.FINAL]
            running = [r for r in rows if r["status"] == store.RUNNING]
            return (final, running) if final and running else None

        final_before, _ = wait_for(some_ended_some_running, 120, "a trial to end while others run")
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    # the cluster ends the dead driver's trial actors itself; wait for it rather than touch them
    wait_for(lambda: not trial_processes(cluster), 60, "the dead driver's trials to be ended")
    before = {r["trial_id"]: r for r in trial_rows(root, "crash")}
    assert len(before) < 6 or any(r["status"] == store.RUNNING for r in before.values())

    done = run_cli(groksweep("resume", "crash", "--results", str(root), "--address", cluster.address), env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = trial_rows(root, "crash")
    assert len(rows) == 6 == len({r["trial_id"] for r in rows})
    assert {r["status"] for r in rows} == {store.COMPLETED}
    after = {r["trial_id"]: r for r in rows}
    for row in final_before:  # final rows are never rewritten (compared as JSON: NaN equals NaN there)
        assert json.dumps(after[row["trial_id"]], default=str) == json.dumps(row, default=str)
    steps = curve_steps(root, "crash")
    assert set(steps) == set(after)
    for trial_id, row in after.items():
        assert row["steps_run"] == row["max_steps"]
        assert steps[trial_id] == expected_steps(row["max_steps"], 50), trial_id  # each step once, no gap
    assert_check_clean(root, "crash")


def test_worker_node_lost_mid_trial_resumes_from_checkpoint_on_the_other_worker(cluster, tmp_path):
    from trainers.config import FIELD_NAMES, TrainConfig
    from trainers.loop import run

    root = tmp_path / "results"
    max_steps, eval_every = 3000, 50
    spec = write_spec(tmp_path / "spec.yaml", "nodeloss", {"max_steps": max_steps, "eval_every": eval_every},
                      {"weight_decay": {"value": 1.0}}, seeds=[0], max_concurrent=1,
                      resources={"cpu": 2}, checkpoint_every=4, checkpoint_every_s=0)
    driver = subprocess.Popen(groksweep("sweep", str(spec), "--results", str(root), "--address", cluster.address),
                              env=driver_env(cluster, tmp_path / "home"), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        def node_running_a_checkpointed_trial():
            # the job's own checkpoint, on the shared results root: where it resumes from, on any node
            if not list((root / "sweeps" / "nodeloss" / "checkpoints").glob("*/step-*/step")):
                return None
            running = trial_processes(cluster)
            return next(iter(running), None)

        lost = node_by_name(cluster, wait_for(node_running_a_checkpointed_trial, 90,
                                               "the trial's first checkpoint", interval=0.05))
        assert trial_rows(root, "nodeloss")[0]["status"] == store.RUNNING  # mid-trial
        assert cluster.kill(lost, graceful=False)  # the machine is gone: SIGKILL, no goodbye
        survivor = wait_for(lambda: next(iter(trial_processes(cluster)), None), 90, "the trial to move")
        output, _ = driver.communicate(timeout=150)
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(30)
    assert driver.returncode == 0, output[-4000:]
    assert survivor != lost.name and survivor.startswith("worker")

    (row,) = trial_rows(root, "nodeloss")
    assert row["status"] == store.COMPLETED and row["steps_run"] == max_steps
    # the job's log: a second attempt that resumed from its checkpoint, not from step 0
    log = (root / "sweeps" / "nodeloss" / "logs" / f"{row['trial_id']}.log").read_text()
    resumed = re.search(r"# job \S+ on \S+, resumed from step (\d+)", log)
    assert resumed, log[-2000:]
    first_step = int(re.search(r"step (\d+) ", log[resumed.end():]).group(1))
    assert 0 < int(resumed.group(1)) < first_step < max_steps
    assert_check_clean(root, "nodeloss")

    # its curve: every evaluation once, and the same as an uninterrupted run of the same config
    curve = store.collect(lambda: store.curves(root, ["nodeloss"]).sort("step"))
    assert curve["step"].to_list() == expected_steps(max_steps, eval_every)
    reference = run(TrainConfig(**{name: row[name] for name in FIELD_NAMES})).history  # typed already
    assert [h["step"] for h in reference] == curve["step"].to_list()
    for name in ("train_loss", "val_loss", "val_acc", "weight_norm"):
        got, want = curve[name].to_list(), [h[name] for h in reference]
        assert got == pytest.approx(want, rel=1e-3, abs=1e-5), name


def test_stop_ends_exactly_the_clusters_processes(cluster):
    bystander = subprocess.Popen(["sleep", "120"], start_new_session=True)  # not the cluster's: must survive
    try:
        leaders = [node.pid for node in cluster.nodes]
        pids = sorted(pid for node in cluster.nodes for pid in cluster.pids(node))
        assert pids
        ended = cluster.stop()
        assert set(leaders) <= set(ended)  # (other processes may have ended on their own meanwhile)
        assert [pid for pid in pids + ended if _alive(pid)] == []
        assert cluster.nodes == [] and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
