"""Each preset run on its defaults to its events: a preset is a promise that it groks (long; not in CI).

Prints memorise / generalise steps, the 95% crossing, censoring and wall time per preset. power2022 is
1e5 minibatch steps at most, ~40 ms each; it generalises at 2500 (~2 min). Pass names to run a subset.

    flock /tmp/groksweep-cpu.lock python benchmarks/presets.py gromov nanda2023
"""

from __future__ import annotations

import argparse
import sys

from trainers import preset, run
from trainers.config import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(PRESETS), help="presets to run (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in PRESETS]
    if unknown:
        parser.error(f"unknown presets: {', '.join(unknown)}; choose from {', '.join(PRESETS)}")

    print(f"{'preset':<10} {'memorize':>9} {'generalize':>11} {'gen_95':>7} {'censored':>9} {'steps':>7} "
          f"{'wall_s':>8} {'ms/step':>8}")
    for name in args.names:
        config = preset(name, threads=args.threads)

        def progress(ev, name=name, config=config):
            print(f"\r{name}: step {ev.step}/{config.max_steps} val_acc {ev.metrics['val_acc']:.3f}",
                  end="", file=sys.stderr, flush=True)

        result = run(config, report=progress)
        print("\r", end="", file=sys.stderr)
        e = result.events
        print(f"{name:<10} {e['steps_to_memorize']!s:>9} {e['steps_to_generalize']!s:>11} "
              f"{e['steps_to_generalize_95']!s:>7} {result.censored!s:>9} {result.steps_run:>7} "
              f"{result.wall_s:8.1f} {1000 * result.wall_s / max(result.steps_run, 1):8.2f}", flush=True)


if __name__ == "__main__":
    main()
