"""The trainers, with real training: tasks, presets, grokking itself, censoring, checkpoints in one process."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from trainers import ConfigError, preset, run
from trainers.config import PRESETS
from trainers.metrics import EVENTS, METRICS, PROGRESS, PROGRESS_LISTS
from trainers.tasks import DIVISION_OPS, MODULAR, OPERATIONS, make_dataset

# ----- tasks ----------------------------------------------------------------------------------------------

# Independent of trainers.tasks: plain Python ints, division through Python's own modular inverse.
EXPECTED = {
    "x+y": lambda x, y, p: (x + y) % p,
    "x-y": lambda x, y, p: (x - y) % p,
    "x*y": lambda x, y, p: (x * y) % p,
    "x/y": lambda x, y, p: (x * pow(y, -1, p)) % p,
    "x^2+y^2": lambda x, y, p: (x**2 + y**2) % p,
    "x^2+xy+y^2": lambda x, y, p: (x**2 + x * y + y**2) % p,
    "x^2+xy+y^2+x": lambda x, y, p: (x**2 + x * y + y**2 + x) % p,
    "x^3+xy": lambda x, y, p: (x**3 + x * y) % p,
    "x^3+xy^2+y": lambda x, y, p: (x**3 + x * y**2 + y) % p,
}


def test_every_modular_operation_is_checked():
    assert set(EXPECTED) == set(MODULAR)


@pytest.mark.parametrize("op", sorted(EXPECTED))
def test_modular_labels(op):
    p = 13
    data = make_dataset(op, p, 0.5, seed=0)
    pairs = [(x, y) for x in range(p) for y in range(p) if not (op in DIVISION_OPS and y == 0)]
    assert len(data.labels) == len(pairs)
    for (x, y), a, b, label in zip(pairs, data.a.tolist(), data.b.tolist(), data.labels.tolist(), strict=True):
        assert (a, b) == (x, y)
        assert label == EXPECTED[op](x, y, p), (op, x, y)


@pytest.mark.parametrize("op", ["s5", "s5conj"])
def test_permutation_labels(op):
    perms = list(itertools.permutations(range(5)))  # element i of the task is perms[i]

    def compose(f, g):  # (f . g)(i) = f(g(i))
        return tuple(f[g[i]] for i in range(5))

    def inverse(f):
        return tuple(sorted(range(5), key=lambda i: f[i]))

    data = make_dataset(op, 97, 0.5, seed=0)
    assert len(data.labels) == 120 * 120 and data.n_symbols == 120
    for a, b, label in zip(data.a.tolist(), data.b.tolist(), data.labels.tolist(), strict=True):
        x, y = perms[a], perms[b]
        want = compose(x, y) if op == "s5" else compose(compose(x, y), inverse(x))
        assert perms[label] == want


def test_split_is_deterministic_disjoint_and_covering():
    first = make_dataset("x+y", 23, 0.3, seed=5)
    again = make_dataset("x+y", 23, 0.3, seed=5)
    other = make_dataset("x+y", 23, 0.3, seed=6)
    assert torch.equal(first.train_idx, again.train_idx) and torch.equal(first.val_idx, again.val_idx)
    assert not torch.equal(first.train_idx, other.train_idx)
    train, val = set(first.train_idx.tolist()), set(first.val_idx.tolist())
    assert not train & val
    assert train | val == set(range(23 * 23))
    assert len(train) == round(0.3 * 23 * 23)


def test_division_needs_a_prime():
    with pytest.raises(ConfigError, match="p:"):
        preset("tiny", op="x/y", p=22)
    assert preset("tiny", op="x/y", p=23).op == "x/y"


# ----- presets equal their sources (literal numbers: nobody shrinks a preset to make CI pass) -------------

def test_preset_gromov_is_gromov_2023_on_power_2022_adamw():
    c = preset("gromov")  # Gromov 2023: quadratic 2-layer MLP on one-hot(a)+one-hot(b); p 97, half the data
    assert (c.op, c.p, c.train_fraction, c.model, c.width, c.activation) == ("x+y", 97, 0.5, "mlp", 512, "quadratic")
    assert (c.loss, c.optimizer, c.lr, c.beta1, c.beta2, c.weight_decay) == ("cross_entropy", "adamw", 1e-3, 0.9,
                                                                             0.98, 1.0)
    assert c.batch_size is None


def test_preset_nanda2023():
    c = preset("nanda2023")  # Nanda et al. 2023, section 3: p 113, 30% train, 1 layer, d 128, 4 heads, d_mlp 512
    assert (c.op, c.p, c.train_fraction, c.model, c.layers, c.d_model, c.heads, c.d_mlp) == (
        "x+y", 113, 0.3, "transformer", 1, 128, 4, 512)
    assert (c.layer_norm, c.op_token, c.batch_size) == (False, False, None)  # no LayerNorm, `a b =`, full batch
    assert (c.optimizer, c.lr, c.weight_decay, c.beta1, c.beta2, c.warmup_steps) == ("adamw", 1e-3, 1.0, 0.9, 0.98,
                                                                                     10)


def test_preset_power2022():
    c = preset("power2022")  # Power et al. 2022: x/y mod 97, 2-layer decoder d 128 4 heads, batch 512, 1e5 steps
    assert (c.op, c.p, c.model, c.layers, c.d_model, c.heads, c.op_token) == ("x/y", 97, "transformer", 2, 128, 4,
                                                                              True)
    assert (c.optimizer, c.lr, c.beta1, c.beta2, c.weight_decay, c.warmup_steps) == ("adamw", 1e-3, 0.9, 0.98, 1.0,
                                                                                     10)
    assert (c.batch_size, c.max_steps) == (512, 100_000)


def test_preset_grokfast():
    c = preset("grokfast")  # Lee et al. 2024: EMA filter alpha 0.98, lambda 2; Adam, wd 0.005; 50% data
    assert (c.grokfast, c.grokfast_alpha, c.grokfast_lambda, c.train_fraction, c.p) == ("ema", 0.98, 2.0, 0.5, 97)
    assert (c.optimizer, c.lr, c.weight_decay, c.batch_size) == ("adam", 1e-3, 0.005, 512)
    assert (c.model, c.layers, c.d_model, c.heads) == ("transformer", 2, 128, 4)


def test_every_preset_builds():
    for name in PRESETS:
        assert preset(name).to_dict()["op"] in OPERATIONS


# ----- grokking itself ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gromov_run():
    return run(preset("gromov", threads=2))


def test_gromov_groks(gromov_run):
    events = gromov_run.events
    assert not gromov_run.censored
    assert events["steps_to_generalize"] >= 2 * events["steps_to_memorize"]
    at_memorization = next(h for h in gromov_run.history if h["step"] == events["steps_to_memorize"])
    assert at_memorization["val_acc"] < 0.2
    assert events["grokking_delay"] == events["steps_to_generalize"] - events["steps_to_memorize"]
    # stop_on_generalize: the run ends once val_acc >= 0.99 held for confirm_evals evaluations
    assert gromov_run.steps_run >= events["steps_to_generalize"] + 2 * gromov_run.config.eval_every
    assert all(h["val_acc"] >= 0.99 for h in gromov_run.history[-3:])
    assert gromov_run.final_metrics["val_acc"] >= 0.99


def test_no_weight_decay_is_censored_at_that_budget(gromov_run):
    budget = gromov_run.steps_run
    result = run(preset("gromov", weight_decay=0.0, max_steps=budget, threads=2))
    assert result.censored
    assert result.steps_run == budget
    assert result.events["steps_to_generalize"] is None and result.events["grokking_delay"] is None
    assert result.events["steps_to_memorize"] is not None  # it memorised; it just never generalised


def test_history_has_every_metric_at_every_evaluation(gromov_run):
    history = gromov_run.history
    assert [h["step"] for h in history] == list(range(0, gromov_run.steps_run + 1, 10))
    for row in history:
        assert set(row) == {"step", *METRICS, *PROGRESS, *PROGRESS_LISTS}
    first, last = history[0], history[-1]
    assert last["fourier_sparsity"] > first["fourier_sparsity"]  # the embedding concentrates on few frequencies
    assert all(math.isfinite(h["weight_norm"]) and h["weight_norm"] > 0 for h in history)
    assert all(h["softmax_collapse"] == 0 for h in history)  # weight decay keeps logits finite-scale
    assert set(gromov_run.events) == set(EVENTS)


# ----- the other options run and report (a few steps each) ------------------------------------------------

@pytest.mark.parametrize("overrides", [
    dict(op="s5", p=5, loss="stablemax"),
    dict(op="x/y", loss="mse", optimizer="sgd", momentum=0.9, lr=0.1, batch_size=64),
    dict(grokfast="ma", grokfast_window=3, optimizer="adam", activation="relu", dtype="float64"),
    dict(model="transformer", layers=2, d_model=32, heads=4, d_mlp=64, layer_norm=True, op_token=True,
         grokfast="ema", warmup_steps=5, batch_size=100, init_scale=2.0),
    dict(model="transformer", d_model=32, heads=2, d_mlp=64),
])
def test_options_train(overrides):
    config = preset("tiny", max_steps=30, **overrides)
    seen = []
    result = run(config, report=lambda ev: seen.append(ev.step))
    assert seen == [0, 10, 20, 30] and result.steps_run == 30
    first, last = result.history[0], result.history[-1]
    assert math.isfinite(last["train_loss"]) and last["train_loss"] < first["train_loss"]
    assert math.isnan(last["fourier_sparsity"]) == (config.op == "s5")
    assert result.device == "cpu"


def test_report_can_stop_the_run():
    result = run(preset("tiny"), report=lambda ev: ev.step >= 20)
    assert result.stopped_by_report and result.steps_run == 20 and result.censored


def test_resume_in_process_matches_uninterrupted(tmp_path):
    config = preset("tiny", max_steps=200, stop_on_generalize=False)
    whole = run(config)
    run(config, report=lambda ev: ev.step >= 90, checkpoint_dir=tmp_path, checkpoint_every=3)
    resumed = run(config, checkpoint_dir=tmp_path, checkpoint_every=3)
    assert resumed.history == whole.history
    assert resumed.events == whole.events
    again = run(config, checkpoint_dir=tmp_path)  # resuming a finished run returns at once
    assert again.history == whole.history and again.steps_run == 200


def test_checkpoint_of_another_config_is_refused(tmp_path):
    run(preset("tiny", max_steps=20), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        run(preset("tiny", max_steps=20, seed=1), checkpoint_dir=tmp_path)


def test_replace_keeps_string_fields_whose_value_is_none() -> None:
    # `grokfast="none"` is a value, not a null: replace() round-trips every default config.
    from trainers.config import preset

    config = preset("tiny")
    assert config.replace(seed=1).grokfast == "none"
    assert config.replace(seed=1).seed == 1


def test_checkpoints_every_n_evaluations_but_at_most_one_per_interval(tmp_path):
    config = preset("tiny", max_steps=200, stop_on_generalize=False)
    written: dict[str, list[int]] = {"every": [], "timed": []}
    for name, every_s in (("every", 0.0), ("timed", 3600.0)):
        run(config, report=lambda ev, name=name: written[name].append(ev.step) if ev.checkpoint else None,
            checkpoint_dir=tmp_path / name, checkpoint_every=5, checkpoint_every_s=every_s)
    assert written["every"] == [40, 90, 140, 190, 200]  # evaluations 5, 10, 15, 20 (10 steps apart), the end
    assert written["timed"] == [200]  # an hour between checkpoints: only the one at the end


@pytest.mark.parametrize("activation", ["quadratic", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_gradients_equal_the_dense_one_hot_models_on_both_backward_paths(activation, dtype):
    from trainers.models import MLP

    n, width = 11, 16
    model = MLP(n, width, activation, torch.Generator().manual_seed(0)).to(dtype)
    a, b = torch.randint(0, n, (64,)), torch.randint(0, n, (64,))
    x, labels = model.inputs(a, b), (a + b) % n
    one_hot = torch.cat([F.one_hot(a, n), F.one_hot(b, n)], dim=1).to(dtype)
    w_in, w_out = model.w_in.detach().clone().requires_grad_(), model.w_out.detach().clone().requires_grad_()
    hidden = one_hot @ w_in
    dense = (hidden * hidden if activation == "quadratic" else torch.relu(hidden)) @ w_out.t()
    F.cross_entropy(dense, labels).backward()
    grads = {}
    for path in ("sparse", "index_add"):
        model.zero_grad()
        if path == "index_add":
            model._scatter_matrix = lambda x: None  # the CUDA path
        F.cross_entropy(model(x), labels).backward()
        grads[path] = (model.w_in.grad.clone(), model.w_out.grad.clone())
        torch.testing.assert_close(grads[path][0], w_in.grad)
        torch.testing.assert_close(grads[path][1], w_out.grad)


def test_run_leaves_the_process_as_it_found_it(tmp_path):
    """No process-wide side effects (a notebook calls it): the global torch RNG and thread count are as
    before, also when resuming from a checkpoint (nothing in a run draws from the global RNG)."""
    torch.manual_seed(123)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    run(preset("tiny", max_steps=20, threads=1), checkpoint_dir=tmp_path)
    run(preset("tiny", max_steps=40, threads=1), checkpoint_dir=tmp_path)  # resumed (extended) from step 20
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
