"""Grokking-aware stopping: when a trial may end, and when it must not.

Stopping a grokking run early makes it look like a failure: validation accuracy sits flat near chance
for thousands of steps after memorisation, then jumps. A scheduler that compares validation curves at
rungs (ASHA, median stopping, HyperBand) switches off exactly the runs that were about to grok. So:

- a trial ends when it has generalised (val_acc >= 0.99, confirmed for `confirm_evals` evaluations) or
  when its `max_steps` budget is spent -- both decided by the trainer itself (`stop_on_generalize`);
- optionally (spec `prune: {not_memorized_by: STEP}`) a trial that has not even memorised its training
  set by STEP ends early: no memorisation, no grokking to wait for;
- nothing ever stops a trial for a flat validation curve. The Tune scheduler is FIFO.

tests/test_stopping.py shows the difference on real runs: ASHA on val_acc kills a trial that, left
alone, groks; this policy lets it grok.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GrokkingPolicy:
    not_memorized_by: int | None = None  # prune a trial whose train_acc has not reached 0.99 by this step

    def should_prune(self, step: int, steps_to_memorize: int | None) -> bool:
        """True when the trial should end now: past the pruning step without having memorised."""
        return self.not_memorized_by is not None and step >= self.not_memorized_by and steps_to_memorize is None


def scheduler():
    """The Tune scheduler groksweep uses: FIFO, i.e. no early stopping on the validation curve."""
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()
