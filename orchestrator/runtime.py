"""Start an embedded Ray that listens on loopback only, or join a cluster with its auth token.

An embedded Ray registers its services on the machine's interface address unless told otherwise, and
rewrites 127.0.0.1 / localhost to that address; 127.0.0.2 (also loopback) is kept as given. So the
embedded default binds to 127.0.0.2: nothing on the network can reach it. Joining a cluster
(`--address` / RAY_ADDRESS) turns Ray's token auth on; the token comes from RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as Ray reads them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from orchestrator import UserError

LOOPBACK_IP = "127.0.0.2"


@dataclass
class RaySession:
    address: str | None  # the cluster joined, None for an embedded Ray
    embedded: bool  # this process started Ray (and shuts it down)
    owned: bool  # this context started or joined Ray; False when Ray was already initialised
    start_s: float = 0.0  # seconds ray.init took
    shutdown_s: float = 0.0  # seconds ray.shutdown took (set on exit)


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
        temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        ray.init(_node_ip_address=LOOPBACK_IP, include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus,
                 _temp_dir=temp_dir, configure_logging=True, logging_level="ERROR" if quiet else "INFO",
                 log_to_driver=not quiet)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        try:
            ray.init(address=address, logging_level="ERROR" if quiet else "INFO", log_to_driver=not quiet)
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
