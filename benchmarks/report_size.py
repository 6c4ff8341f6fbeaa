"""Size and open time of `groksweep report` on a synthetic 10,000-job sweep (targets: <= 20 MB, opens in
<= 10 s), written with the store's own functions (tests/synthetic.py: rows, curves, compaction).

    flock /tmp/groksweep-cpu.lock python benchmarks/report_size.py --jobs 10000

Open time: chromium (headless, the distribution's) from navigation to every figure drawn.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import browser  # noqa: E402
import synthetic  # noqa: E402

from orchestrator import report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="about this many jobs: 10 x 10 grid x seeds")
    parser.add_argument("--dir", default=None, help="keep the store and page here (default: a temp dir)")
    args = parser.parse_args()
    seeds = max(1, round(args.jobs / 100))
    folder = Path(args.dir or tempfile.mkdtemp(prefix="report-size-"))
    root = folder / "results"
    start = time.perf_counter()
    if not (root / "trials").exists():
        synthetic.write_sweep(root, name="big", weight_decays=tuple(round(0.05 * 1.5 ** i, 4) for i in range(10)),
                              lrs=tuple(round(1e-3 * 1.3 ** i, 6) for i in range(10)), seeds=seeds,
                              fail_every=97, extra_measures=True)
        print(f"store: {100 * seeds} jobs written in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    page = report.write_report(["big"], folder / "big.html", root)
    print(f"report written in {time.perf_counter() - start:.1f} s: {page.stat().st_size / 1e6:.2f} MB")
    seen = browser.visit(page, hover_figure="fig-curves")
    figures = ", ".join(f"{k}:{v['traces']}" for k, v in seen.figures.items())
    print(f"opened in chromium in {seen.open_s:.2f} s; console errors {len(seen.console_errors)}, "
          f"requests {len(seen.requests)}, figures {figures}, hover: {seen.hover_text!r}")


if __name__ == "__main__":
    main()
