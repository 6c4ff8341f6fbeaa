"""Shared fixtures. Ray for in-process sweeps: embedded, on loopback (127.0.0.2), in a short temp dir."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/drills.py


@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray per test module (start-up ~3 s); `run_sweep`/`resume_sweep` reuse it."""
    from orchestrator.runtime import ray_session

    with ray_session(num_cpus=2) as session:
        yield session
