"""Shared fixtures. Ray for in-process sweeps: embedded, on loopback (127.0.0.2), in a short temp dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/drills.py
# no live report page during the suite's many small sweeps (2 cores); tests/test_report.py tests it
os.environ.setdefault("GROKSWEEP_REPORT_EVERY_S", "0")


@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray per test module (start-up ~3 s); `run_sweep`/`resume_sweep` reuse it."""
    from orchestrator.runtime import ray_session

    with ray_session(num_cpus=2) as session:
        yield session
