"""Progress measures (trainers/progress.py): against a by-hand computation, the transformer against a textbook
one, and on real runs that grok -- Nanda's picture in the transformer, Gromov's per-neuron one in the MLP."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch

from trainers import preset, run
from trainers.metrics import PROGRESS, PROGRESS_LISTS, val_loss_bump
from trainers.models import build_model
from trainers.progress import ProgressMeter, gini, key_frequencies
from trainers.tasks import make_dataset

# ----- the measures against a straightforward computation ---------------------------------------------


def basis(p: int) -> torch.Tensor:
    """Orthonormal Fourier basis over Z_p as rows: constant, then cos k, sin k for k = 1 .. p // 2."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, p // 2 + 1):
        rows.append(torch.cos(2 * math.pi * k * x / p))
        if 2 * k != p:
            rows.append(torch.sin(2 * math.pi * k * x / p))
    b = torch.stack(rows)
    return b / b.norm(dim=1, keepdim=True)


def rows_of(k: int, p: int) -> list[int]:
    """The basis rows of frequency k."""
    return [2 * k - 1] if 2 * k == p else [2 * k - 1, 2 * k]


def by_hand(config, model, data) -> dict:
    p, b = config.p, basis(config.p)
    k_max = p // 2
    with torch.no_grad():
        emb = model.embedding().double()
        proj = b @ emb  # (p, d)
        power = torch.stack([proj[rows_of(k, p)].pow(2).sum() for k in range(1, k_max + 1)])
        # Gini from its definition: mean absolute difference over twice the mean
        n = len(power)
        g = float((power[:, None] - power[None, :]).abs().sum() / (2 * n * n * power.mean()))
        keys = None
        for size in range(1, n + 1):  # the smallest set holding 90 %: strongest first
            top = torch.argsort(-power, stable=True)[:size]
            if power[top].sum() >= 0.9 * power.sum():
                keys = sorted((top + 1).tolist())
                break
        inputs = model.inputs(data.a, data.b)
        logits = model(inputs).double()
        tr, va = data.train_idx, data.val_idx
        # key directions as functions of s (the answer), fitted to the held-out logits' mean per s
        means = torch.stack([logits[va][data.labels[va] == s].mean(0) for s in range(p)])  # (p, c)
        key_rows = [r for k in keys for r in rows_of(k, p)]
        circuit = b[key_rows].t() @ (b[key_rows] @ means)  # (p, c)
        kept = circuit[data.labels[va]]
        restricted = kept + (logits[va] - kept).mean(0)
        r_loss = torch.nn.functional.cross_entropy(restricted, data.labels[va]).item()
        x_loss = torch.nn.functional.cross_entropy(logits[tr] - circuit[data.labels[tr]], data.labels[tr]).item()
        out = dict(fourier_spectrum=power.sqrt().tolist(), fourier_gini=g, key_frequencies=keys,
                   restricted_loss=r_loss, excluded_loss=x_loss)
        if config.model == "mlp":
            shares = []
            for j in range(config.width):
                w = torch.stack([model.w_in[:p, j], model.w_in[p:, j]], 1).double()  # (p, 2): a's and b's weights
                per_k = torch.stack([(b @ w)[rows_of(k, p)].pow(2).sum() for k in range(1, k_max + 1)])
                shares.append(per_k.max() / per_k.sum())
            out["neuron_frequency_share"] = float(torch.stack(shares).mean())
        else:
            acts = model.neurons(inputs).double().reshape(p, p, -1)
            acts = acts - acts.mean((0, 1))
            coef = torch.einsum("ia,jb,abn->ijn", b, b, acts)  # 2-D transform over (a, b)
            per_k = torch.stack([coef[[0, *rows_of(k, p)]][:, [0, *rows_of(k, p)]].pow(2).sum((0, 1))
                                 - coef[0, 0].pow(2) for k in range(1, k_max + 1)])
            out["neuron_frequency_share"] = float((per_k.max(0).values / per_k.sum(0)).mean())
    return out


@pytest.mark.parametrize(("op", "model", "p"), [("x+y", "mlp", 11), ("x-y", "mlp", 12), ("x+y", "transformer", 11),
                                                ("x-y", "transformer", 10)])
def test_measures_equal_a_by_hand_projection(op, model, p):
    config = preset("tiny", op=op, p=p, model=model, width=16, d_model=16, heads=2, d_mlp=24, dtype="float64",
                    progress_measures="full")
    data = make_dataset(op, p, 0.5, seed=0)
    net = build_model(config, p).double()
    with torch.no_grad():  # a trained-looking model: some frequencies stronger than others
        generator = torch.Generator().manual_seed(1)
        for parameter in net.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    meter = ProgressMeter("full", op, p, "cross_entropy", model, data.labels, data.train_idx, data.val_idx,
                          net.inputs(data.a, data.b), torch.float64)
    inputs = net.inputs(data.a, data.b)
    with torch.no_grad():
        got = meter(net, net(inputs[data.train_idx]), net(inputs[data.val_idx]))
    want = by_hand(config, net, data)
    assert set(got) == {*PROGRESS, *PROGRESS_LISTS}
    assert got["key_frequencies"] == want["key_frequencies"]
    assert got["fourier_spectrum"] == pytest.approx(want["fourier_spectrum"], rel=1e-9)
    for name in ("fourier_gini", "restricted_loss", "excluded_loss", "neuron_frequency_share"):
        assert got[name] == pytest.approx(want[name], rel=1e-9), name
    total = sum(p_.detach().pow(2).sum() for p_ in net.parameters()).sqrt()
    groups = [got[f"weight_norm_{g}"] for g in ("embedding", "attention", "mlp", "unembedding")]
    assert math.sqrt(sum(v * v for v in groups if v is not None)) == pytest.approx(float(total), rel=1e-12)
    assert (groups[1] is None) == (model == "mlp")
    assert sum(got["neuron_frequencies"]) == (16 if model == "mlp" else 24)


def test_gini_and_key_frequency_rule_on_known_spectra():
    assert float(gini(torch.ones(1, 10))) == pytest.approx(0.0)
    assert float(gini(torch.tensor([[0.0, 0, 0, 4]]))) == pytest.approx(0.75)  # one of n holds all: (n - 1) / n
    assert key_frequencies(torch.tensor([1.0, 8, 1, 0])) == [1, 2]  # 8 of 10 < 90 %, then the lower of a tie
    assert key_frequencies(torch.tensor([0.5, 9.5, 0, 0])) == [2]


def test_other_operations_get_nulls_and_none_gets_no_columns():
    cheap = run(preset("tiny", op="x*y", max_steps=20, threads=1))
    row = cheap.history[-1]
    assert all(row[name] is None for name in ("fourier_spectrum", "key_frequencies", "restricted_loss"))
    assert row["weight_norm_embedding"] > 0 and row["weight_norm_attention"] is None
    none = run(preset("tiny", max_steps=20, threads=1, progress_measures="none"))
    assert not set(none.history[-1]) & {*PROGRESS, *PROGRESS_LISTS}
    # the measures never change the training
    assert [h["train_loss"] for h in none.history] == [h["train_loss"] for h in run(
        preset("tiny", max_steps=20, threads=1, progress_measures="full")).history]


# ----- the transformer computes what a textbook transformer computes ------------------------------------

def textbook(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position through every layer, standard causal masked attention: (logits at the last position,
    the last block's MLP activations there)."""
    x = model.embed[tokens] + model.pos  # (B, T, d)
    B, T, d = x.shape
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    for block in model.blocks:
        H = block.heads
        q, k, v = (block.ln_attn(x) @ block.w_qkv).split(d, -1)
        q, k, v = (t.reshape(B, T, H, d // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, dh)
        att = (q @ k.transpose(-1, -2) / math.sqrt(d // H)).masked_fill(mask, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(B, T, d) @ block.w_o
        hidden = torch.relu(block.ln_mlp(x) @ block.w_in + block.b_in)  # (B, T, d_mlp)
        x = x + hidden @ block.w_out + block.b_out
    return (model.ln_final(x) @ model.unembed)[:, -1], hidden[:, -1]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("op_token", [False, True])
def test_transformer_equals_a_textbook_transformer(layers, layer_norm, op_token):
    config = preset("tiny", model="transformer", p=13, layers=layers, d_model=32, heads=4, d_mlp=48,
                    layer_norm=layer_norm, op_token=op_token, dtype="float64")
    model = build_model(config, 13).double()
    with torch.no_grad():  # random weights everywhere, biases and LayerNorm parameters included
        generator = torch.Generator().manual_seed(3)
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    data = make_dataset("x+y", 13, 0.5, seed=0)
    tokens = model.inputs(data.a, data.b)
    with torch.no_grad():
        logits, neurons = textbook(model, tokens)
        assert torch.allclose(model(tokens), logits, rtol=1e-10, atol=1e-10)
        assert torch.allclose(model.neurons(tokens), neurons, rtol=1e-10, atol=1e-10)


# ----- on real runs: both pictures read correctly ---------------------------------------------------------

def circuit_step(history: list[dict], p: int, memorized: int) -> int | None:
    """First evaluation at or after memorisation with restricted_loss <= 0.1 ln p."""
    return next((h["step"] for h in history if h["step"] >= memorized and h["restricted_loss"] <= 0.1 * math.log(p)),
                None)


@pytest.fixture(scope="module")
def transformer_run():
    return run(preset("tiny_transformer", threads=1))


def test_transformer_circuit_forms_before_the_jump(transformer_run):
    result = transformer_run
    h = {row["step"]: row for row in result.history}
    memorized, generalized = result.events["steps_to_memorize"], result.events["steps_to_generalize"]
    assert memorized is not None and generalized is not None and generalized > 4 * memorized
    circuit = circuit_step(result.history, 31, memorized)
    assert circuit is not None and circuit < generalized
    assert result.events["circuit_step"] == circuit  # the event the rows carry, as computed by hand here
    assert h[circuit]["val_acc"] < 0.9 and h[circuit]["val_loss"] > 1  # far from generalised on each input
    # excluded loss rises during the plateau while the training loss stays low
    assert all(h[s]["train_loss"] < 0.01 for s in h if memorized <= s <= generalized)
    assert h[circuit]["excluded_loss"] > 1.2 * h[memorized]["excluded_loss"]  # measured: 2.9 -> 3.8 -> 6.0
    assert h[generalized]["excluded_loss"] > 1.8 * h[memorized]["excluded_loss"]
    # the embedding concentrates on few frequencies
    assert h[generalized]["fourier_gini"] > 2 * h[memorized]["fourier_gini"]
    assert len(h[generalized]["key_frequencies"]) < len(h[memorized]["key_frequencies"])


def test_transformer_without_weight_decay_forms_no_circuit(transformer_run):
    result = run(preset("tiny_transformer", weight_decay=0.0, max_steps=500, threads=1))
    assert result.censored
    memorized = result.events["steps_to_memorize"]
    assert circuit_step(result.history, 31, memorized) is None
    assert result.events["circuit_step"] is None
    ginis = [h["fourier_gini"] for h in result.history if h["step"] >= memorized]
    assert max(ginis) - min(ginis) < 0.05  # flat, against ~0.4 with weight decay
    grokked = {row["step"]: row for row in transformer_run.history}
    assert ginis[-1] < grokked[transformer_run.events["steps_to_generalize"]]["fourier_gini"] - 0.2


def test_mlp_neurons_each_take_one_frequency_and_restricted_loss_leads():
    result = run(preset("tiny", eval_every=20, threads=1))  # Gromov's quadratic MLP at p = 31
    h = {row["step"]: row for row in result.history}
    memorized, generalized = result.events["steps_to_memorize"], result.events["steps_to_generalize"]
    assert h[result.steps_run]["neuron_frequency_share"] > h[memorized]["neuron_frequency_share"] + 0.3
    # the embedding as a whole does not concentrate (nearly all frequencies in use): Gromov's picture
    assert len(h[result.steps_run]["key_frequencies"]) >= 12
    # restricted loss sits below validation loss through the plateau and reaches half of ln p first
    jump = min(s for s in h if h[s]["val_acc"] >= 0.9)
    assert all(h[s]["restricted_loss"] < h[s]["val_loss"] for s in h if memorized <= s <= jump)
    half = 0.5 * math.log(31)
    first_r = min(s for s in h if h[s]["restricted_loss"] <= half)
    first_v = min(s for s in h if h[s]["val_loss"] <= half)
    assert first_r < first_v <= generalized


# ----- fields added later: an older checkpoint resumes with the field's default -------------------------

def test_checkpoint_from_before_a_field_existed_resumes_with_its_default(tmp_path):
    from trainers import checkpoint

    config = preset("tiny", max_steps=60, stop_on_generalize=False, threads=1)
    whole = run(config).history
    run(config.replace(max_steps=30), checkpoint_dir=tmp_path)  # a checkpoint written by the current code ...
    saved = checkpoint.latest(tmp_path)
    state = checkpoint.load(saved)
    del state["config"]["progress_measures"]  # ... as a version without the field would have written it
    state["config"]["max_steps"] = 60
    torch.save(state, saved / checkpoint.STATE_FILE)
    resumed = run(config, checkpoint_dir=tmp_path).history
    assert resumed == whole
    with pytest.raises(Exception, match="another config"):  # a different value is still another config
        run(config.replace(progress_measures="full"), checkpoint_dir=tmp_path)


# ----- through the store and the CLI: list columns survive every output; `inspect` draws a job ----------

def test_list_columns_survive_parquet_csv_json_and_inspect_draws_the_job(tmp_path):
    import csv
    import io
    import json

    from typer.testing import CliRunner

    from orchestrator import store
    from orchestrator.cli import app

    runner = CliRunner()
    results = str(tmp_path / "results")
    trained = runner.invoke(app, ["train", "--preset", "tiny", "--set", "threads=1", "--set", "max_steps=100",
                                  "--results", results])
    assert trained.exit_code == 0, trained.output
    curve = store.curves(results).sort("step").collect()
    assert curve.schema["fourier_spectrum"] == store.CURVE_SCHEMA["fourier_spectrum"]
    last = curve.row(-1, named=True)
    assert len(last["fourier_spectrum"]) == 15 and all(1 <= k <= 15 for k in last["key_frequencies"])
    assert last["neuron_frequencies"] is None  # `full` only
    sql = "select step, fourier_spectrum, key_frequencies, neuron_frequencies from curves order by step"
    as_csv = runner.invoke(app, ["query", sql, "--results", results, "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert json.loads(rows[-1]["fourier_spectrum"]) == last["fourier_spectrum"]  # exact: shortest round-trip text
    assert json.loads(rows[-1]["key_frequencies"]) == last["key_frequencies"]
    assert rows[-1]["neuron_frequencies"] == ""
    as_json = runner.invoke(app, ["query", sql, "--results", results, "--format", "json"])
    assert json.loads(as_json.stdout)[-1]["key_frequencies"] == last["key_frequencies"]

    trial_id = store.trials(results).collect()["trial_id"][0]
    png = tmp_path / "job.png"
    drawn = runner.invoke(app, ["inspect", "train", trial_id, "--results", results, "--output", str(png)])
    assert drawn.exit_code == 0, drawn.output
    assert drawn.stdout.strip() == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = runner.invoke(app, ["inspect", "train", "t000000000000", "--results", results])
    assert missing.exit_code != 0 and "no curve stored" in missing.output


# ----- the double-descent bump: synthetic curves -------------------------------------------------------------

def _curve(val_losses: list[float]) -> list[dict]:
    return [{"step": 10 * i, "val_loss": v} for i, v in enumerate(val_losses)]


def test_val_loss_bump_on_synthetic_curves():
    # memorised at step 30 (val_loss 2.0 there); rises to ~4 around step 80, then falls below 1
    bumped = _curve([3.0, 2.5, 2.2, 2.0, 2.0, 2.5, 3.5, 4.0, 4.2, 4.0, 3.5, 2.0, 1.0, 0.5, 0.3, 0.2, 0.2])
    found = val_loss_bump(bumped, memorized=30)
    assert found["val_loss_peak_step"] == 80  # the centred 5-point mean peaks at step 80: (3.5+4+4.2+4+3.5)/5
    assert found["val_loss_peak"] == pytest.approx((3.5 + 4.0 + 4.2 + 4.0 + 3.5) / 5)
    monotone = _curve([3.0, 2.5, 2.2, 2.0, 1.8, 1.5, 1.2, 1.0, 0.8, 0.5, 0.3, 0.2])
    assert val_loss_bump(monotone, memorized=30) == {"val_loss_peak_step": None, "val_loss_peak": None}
    never_falls = _curve([3.0, 2.5, 2.2, 2.0, 2.0, 2.5, 3.5, 4.0, 4.2, 4.3, 4.4, 4.5])
    assert val_loss_bump(never_falls, memorized=30)["val_loss_peak_step"] is None  # no later fall to half
    assert val_loss_bump(bumped, memorized=None)["val_loss_peak_step"] is None  # never memorised


def test_rows_carry_circuit_step_and_bump_and_study_treats_circuit_step_as_censored(transformer_run):
    from orchestrator.jobs import outcome_from_curve
    from orchestrator.studies import time_to_event

    outcome = outcome_from_curve(transformer_run.history, p=31)
    assert outcome["circuit_step"] == transformer_run.events["circuit_step"] is not None
    assert set(outcome) >= {"val_loss_peak_step", "val_loss_peak"}
    rows = pl.DataFrame([{"circuit_step": outcome["circuit_step"], "steps_run": 800, "steps_to_memorize": 100},
                         {"circuit_step": None, "steps_run": 500, "steps_to_memorize": 100}])
    timed = time_to_event(rows, "circuit_step")
    assert timed["_observed"].to_list() == [True, False]
    assert timed["_time"].to_list() == [float(outcome["circuit_step"]), 500.0]  # censored at steps_run
