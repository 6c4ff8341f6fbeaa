"""The report page kept fresh during a sweep: `<root>/sweeps/<name>/report.html`, rewritten every
GROKSWEEP_REPORT_EVERY_S seconds (default 180; 0: off) by a separate process at the lowest CPU priority
(nice 19, its autogroup too: `lowest_priority`), never by the driver, and less often when a page is costly
(`wait_after`: at most 1 % of a core on average), so the page costs the sweep nothing it would notice.

The driver only starts it (`start`). The process watches the sweep's lease: once the process that started
it no longer holds the lease (the run ended, was interrupted, or was killed), it writes the page one last
time and exits. Local roots only (the lease tells liveness there).

    python -m orchestrator.live_report ROOT NAME --every 180 --parent PID
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ENV = "GROKSWEEP_REPORT_EVERY_S"
DEFAULT_EVERY_S = 180.0
PAGE = "report.html"
POLL_S = 1.0
CPU_SHARE = 0.01  # at most this share of one core, on average, for the pages drawn during a run


def every_s() -> float:
    try:
        return max(0.0, float(os.environ.get(ENV, DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def page_path(root: str, name: str) -> Path:
    from orchestrator import store

    return Path(store.sweep_dir(root, name)) / PAGE


def start(root: str, name: str, every: float | None = None) -> subprocess.Popen | None:
    """Start the refresher for this process's run of the sweep; None when off or the root is remote."""
    from orchestrator.results_root import ResultsRoot

    every = every_s() if every is None else every
    if every <= 0 or ResultsRoot.of(root).remote:
        return None
    log = page_path(root, name).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as errors:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.live_report", root, name, "--every", str(every),
             "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
            start_new_session=True)  # Ctrl-C to the driver's terminal does not cut the final page short


def _parent_holds(root: str, name: str, parent: int) -> bool:
    from orchestrator import lease
    from orchestrator.sweep import lease_dir

    holder = lease.live_holder(lease_dir(root, name))
    return holder is not None and holder.pid == parent


def _write(root: str, name: str) -> None:
    from orchestrator.report import write_report

    try:
        write_report([name], page_path(root, name), root)
    except Exception as error:  # a sweep with no rows yet, a store mid-compaction: try again next time
        print(f"{time.strftime('%H:%M:%S')} report not written: {type(error).__name__}: {error}", file=sys.stderr)


def refresh(root: str, name: str, every: float, parent: int, grace_s: float = 30.0) -> None:
    """Write the page every `every` seconds while `parent` holds the sweep's lease (waiting up to `grace_s`
    for it to take the lease first), then once more."""
    deadline = time.monotonic() + grace_s
    while not _parent_holds(root, name, parent):
        if time.monotonic() > deadline:
            return
        time.sleep(POLL_S)
    due = time.monotonic() + every
    while _parent_holds(root, name, parent):
        if time.monotonic() >= due:
            cpu = time.process_time()
            _write(root, name)
            due = time.monotonic() + wait_after(every, time.process_time() - cpu)
        time.sleep(POLL_S)
    _write(root, name)


def wait_after(every: float, page_cpu_s: float) -> float:
    """Seconds to the next page: `every`, or longer when a page took so much CPU that the refresher would use
    more than CPU_SHARE of a core. Even at nice 19 the page slowed a CPU-bound 10,000-job sweep by ~5 %
    (its reads of the store, its caches), so a page's cost sets how often it is drawn."""
    return max(every, page_cpu_s / CPU_SHARE)


def lowest_priority() -> None:
    """nice 19 for this process and for its autogroup. Started in a session of its own, the refresher is
    also a scheduling group of its own where Linux autogroups are on (sched_autogroup_enabled, the default
    of most distributions), and the kernel shares the CPU between groups before it looks at a process's
    nice: at nice 19 alone, a 10,000-job page took half of 2 busy cores for ~10 s (benchmarks/scale.py)."""
    os.nice(19)
    try:
        Path("/proc/self/autogroup").write_text("19")
    except OSError:  # no autogroups (or not Linux): nice is all there is
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Keep a sweep's report page fresh while it runs.")
    parser.add_argument("root")
    parser.add_argument("name")
    parser.add_argument("--every", type=float, default=DEFAULT_EVERY_S)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    lowest_priority()
    refresh(args.root, args.name, args.every, args.parent)


if __name__ == "__main__":
    main()
