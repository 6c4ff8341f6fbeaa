"""A censored job continued from its final checkpoint with a larger `max_steps` is, bit for bit, the job
that had the larger budget from the start -- the basis of `groksweep extend`."""

from __future__ import annotations

import pytest

from trainers import ConfigError, preset, run

CASES = {
    # the tiny MLP, full batch: the short budget ends off the evaluation grid (eval at 155, not the long run's)
    "mlp": dict(stop_on_generalize=False, threads=1, eval_every=10),
    # a transformer with minibatches, warm-up and the Grokfast EMA filter's state
    "transformer": dict(model="transformer", layers=1, d_model=32, heads=4, d_mlp=64, layer_norm=True,
                        op_token=True, batch_size=128, warmup_steps=10, grokfast="ema", threads=1, eval_every=10),
}


def _exact(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if v == v} for row in history]  # NaN (S5-only metric) aside


@pytest.mark.parametrize(("case", "short", "long"), [("mlp", 155, 320), ("mlp", 150, 300),
                                                     ("transformer", 35, 60)])
def test_extended_run_equals_the_longer_run(case, short, long, tmp_path):
    whole = run(preset("tiny", **CASES[case], max_steps=long))
    first = run(preset("tiny", **CASES[case], max_steps=short), checkpoint_dir=tmp_path)
    assert first.steps_run == short and first.history[-1]["step"] == short
    extended = run(preset("tiny", **CASES[case], max_steps=long), checkpoint_dir=tmp_path)

    assert [r["step"] for r in extended.history] == [r["step"] for r in whole.history]
    assert _exact(extended.history) == _exact(whole.history)
    assert extended.events == whole.events and extended.censored == whole.censored
    assert extended.steps_run == long
    if short % 10:  # the off-grid evaluation at the short budget's end is gone
        assert short not in [r["step"] for r in extended.history]


def test_a_checkpoint_resumes_only_under_a_larger_budget(tmp_path):
    run(preset("tiny", max_steps=40, threads=1), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="only a larger max_steps"):
        run(preset("tiny", max_steps=40, threads=1, lr=2e-2), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="only a larger max_steps"):
        run(preset("tiny", max_steps=30, threads=1), checkpoint_dir=tmp_path)
