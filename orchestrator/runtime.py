"""Start an embedded Ray that only its user can use, or join a cluster with its auth token.

An embedded Ray registers its services on the machine's interface address unless told otherwise, and
rewrites 127.0.0.1 / localhost to that address; 127.0.0.2 (also loopback) is kept as given, so the
embedded Ray registers on 127.0.0.2 and what Ray lets us bind (its runtime-env agent) binds there, with
no dashboard. Ray 2.60's gRPC servers (GCS, raylet, object manager, every core worker incl. the driver)
still listen on every interface (`::`), whatever the node address: what keeps others out of those is
Ray's token auth, turned on here explicitly (RAY_AUTH_MODE=token, not Ray's default for a local
ray.init) with a token file only its owner can read (0600, created or tightened here). Joining a
cluster (`--address` / RAY_ADDRESS) turns token auth on too; the token comes from RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as Ray reads them. README "What listens where" lists it all.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator import UserError

LOOPBACK_IP = "127.0.0.2"
# What a Ray worker (a Tune trial's actor) runs with. Its polars only writes each job's one-row and few-row
# Parquet files, for which a pool of threads per core costs CPU the trainers need (~0.7 ms a job, measured
# on the worker's own per-job code; 1.5 ms a file in a loop of writes).
WORKER_ENV = {"POLARS_MAX_THREADS": "1"}


@dataclass
class RaySession:
    address: str | None  # the cluster joined, None for an embedded Ray
    embedded: bool  # this process started Ray (and shuts it down)
    owned: bool  # this context started or joined Ray; False when Ray was already initialised
    start_s: float = 0.0  # seconds ray.init took
    shutdown_s: float = 0.0  # seconds ray.shutdown took (set on exit)


def token_path() -> Path | None:
    """The token file Ray reads (RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token); None when RAY_AUTH_TOKEN
    holds the token itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def private_token_file(path: Path) -> Path:
    """The token file exists and only its owner can read it: created 0600 with a fresh random token
    (Ray's own writes it with the umask, 0644 here), or tightened to 0600; one another user owns is
    refused (they could read or change it)."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile: use theirs (checked below)
            pass
        else:
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_hex(32))
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise UserError(f"Ray auth token {path} belongs to uid {info.st_uid}, not to you: another user could read "
                        "it; remove it (a new one is made) or set RAY_AUTH_TOKEN_PATH to a file of yours")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o600)
    return path


def _token_auth_on() -> None:
    """Token auth on for the embedded Ray, explicitly, before it starts (its processes inherit it)."""
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    path = token_path()
    if path is not None:
        private_token_file(path)
    Config.initialize("")  # this process re-reads RAY_AUTH_MODE (Ray does the same when it enables auth itself)


@contextmanager
def _set_for_children(env: dict[str, str]) -> Iterator[None]:
    """`env` (where not set already) for the processes started meanwhile, not for this one: the driver's
    polars (already imported, reading whole sweeps) keeps its threads."""
    added = {k: v for k, v in env.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def resolve_address(address: str | None) -> str | None:
    """`--address` if given, else RAY_ADDRESS; "local" or empty means embedded."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address in (None, "", "local") else address


@contextmanager
def ray_session(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
                quiet: bool = True) -> Iterator[RaySession]:
    """Ray for the duration of a sweep. Reuses an already initialised Ray (a notebook, a test fixture, a
    `ray.cluster_utils.Cluster`) without shutting it down."""
    import ray
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        yield RaySession(address=None, embedded=False, owned=False)
        return
    address = resolve_address(address)
    temp_dir = None
    started = time.perf_counter()
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")  # gpu: 0 trials see no GPU
    if address is None:
        # socket paths under it must stay <= 107 bytes: a short temp dir, not a deep one
        temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # 0700: Ray's Unix sockets and logs are ours
        _token_auth_on()
        with _set_for_children(WORKER_ENV):  # the raylet starts with it, and its workers inherit it
            ray.init(_node_ip_address=LOOPBACK_IP, include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus,
                     _temp_dir=temp_dir, configure_logging=True, logging_level="ERROR" if quiet else "INFO",
                     log_to_driver=not quiet)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        try:
            ray.init(address=address, logging_level="ERROR" if quiet else "INFO", log_to_driver=not quiet,
                     runtime_env={"env_vars": {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}})
        except AuthenticationError as error:
            raise UserError(f"--address {address}: the cluster refused this driver's auth token ({error}); "
                            "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token") from None
        except ConnectionError as error:
            raise UserError(f"--address {address}: cannot join a Ray cluster there ({error}); check the address "
                            "and that RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH hold the cluster's auth token") from None
    session = RaySession(address=address, embedded=address is None, owned=True,
                         start_s=time.perf_counter() - started)
    try:
        yield session
    finally:
        stopped = time.perf_counter()
        ray.shutdown()
        session.shutdown_s = time.perf_counter() - stopped
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
