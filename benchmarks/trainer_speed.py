"""Our trainer against a frozen reference loop, side by side: ms/step, ratio, useful GFLOP/step, share of peak.

The reference is written the way the popular grokking reimplementations are: the MLP multiplies a dense
one-hot matrix by an nn.Linear, the transformer runs all positions through every layer and unembeds them
all, and the loop is plain PyTorch (autograd everywhere, default allocator). Both sides get the same
seed, data split, initial weights (copied from ours), float32, thread count, optimiser settings and
evaluation schedule (full-batch loss and accuracy on train and validation at every `eval_every`).
Each side runs in its own fresh process, one after the other.

Counting: "useful GFLOP/step" counts 2*m*n*k per matrix product that the answer needs (forward, and in
backward the input- and weight-gradients), plus the evaluation forward pass over the whole dataset
divided by eval_every. Element-wise work is not counted; neither is what cannot reach the answer
(the one-hot product, positions other than `=` in the last layer). The same figure is used for both sides.

    flock /tmp/groksweep-cpu.lock python benchmarks/trainer_speed.py            # ms/step, ~1 minute
    flock /tmp/groksweep-cpu.lock python benchmarks/trainer_speed.py --full     # also whole runs: events

Against the reference our side runs with progress_measures=none (the reference computes none); then the
cost of the progress measures: ours with `cheap` (and `full`) against `none`, in adjacent pairs of fresh
processes, the order alternating, at each preset's default eval_every.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from trainers import preset, run
from trainers.config import TrainConfig
from trainers.metrics import EventTracker
from trainers.models import build_model
from trainers.tasks import make_dataset

PRESETS = ("gromov", "nanda2023")
THREADS = 2


# ----- the frozen reference -----------------------------------------------------------------------------

class ReferenceMLP(nn.Module):
    """Dense one-hot input through nn.Linear, as in most Gromov-style reimplementations."""

    def __init__(self, n: int, width: int):
        super().__init__()
        self.l1 = nn.Linear(2 * n, width, bias=False)
        self.l2 = nn.Linear(width, n, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.l1(x) ** 2)


class ReferenceTransformer(nn.Module):
    """Nanda 2023 style: every position through the block, logits for all positions, then [:, -1]."""

    def __init__(self, ours: nn.Module):
        super().__init__()
        self.embed, self.pos, self.unembed, self.ln_final = ours.embed, ours.pos, ours.unembed, ours.ln_final
        self.blocks = ours.blocks  # parameters only: the forward below is the reference's own

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed[tokens] + self.pos  # (B, T, d)
        T = x.shape[1]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        for block in self.blocks:
            d, H = x.shape[-1], block.heads
            q, k, v = (block.ln_attn(x) @ block.w_qkv).split(d, -1)
            q, k, v = (t.reshape(*t.shape[:2], H, d // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, dh)
            scores = (q @ k.transpose(-1, -2) / math.sqrt(d // H)).masked_fill(mask, float("-inf"))
            z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
            x = x + z @ block.w_o
            x = x + torch.relu(block.ln_mlp(x) @ block.w_in + block.b_in) @ block.w_out + block.b_out
        return (self.ln_final(x) @ self.unembed)[:, -1]


def reference_run(config: TrainConfig, on_eval) -> None:
    """The reference loop: same data, initial weights, optimiser, warm-up and evaluation schedule."""
    data = make_dataset(config.op, config.p, config.train_fraction, config.seed)
    ours = build_model(config, data.n_symbols)
    n = data.n_symbols
    if config.model == "mlp":
        model = ReferenceMLP(n, config.width)
        with torch.no_grad():
            model.l1.weight.copy_(ours.w_in.t())
            model.l2.weight.copy_(ours.w_out)
        inputs = torch.cat([F.one_hot(data.a, n), F.one_hot(data.b, n)], dim=1).float()  # (N, 2n)
    else:
        model = ReferenceTransformer(ours)
        inputs = ours.inputs(data.a, data.b)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    warmup = max(config.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    x_train, y_train = inputs[data.train_idx], data.labels[data.train_idx]
    x_val, y_val = inputs[data.val_idx], data.labels[data.val_idx]
    for step in range(config.max_steps + 1):
        if step % config.eval_every == 0 or step == config.max_steps:
            with torch.no_grad():
                row = {"step": step}
                for split, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
                    logits = model(x)
                    row[f"{split}_loss"] = F.cross_entropy(logits, y).item()
                    row[f"{split}_acc"] = (logits.argmax(-1) == y).float().mean().item()
            if on_eval(row):
                return
        if step == config.max_steps:
            return
        loss = F.cross_entropy(model(x_train), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


# ----- measurement ----------------------------------------------------------------------------------------

def useful_gflop_per_step(config: TrainConfig) -> float:
    n_all = len(make_dataset(config.op, config.p, config.train_fraction, config.seed).labels)
    n_train = round(config.train_fraction * n_all)
    n = config.p
    if config.model == "mlp":
        per_sample = config.width * n  # output layer MACs (the input layer is a row look-up)
    else:
        d, T = config.d_model, 4 if config.op_token else 3
        full_layer = T * (3 * d * d + d * d + 2 * d * config.d_mlp)
        last_layer = T * 2 * d * d + d * d + d * d + 2 * d * config.d_mlp
        per_sample = (config.layers - 1) * full_layer + last_layer + d * n
    train = 3 * 2 * per_sample * n_train  # forward + two backward products
    evaluation = 2 * per_sample * n_all / config.eval_every
    return (train + evaluation) / 1e9


def sgemm_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


MEASURE_LEVELS = ("none", "cheap", "full")  # sides that are ours with that progress_measures


def worker(side: str, name: str, steps: int | None) -> dict:
    """Train one side in this (fresh) process; time the steady state between evaluations."""
    from trainers.loop import keep_freed_memory

    if side == "ours" or side in MEASURE_LEVELS:
        keep_freed_memory()  # groksweep's trainer process does this before it trains (trainer_process.serve)
    torch.set_num_threads(THREADS)
    level = side if side in MEASURE_LEVELS else "none"
    overrides = dict(threads=THREADS, dtype="float32", progress_measures=level)
    if steps is not None:
        overrides.update(max_steps=steps, stop_on_generalize=False)
    config = preset(name, **overrides)
    stamps: list[tuple[int, float]] = []
    history: list[dict] = []
    tracker = EventTracker()

    def on_eval(row: dict) -> bool:
        stamps.append((row["step"], time.perf_counter()))
        history.append(row)
        tracker.update(row["step"], row)
        return config.stop_on_generalize and tracker.streak >= config.confirm_evals

    if side == "ours" or side in MEASURE_LEVELS:
        run(config, report=lambda ev: on_eval({"step": ev.step, **ev.metrics}))
    else:
        reference_run(config, on_eval)
    (s0, t0), (s1, t1) = stamps[1], stamps[-1]  # from the first evaluation after step 0: warm caches
    return {"ms_per_step": (t1 - t0) / (s1 - s0) * 1000, "events": tracker.events, "steps": s1,
            "sgemm_gflops": sgemm_gflops() if steps is not None else None,
            "train_loss": [row["train_loss"] for row in history], "val_acc": [row["val_acc"] for row in history]}


def agreement(reference: dict, ours: dict) -> str:
    """How closely the two sides' curves agree, evaluation by evaluation: float32 rounding differs between
    them (other kernels, other summation orders), and long runs amplify it."""
    pairs = list(zip(reference["train_loss"], ours["train_loss"], strict=False))
    loss = max(abs(a - b) / abs(a) for a, b in pairs)
    acc = max(abs(a - b) for a, b in zip(reference["val_acc"], ours["val_acc"], strict=False))
    return (f"curves over {len(pairs)} evaluations: train_loss max relative difference {loss:.1e}, "
            f"val_acc max gap {acc:.4f}")


def spawn(side: str, name: str, steps: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, name] + ([] if steps is None else ["--steps", str(steps)])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also run both sides to their events (nanda2023: ~15 min)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (alternating); best kept")
    parser.add_argument("--measure-rounds", type=int, default=5,
                        help="adjacent none/cheap/full triples for the cost of the progress measures (0: skip)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS, help="default: both")
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "PRESET"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps)))
        return

    steps = {"gromov": 200, "nanda2023": 200}
    print(f"torch {torch.__version__}, {THREADS} threads, float32; "
          f"timed: {args.repeats} runs per side (alternating), best kept")
    print(f"{'preset':<10} {'side':<10} {'ms/step':>8} {'ratio':>6} {'GFLOP/step':>10} {'GFLOP/s':>8} "
          f"{'% sgemm peak':>12}")
    for name in args.presets:
        gflop = useful_gflop_per_step(preset(name))
        # the sides alternate, so a machine that drifts (a shared host) slows both alike
        pairs = [{side: spawn(side, name, steps[name]) for side in ("reference", "ours")} for _ in range(args.repeats)]
        results = {}
        for side in ("reference", "ours"):
            runs = [pair[side] for pair in pairs]
            results[side] = min(runs, key=lambda r: r["ms_per_step"])
            results[side]["peak"] = max(r["sgemm_gflops"] for r in runs)
        paired = sorted(p["reference"]["ms_per_step"] / p["ours"]["ms_per_step"] for p in pairs)
        for side in ("reference", "ours"):
            r = results[side]
            ratio = results["reference"]["ms_per_step"] / r["ms_per_step"]
            rate = gflop / r["ms_per_step"] * 1000
            print(f"{name:<10} {side:<10} {r['ms_per_step']:8.2f} {ratio:6.2f} {gflop:10.3f} {rate:8.1f} "
                  f"{100 * rate / r['peak']:11.1f}%")
        print(f"{'':<10} measured sgemm peak (2048^3, {THREADS} threads): {results['ours']['peak']:.0f} GFLOP/s")
        print(f"{'':<10} ratio of each adjacent pair: median {statistics.median(paired):.2f} "
              f"(min {paired[0]:.2f}, max {paired[-1]:.2f})")
        print(f"{'':<10} {agreement(pairs[0]['reference'], pairs[0]['ours'])}")
    if args.measure_rounds:
        print(f"\ncost of the progress measures (ours, default eval_every, {args.measure_rounds} rounds of adjacent "
              "runs, order alternating): ms/step, median and range of the paired ratio to none")
        for name in args.presets:
            rounds = []
            for i in range(args.measure_rounds):
                order = MEASURE_LEVELS if i % 2 == 0 else MEASURE_LEVELS[::-1]
                rounds.append({level: spawn(level, name, steps[name])["ms_per_step"] for level in order})
            for level in MEASURE_LEVELS:
                ratios = sorted(r[level] / r["none"] for r in rounds)
                print(f"{name:<10} {level:<6} {statistics.median(r[level] for r in rounds):8.2f} ms/step  "
                      f"x{statistics.median(ratios):.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f}) "
                      f"eval_every {preset(name).eval_every}")
    if args.full:
        print("\nwhole runs (each preset's budget, stop on confirmed generalisation): events")
        for name in args.presets:
            events = {side: spawn(side, name, None) for side in ("reference", "ours")}
            for side, r in events.items():
                print(f"{name:<10} {side:<10} {r['ms_per_step']:8.2f} ms/step  {r['events']}")
            same = events["reference"]["events"] == events["ours"]["events"]
            apart = max(abs((events["reference"]["events"][k] or 0) - (events["ours"]["events"][k] or 0))
                        for k in events["ours"]["events"])
            print(f"{name:<10} same events: {same}" + ("" if same else
                  f" (at most {apart} steps apart; evaluations every {preset(name).eval_every})"))
            print(f"{'':<10} {agreement(events['reference'], events['ours'])}")


if __name__ == "__main__":
    main()
