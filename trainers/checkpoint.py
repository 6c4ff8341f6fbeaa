"""Save and restore the whole training state in one directory, atomically.

A checkpoint directory holds `state.pt` (model, optimiser, gradient filter, step, history; no global torch
RNG state: nothing in a run draws from it -- init, split and batches use their own seeded generators) and
`config.json` (readable). New ones are written as `<checkpoint_dir>/step-<step>/` through a temporary
directory and a rename, then older ones are removed, so a kill at any moment leaves one complete
checkpoint. The newest complete one is resumed, whether it sits in a `step-*` folder or was copied
straight into `checkpoint_dir` (as Ray Tune's restore does).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
STEP_FILE = "step"  # the step as text, to pick the newest checkpoint without loading any


def save(checkpoint_dir: str | Path, state: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write `state` as `<checkpoint_dir>/step-<state['step']>/` and remove the older ones; return its path."""
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:09d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    torch.save(state, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    (tmp / STEP_FILE).write_text(f"{state['step']}\n")
    if final.exists():  # the same step again (a resumed run re-saving): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for name in (STATE_FILE, CONFIG_FILE, STEP_FILE):  # a restored copy at the top level is older now
        (root / name).unlink(missing_ok=True)
    return final


def latest(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `checkpoint_dir` (or `checkpoint_dir` itself), if any."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    complete = [d for d in [root, *root.glob("step-*")] if (d / STATE_FILE).exists() and (d / STEP_FILE).exists()]
    return max(complete, key=lambda d: int((d / STEP_FILE).read_text()), default=None)


def load(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
