"""Optuna as Tune's searcher: each Optuna trial is one proposed configuration, run as one Tune trial that
packs all its seeds, and told the mean objective over them (one Optuna trial per configuration).

The Optuna journal (`<root>/sweeps/<name>/optuna.journal`, append-only, file-locked) is the searcher's
whole state: nothing is pickled into Tune. On resume, proposals still RUNNING in the journal (asked but
never told: the driver stopped first) are run again with the same values -- their jobs keep their ids,
so jobs already final in the store are not retrained -- and then new ones are asked for until the study
holds `num_samples` trials. Each Optuna trial carries user attributes `trial_ids` and `seeds` naming its
jobs, and each job's row names its Optuna trial number (`optuna_trial`), so optuna-dashboard and the
tables link both ways.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.jobs import optuna_jobs
from orchestrator.reports import PackReport
from orchestrator.spec import SweepSpec, optuna_space

JOURNAL_FILE = "optuna.journal"


def journal_storage(path: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(path))


def optuna_sampler(spec: SweepSpec):
    import optuna

    samplers = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "random": optuna.samplers.RandomSampler,
                "nsga2": optuna.samplers.NSGAIISampler}
    return samplers[spec.sampler](seed=spec.search_seed)


def open_study(spec: SweepSpec, journal_path: str, create: bool = True):
    """The sweep's study (created on first use), with the spec's sampler and directions."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = journal_storage(journal_path)
    if not create:
        return optuna.load_study(study_name=spec.name, storage=storage)
    return optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                               sampler=optuna_sampler(spec), directions=[m.goal for m in spec.metrics])


def unfinished_proposals(study) -> list[tuple[int, dict[str, Any]]]:
    """(number, params) of the trials asked for but never told."""
    import optuna

    return [(t.number, dict(t.params)) for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.RUNNING]


def mean_curve(curves: list[list[tuple[int, float | None]]]) -> list[tuple[int, float]]:
    """(step, val_acc) curves of a proposal's seed jobs -> at each step, the mean over the jobs that reached it."""
    values: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            if value is not None:
                values.setdefault(int(step), []).append(float(value))
    return [(step, sum(v) / len(v)) for step, v in sorted(values.items())]


def stored_curve(root: str, sweep: str, trial_ids: list[str]) -> list[tuple[int, float]]:
    """mean_curve of the jobs' curves as stored (a proposal whose trial did not train every job itself)."""
    from orchestrator import store

    return mean_curve([store.job_curve(root, sweep, trial_id).select("step", "val_acc").rows()
                       for trial_id in trial_ids])


def report_learning_curve(study: Any, number: int, curve: list[tuple[int, float]]) -> int:
    """Give Optuna trial `number` its intermediate values, so that optuna-dashboard draws its learning
    curve: `curve` is mean_curve of its seed jobs. Single-objective studies only (Optuna keeps none for
    several objectives); call before the trial is told. Returns the steps reported."""
    import optuna

    if not curve or len(study.directions) > 1:
        return 0
    frozen = study.get_trials(deepcopy=False)[number]
    trial = optuna.trial.Trial(study, frozen._trial_id)  # Optuna has no public "trial by number" for report()
    done = frozen.intermediate_values  # reported before a crash, the proposal now rerun: not again
    for step, value in curve:
        if step not in done:
            trial.report(value, step)
    return len(curve)


def make_searcher(spec: SweepSpec, journal_path: str, root: str | None = None):
    from ray.tune.search import ConcurrencyLimiter, Searcher

    class ProposalSearcher(Searcher):
        """Re-proposes the journal's unfinished trials, then asks Optuna for new ones up to num_samples."""

        def __init__(self) -> None:
            super().__init__(metric=None, mode=None)
            self.study = open_study(spec, journal_path)
            self.queue = unfinished_proposals(self.study)
            self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
            self.asked = len(self.study.get_trials(deepcopy=False))  # study.trials deep-copies every trial

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            if self.queue:
                number, params = self.queue.pop(0)
            elif self.asked < (spec.num_samples or 0):
                trial = self.study.ask(optuna_space(spec))
                self.asked += 1
                number, params = trial.number, dict(trial.params)
                jobs = optuna_jobs(spec, number, params)
                trial.set_user_attr("trial_ids", [job.job_id for job in jobs])
                trial.set_user_attr("seeds", [job.seed for job in jobs])
            else:
                return Searcher.FINISHED
            self.numbers[trial_id] = number
            return {"optuna_trial": number, **params}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            import optuna

            number = self.numbers.pop(trial_id, None)
            report = PackReport.from_tune(result)
            if number is None:
                return
            if error:  # Tune gave up on the pack (max_failures): its unfinished jobs are marked failed
                self.study.tell(number, state=optuna.trial.TrialState.FAIL)
            elif report is not None and report.pack_done:
                if report.objectives is None:  # a seed's job failed
                    self.study.tell(number, state=optuna.trial.TrialState.FAIL)
                else:
                    values = report.objectives if len(report.objectives) > 1 else report.objectives[0]
                    if root is not None and not spec.multi_objective:
                        curve = report.learning_curve  # None: the trial did not train all its jobs itself
                        if curve is None:
                            trial_ids = self.study.get_trials(deepcopy=False)[number].user_attrs.get("trial_ids", [])
                            curve = stored_curve(root, spec.name, trial_ids)
                        report_learning_curve(self.study, number, [(int(a), float(b)) for a, b in curve])
                    self.study.tell(number, values)
            # else: stopped before its seeds ended (Ctrl-C): it stays RUNNING and `resume` runs it again

        def save(self, checkpoint_path: str) -> None:  # the journal is the state; this is only a note
            with open(checkpoint_path, "w") as out:
                json.dump({"journal": journal_path, "in_flight": self.numbers}, out)

        def restore(self, checkpoint_path: str) -> None:
            pass

    searcher = ProposalSearcher()
    return ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent), searcher


def proposals_this_run(spec: SweepSpec, journal_path: str) -> int:
    """Tune trials a run will make: the unfinished proposals plus the ones still to ask for."""
    study = open_study(spec, journal_path)
    return len(unfinished_proposals(study)) + max(0, (spec.num_samples or 0) - len(study.trials))
