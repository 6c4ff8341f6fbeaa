"""The batched model (trainers/batched.py) on CPU: each member gives what it gives alone.

A short `tiny` grid (lr x weight decay x seed, one member that generalises and stops early, one that stops
at a smaller budget): in float64 every member's events equal its run alone and its curve agrees to ~1e-12;
in float32 the events equal too and the curves agree within float tolerance. Then the other model, losses
and optimisers, both ways of dropping ended members, and checkpoints that either trainer resumes.
"""

from __future__ import annotations

import math

import pytest

from trainers import preset, run
from trainers.batched import run_batched
from trainers.batching import batching_key
from trainers.config import ConfigError

GRID = [  # (lr, weight_decay, seed, max_steps): the first and fourth generalise at 240 and stop at 260
    (1e-2, 3.0, 0, 300), (1e-2, 1.0, 1, 300), (3e-3, 3.0, 2, 300), (1e-2, 3.0, 3, 300), (5e-3, 2.0, 0, 120)]


def grid(dtype: str, **overrides) -> list:
    return [preset("tiny", lr=lr, weight_decay=wd, seed=seed, max_steps=steps, dtype=dtype, threads=1, **overrides)
            for lr, wd, seed, steps in GRID]


def max_curve_diff(alone, batched) -> float:
    """Largest absolute difference of any metric at any evaluation (NaN metrics skipped), after checking
    that both have the same evaluation steps."""
    worst = 0.0
    for a, b in zip(alone, batched, strict=True):
        assert [r["step"] for r in a.history] == [r["step"] for r in b.history]
        for x, y in zip(a.history, b.history, strict=True):
            assert x.keys() == y.keys()
            for k in x:
                if x[k] is None or y[k] is None:  # a progress measure not defined here: on both sides
                    assert x[k] is None and y[k] is None, k
                elif isinstance(x[k], list):  # fourier_spectrum, key_frequencies, ...
                    assert len(x[k]) == len(y[k]), k
                    worst = max([worst] + [abs(u - v) for u, v in zip(x[k], y[k], strict=True)])
                elif not math.isnan(x[k]):
                    worst = max(worst, abs(x[k] - y[k]))
    return worst


@pytest.fixture(scope="module")
def alone64():
    return [run(c) for c in grid("float64")]


@pytest.fixture(scope="module")
def batched64():
    return run_batched(grid("float64"))


@pytest.mark.parametrize("ended", ["compact", "mask"])
def test_float64_members_have_the_events_and_curves_of_their_runs_alone(alone64, batched64, ended):
    batched = batched64 if ended == "compact" else run_batched(grid("float64"), ended=ended)
    assert [b.events for b in batched] == [a.events for a in alone64]
    assert [b.steps_run for b in batched] == [a.steps_run for a in alone64] == [260, 300, 300, 260, 120]
    assert [b.censored for b in batched] == [a.censored for a in alone64] == [False, True, True, False, True]
    assert max_curve_diff(alone64, batched) < 1e-11


def test_float32_members_match_their_runs_alone_within_float_tolerance():
    configs = grid("float32")
    alone, batched = [run(c) for c in configs], run_batched(configs)
    assert [b.events for b in batched] == [a.events for a in alone]
    assert max_curve_diff(alone, batched) < 1e-4  # weight_norm ~30: ~1e-7 relative


VARIANTS = {  # the transformer and everything else a member may carry, in float64, a few evaluations each
    "transformer, LayerNorm, op token, warm-up, full measures": dict(
        model="transformer", d_model=32, heads=4, d_mlp=64, layers=2, layer_norm=True, op_token=True, warmup_steps=5,
        progress_measures="full"),
    "transformer, adam (L2), Grokfast EMA, minibatches": dict(model="transformer", d_model=32, heads=4, d_mlp=64,
                                                              optimizer="adam", grokfast="ema", batch_size=32),
    "relu MLP, SGD with momentum, mse, minibatches": dict(width=64, activation="relu", optimizer="sgd",
                                                          loss="mse", batch_size=50),
    "MLP, stablemax, init_scale": dict(width=64, loss="stablemax", init_scale=0.5),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_model_loss_and_optimiser_matches_its_runs_alone(name):
    members = [dict(seed=0, lr=1e-2, weight_decay=1.0, momentum=0.0, beta2=0.98),
               dict(seed=1, lr=5e-3, weight_decay=0.0, momentum=0.9, beta2=0.99, grokfast_alpha=0.9),
               dict(seed=2, lr=1e-2, weight_decay=3.0, momentum=0.5, beta1=0.8, grokfast_lambda=1.0)]
    configs = [preset("tiny", p=13, max_steps=40, dtype="float64", threads=1, **VARIANTS[name], **m) for m in members]
    if configs[0].optimizer == "sgd":
        configs = [c.replace(lr=c.lr * 10) for c in configs]
    alone, batched = [run(c) for c in configs], run_batched(configs)
    assert [b.events for b in batched] == [a.events for a in alone]
    assert max_curve_diff(alone, batched) < 1e-11


def crash_at(step):
    def report(ev):
        if ev.step >= step:
            raise RuntimeError("crash")
    return report


@pytest.mark.parametrize("crashing", [3, 2])
def test_checkpoints_resume_in_either_trainer(tmp_path, batched64, crashing):
    """A crash in the middle resumes to the uninterrupted curves: bit for bit when every member had saved
    the same step (member 3 crashes last at 150), to rounding when members were left at different steps
    (member 2 crashes: 0 and 1 saved 150, 2 and 3 140), as the reductions then run over stacks of other
    sizes. A member's checkpoint is a trainers.run checkpoint and the other way round."""
    configs = grid("float64")
    dirs = [tmp_path / f"m{i}" for i in range(len(configs))]
    whole = batched64
    reports = [crash_at(150) if i == crashing else None for i in range(len(configs))]
    with pytest.raises(RuntimeError, match="crash"):
        run_batched(configs, reports, dirs, checkpoint_every=1)
    ended = []
    resumed = run_batched(configs, None, dirs, checkpoint_every=1, on_end=lambda i, r: ended.append(i))
    assert sorted(ended) == list(range(len(configs))) and ended[0] == 4  # the 120-step member ends first
    assert [r.events for r in resumed] == [w.events for w in whole]
    if crashing == 3:
        assert [r.history for r in resumed] == [w.history for w in whole]
    else:
        assert max_curve_diff(resumed, whole) < 1e-11

    alone = run(configs[1], checkpoint_dir=dirs[1])  # the final batched checkpoint: nothing left to train
    assert alone.history == resumed[1].history and alone.steps_run == 300

    single_dir = tmp_path / "single"
    first = run(configs[2], report=lambda ev: ev.step >= 150, checkpoint_dir=single_dir, checkpoint_every=1)
    assert first.stopped_by_report and first.steps_run == 150  # a run() checkpoint at 150 ...
    rest = run_batched([configs[2], configs[0]], None, [single_dir, None])  # ... resumed in a batch
    assert rest[0].history[:len(first.history)] == first.history
    assert rest[0].events == whole[2].events and max_curve_diff([rest[0]], [whole[2]]) < 1e-11


def test_batching_key_lets_scalars_differ_but_not_shapes():
    a = preset("tiny", lr=1e-2, weight_decay=1.0, seed=0, max_steps=100)
    assert batching_key(a) == batching_key(a.replace(lr=3e-3, weight_decay=0.1, seed=7, max_steps=50, beta2=0.99))
    assert batching_key(a) != batching_key(a.replace(width=64))
    assert batching_key(a.replace(grokfast="ma")) is None
    with pytest.raises(ConfigError, match="batching_key"):
        run_batched([a, a.replace(p=13)])


def test_spec_key_batched_takes_auto_on_off_and_yaml_booleans():
    import yaml

    from orchestrator import UserError
    from orchestrator.spec import parse_spec

    base = {"name": "b", "base": {"preset": "tiny"}}
    assert parse_spec(base).batched == "auto"
    assert parse_spec({**base, **yaml.safe_load("batched: on")}).batched == "on"  # YAML 1.1: a bare on is true
    assert parse_spec({**base, **yaml.safe_load("batched: off")}).batched == "off"
    with pytest.raises(UserError, match="batched: 'sometimes' is not allowed; choose one of auto, on, off"):
        parse_spec({**base, "batched": "sometimes"})


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA (not run on this suite's CI)")
def test_on_cuda_members_have_the_events_of_their_runs_alone(alone64):
    batched = run_batched(grid("float64"))  # both pick CUDA themselves
    assert all(b.device.startswith("cuda") for b in batched)
    assert [b.events for b in batched] == [a.events for a in alone64]
    assert max_curve_diff(alone64, batched) < 1e-9
    again = run_batched(grid("float64"))  # deterministic kernels (trainers.loop.pick_device): bit for bit
    assert [r.history for r in again] == [r.history for r in batched]
    assert run(grid("float64")[0]).history == alone64[0].history


def test_batched_members_extend_from_their_checkpoints_like_the_longer_run(tmp_path):
    """`extend` on a batched pack: each member continues from its final checkpoint (off the eval grid) to a
    larger budget and ends as the member run alone with that budget from the start."""
    short = [preset("tiny", lr=lr, weight_decay=wd, seed=seed, max_steps=105, dtype="float64", threads=1)
             for lr, wd, seed, _ in GRID[:3]]
    longer = [preset("tiny", lr=lr, weight_decay=wd, seed=seed, max_steps=280, dtype="float64", threads=1)
              for lr, wd, seed, _ in GRID[:3]]
    dirs = [tmp_path / str(i) for i in range(3)]
    run_batched(short, checkpoint_dirs=dirs)
    extended = run_batched(longer, checkpoint_dirs=dirs)
    alone = [run(c) for c in longer]
    assert [r.events for r in extended] == [r.events for r in alone]
    assert max_curve_diff(alone, extended) < 1e-12
    assert all(105 not in [row["step"] for row in r.history] for r in extended)


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_device_operations_per_step_and_evaluation_do_not_grow_with_members(model):
    """On a GPU a small job's time is kernel launches, so what a batched model buys is issuing the same
    operations for K members as for one. Counted with torch's profiler on CPU: 20 more training steps and
    one more evaluation (with the progress measures) issue as many operations at K = 8 as at K = 2. A loop
    over members anywhere in them (the progress measures were one) makes the counts differ. Top-level
    operations only (those our code and autograd issue): inside one, CPU kernels may branch on sizes."""
    from torch.profiler import profile

    shape = dict(model=model, d_model=32, heads=4, d_mlp=64) if model == "transformer" else dict(width=64)

    def operations(k: int, steps: int) -> int:
        configs = [preset("tiny", p=13, lr=lr, weight_decay=wd, seed=s, max_steps=steps, eval_every=20, threads=1,
                          **shape) for s, (lr, wd) in enumerate([(1e-2, 1.0), (3e-3, 2.0)] * (k // 2))]
        with profile() as prof:
            results = run_batched(configs)
        assert [r.steps_run for r in results] == [steps] * k  # nobody left early
        return sum(event.cpu_parent is None for event in prof.events())

    extra = {k: operations(k, 40) - operations(k, 20) for k in (2, 8)}
    assert extra[2] > 100  # the profiler saw the steps
    assert extra[8] == extra[2], extra
