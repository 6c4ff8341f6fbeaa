"""A real embedded sweep, watched from outside while it runs: which TCP sockets its processes listen on
(from /proc), that a Ray driver without the token, connecting through a loopback address to the GCS, is
refused, that readers never trip on a partial file, and that the sweep itself runs normally with its
provenance in every row. All traffic stays on loopback."""

from __future__ import annotations

import ipaddress
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest

from orchestrator.spec import load_spec

REPO = Path(__file__).parent.parent
SPEC = """name: watched
base: {preset: tiny, max_steps: 1500, eval_every: 20, stop_on_generalize: false}
parameters: {weight_decay: {values: [1.0, 2.0]}}
seeds: [0, 1]
max_concurrent: 1
report_every_s: 0.2
"""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, i = [pid], 0
    while i < len(found):
        found += children.get(found[i], [])
        i += 1
    return found


def _listening() -> dict[str, tuple[str, int]]:
    """socket inode -> (address, port) of every listening TCP socket (IPv4 and IPv6)."""
    sockets = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc stores 32-bit words LE
            sockets[fields[9]] = (str(ipaddress.ip_address(raw if width == 16 else raw[:4])), int(port, 16))
    return sockets


def _sockets_of(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) for each listening socket the processes hold."""
    table, found = _listening(), []
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            inode = link[len("socket:["):-1] if link.startswith("socket:[") else None
            if inode in table:
                found.append((pid, name, *table[inode]))
    return sorted(set(found))


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def _tokenless_driver(port: int, home: Path, token: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)  # no ~/.ray/auth_token there
    if token is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    # the GCS client is what `ray.init(address=...)` opens first (ray.init itself retries a refusal forever)
    code = (f"from ray._raylet import GcsClient\ntry:\n    GcsClient(address='127.0.0.2:{port}')\n"
            "except Exception as error:\n    print('REFUSED', type(error).__name__, error)\n    raise SystemExit(3)\n"
            "print('CONNECTED')\n")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> dict:
    """Run `groksweep sweep` in its own process and look at it from outside while it trains."""
    work = tmp_path_factory.mktemp("watched")
    (work / "spec.yaml").write_text(SPEC)
    token = work / "auth_token"  # created 0600 by the sweep
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", str(work / "spec.yaml"),
                               "--results", str(work / "results")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: dict = {"reads": 0, "sockets": [], "refusals": []}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:  # until a job is training
            names = {Path(f"/proc/{p}/comm").read_text().strip() for p in _descendants(driver.pid)
                     if Path(f"/proc/{p}/comm").exists()}
            if "gcs_server" in names and list((work / "results" / "curves").glob("watched/*/*.parquet")):
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be watched"
        seen["sockets"] = _sockets_of(_descendants(driver.pid))
        seen["token_mode"] = stat.S_IMODE(token.stat().st_mode)
        gcs = [port for _, name, _, port in seen["sockets"] if name == "gcs_server"]
        seen["gcs_ports"] = gcs
        home = work / "home"
        home.mkdir()
        for port in gcs:
            for wrong in (None, "not-the-token"):
                seen["refusals"].append(_tokenless_driver(port, home, wrong))
            seen["control"] = _tokenless_driver(port, home, token.read_text().strip())  # with the token: in
        while driver.poll() is None:  # readers beside the running sweep, the obvious way
            for table in ("trials", "curves"):
                if (work / "results" / table).exists():
                    try:
                        pd.read_parquet(work / "results" / table)
                        ds.dataset(work / "results" / table, partitioning="hive").to_table()
                        pl.scan_parquet(work / "results" / table, hive_partitioning=True).collect()
                        duckdb.sql(f"select count(*) from read_parquet('{work}/results/{table}/**/*.parquet', "
                                   "hive_partitioning = true)").fetchall()
                        seen["reads"] += 1
                    except (FileNotFoundError, duckdb.IOException) as error:  # compacted away after listing:
                        assert "No such file" in str(error) or isinstance(error, FileNotFoundError)  # read again
                        seen["vanished"] = seen.get("vanished", 0) + 1
                    except pl.exceptions.ComputeError as error:  # a row file replaced between polars' planning
                        assert "out of specification" in str(error)  # and reading (results/README.md)
                        seen["replaced"] = seen.get("replaced", 0) + 1
        seen["output"] = driver.stdout.read()
        seen["code"] = driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGINT)  # the session we started, by its id
            driver.wait(timeout=60)
    seen["root"] = work / "results"
    seen["spec"] = work / "spec.yaml"
    return seen


def test_the_sweep_runs_normally_with_provenance(watched: dict) -> None:
    assert watched["code"] == 0, watched["output"]
    trials = pd.read_parquet(watched["root"] / "trials")
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}
    assert set(trials["spec_hash"]) == {load_spec(watched["spec"]).spec_hash}
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:
        assert all(str(rev).startswith(head) for rev in trials["source_revision"])
    assert watched["reads"] > 0  # read mid-sweep with pandas, pyarrow, polars and DuckDB; none failed
    assert not [p for p in (watched["root"] / ".staging").iterdir()]  # nothing half-written left


def test_what_listens_where_and_the_token_protects_it(watched: dict) -> None:
    sockets = watched["sockets"]
    names = {name for _, name, _, _ in sockets}
    assert "gcs_server" in names and "raylet" in names, sockets
    for pid, name, address, port in sockets:  # loopback, or the wildcard Ray 2.60 gives its gRPC servers
        assert _is_loopback(address) or ipaddress.ip_address(address).is_unspecified, (pid, name, address, port)
    exposed = [s for s in sockets if not _is_loopback(s[2])]
    print("listening:", *sockets, sep="\n  ")
    assert watched["token_mode"] == 0o600
    if exposed:  # for what is not on loopback, the token is what protects it: a driver without it is refused
        assert watched["refusals"]
        for refused in watched["refusals"]:
            assert refused.returncode == 3 and "REFUSED AuthenticationError" in refused.stdout, refused
            assert "InvalidAuthToken" in refused.stdout
        assert watched["control"].stdout.strip() == "CONNECTED", watched["control"]  # the probe can get in
