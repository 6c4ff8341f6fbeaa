"""`run_batched(configs, reports, checkpoint_dirs)`: several jobs of one shape trained as one batched model.

On a GPU one small grokking job leaves the card idle between kernel launches; K jobs that share a
*batching key* (`batching_key`: the model's shape, the task and split sizes, the optimiser family, the loss,
Grokfast, dtype, eval_every, the progress-measure level) train together instead. Every parameter is stacked
along a leading member axis (`w_in`: (K, 2n, width)), the forward is the single model's with batched matrix
products, and the optimiser step applies each member's own lr, betas, weight decay, momentum, warm-up and
Grokfast constants. Everything else stays per member and equals `trainers.run` on that member's config
alone: its initialisation (built by `build_model` from its seed), its train/validation split and minibatch
order (its seed), its evaluations, events, stopping, report callback and checkpoint directory. A member's
checkpoint has the single run's format, so either trainer resumes the other's. What a step or an
evaluation issues to the device does not grow with K: the progress measures of all due members are one
pass of trainers.progress's stacked products, and between evaluations no member is looked at
(tests/test_batched.py counts the operations).

A member that ends (generalised with stop_on_generalize, budget spent, or stopped by its report) is
*compacted out*: its rows of every stacked tensor are dropped, so the others no longer pay for it.
`ended="mask"` keeps it in the stack with its update zeroed instead (static shapes); compaction measured
faster on CPU (benchmarks/batched_speed.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from trainers import checkpoint
from trainers.batching import batching_key
from trainers.config import ConfigError, TrainConfig
from trainers.loop import (
    Evaluation,
    Report,
    TrialResult,
    batch_indices,
    pick_device,
    resumed_history,
)
from trainers.metrics import EventTracker, evaluate_stacked
from trainers.models import build_model, square_then_project_backward
from trainers.optim import GradientFilter, learning_rate, make_optimizer, per_sample_loss
from trainers.progress import StackedProgress
from trainers.tasks import MODULAR, make_dataset

EPS = 1e-8  # torch.optim.Adam's default, as make_optimizer uses it


# --- the stacked forward: the single models' maths (trainers/models.py) with a leading member axis ---

def _mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(K, ..., d_in) @ (K, d_in, d_out) -> (K, ..., d_out), one batched product."""
    return torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[-1])


def _each(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (K, d) per-member vector shaped to broadcast over a (K, ..., d) tensor of `ndim` dims."""
    return t.view(t.shape[0], *[1] * (ndim - t.ndim), *t.shape[1:])


def _layer_norm(x: torch.Tensor, P: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if f"{name}.weight" not in P:  # nn.Identity in the single model
        return x
    y = F.layer_norm(x, x.shape[-1:])
    return y * _each(P[f"{name}.weight"], x.ndim) + _each(P[f"{name}.bias"], x.ndim)


def _attend(P: dict[str, torch.Tensor], i: int, x: torch.Tensor, heads: int, last_only: bool) -> torch.Tensor:
    """models.Block.attend over (K, B, T, d): the residual stream after attention, (K, B, T, d) or (K, B, d)."""
    K, B, T, d = x.shape
    H, dh, pre = heads, d // heads, f"blocks.{i}."
    w_qkv = P[pre + "w_qkv"]
    h = _layer_norm(x, P, pre + "ln_attn")
    k, v = _mm(h, w_qkv[:, :, d:]).view(K, B, T, 2, H, dh).unbind(3)  # (K, B, T, H, dh) each
    if last_only:
        q = _mm(h[:, :, -1], w_qkv[:, :, :d]).view(K, B, 1, H, dh)
        scores = (q * k).sum(-1) / math.sqrt(dh)  # (K, B, T, H)
        z = (scores.softmax(2).unsqueeze(-1) * v).sum(2).reshape(K, B, d)
        x = x[:, :, -1]
    else:
        q = _mm(h, w_qkv[:, :, :d]).view(K, B, T, H, dh)
        scores = (q.unsqueeze(3) * k.unsqueeze(2)).sum(-1) / math.sqrt(dh)  # (K, B, Tq, Tk, H)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril().view(1, 1, T, T, 1)
        weights = scores.masked_fill(~causal, float("-inf")).softmax(3)
        z = (weights.unsqueeze(-1) * v.unsqueeze(2)).sum(3).reshape(K, B, T, d)
    return x + _mm(z, P[pre + "w_o"])


def _hidden(P: dict[str, torch.Tensor], i: int, x: torch.Tensor) -> torch.Tensor:
    """models.Block.hidden: block i's MLP neuron activations, (K, ..., d_mlp)."""
    pre = f"blocks.{i}."
    return torch.relu(_mm(_layer_norm(x, P, pre + "ln_mlp"), P[pre + "w_in"]) + _each(P[pre + "b_in"], x.ndim))


def _block(P: dict[str, torch.Tensor], i: int, x: torch.Tensor, heads: int, last_only: bool) -> torch.Tensor:
    """models.Block.forward over (K, B, T, d): (K, B, T, d), or (K, B, d) for the last position."""
    x = _attend(P, i, x, heads, last_only)
    pre = f"blocks.{i}."
    return x + _mm(_hidden(P, i, x), P[pre + "w_out"]) + _each(P[pre + "b_out"], x.ndim)


class _SquareThenProject(torch.autograd.Function):
    """bmm(h * h, w_out^T) with the single model's backward (models.square_then_project_backward): one pass
    over the (K, B, width) activations, the model's largest tensors, where autograd's h * h takes three; on
    a GPU the batched MLP's step is bound by passes over them, not by launches."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        a = h * h
        ctx.save_for_backward(h, a, w_out)
        return torch.bmm(a, w_out.transpose(1, 2))  # (K, B, n)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return square_then_project_backward(grad, *ctx.saved_tensors)


def forward(config: TrainConfig, P: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (K, B, n) of every member on its own inputs x: (K, B, 2) MLP rows or (K, B, T) tokens."""
    K = x.shape[0]
    if config.model == "mlp":
        w_in = P["w_in"]  # (K, 2n, width)
        offsets = (torch.arange(K, device=x.device) * w_in.shape[1]).view(K, 1, 1)
        h = F.embedding_bag((x + offsets).view(-1, 2), w_in.reshape(-1, w_in.shape[2]), mode="sum")
        h = h.view(K, x.shape[1], -1)  # (K, B, width)
        if config.activation == "quadratic":
            return _SquareThenProject.apply(h, P["w_out"])
        return torch.bmm(torch.relu(h), P["w_out"].transpose(1, 2))  # (K, B, n)
    h = _embed(P, x)
    for i in range(config.layers):
        h = _block(P, i, h, config.heads, last_only=i == config.layers - 1)
    return _mm(_layer_norm(h, P, "ln_final"), P["unembed"])  # (K, B, n)


def _embed(P: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The transformer's token + position embedding of every member's tokens x: (K, B, T) -> (K, B, T, d)."""
    K, embed = x.shape[0], P["embed"]  # (K, V, d)
    offsets = (torch.arange(K, device=x.device) * embed.shape[1]).view(K, 1, 1)
    return F.embedding(x + offsets, embed.reshape(-1, embed.shape[2])) + P["pos"].unsqueeze(1)


def neurons(config: TrainConfig, P: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """models.Transformer.neurons per member: the last block's MLP activations at the answer position of
    tokens x (K, B, T), (K, B, d_mlp)."""
    h = _embed(P, x)
    for i in range(config.layers - 1):
        h = _block(P, i, h, config.heads, last_only=False)
    return _hidden(P, config.layers - 1, _attend(P, config.layers - 1, h, config.heads, last_only=True))


def embedding(config: TrainConfig, P: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """models.*.embedding() per member: (K, n, k)."""
    if config.model == "mlp":
        return torch.cat([P["w_in"][:, :n], P["w_in"][:, n:]], dim=2)
    return P["embed"][:, :n]


# --- one member: everything `trainers.run` keeps for a job ---

@dataclass
class _Member:
    index: int  # position in the caller's lists
    config: TrainConfig
    report: Report | None
    checkpoint_dir: Path | None
    module: torch.nn.Module  # the member's own single model (CPU): its init, and the checkpoint format
    optimizer: torch.optim.Optimizer  # over module's parameters: the checkpoint format
    step: int = 0
    history: list[dict] = field(default_factory=list)
    tracker: EventTracker = field(default_factory=EventTracker)
    wall_before: float = 0.0
    since_save: int = 0
    last_save: float = 0.0
    adam_steps: int = 0  # optimiser steps taken (Adam's bias correction)
    has_momentum: bool = False  # SGD's buffer exists
    has_ema: bool = False  # Grokfast's filter has seen a gradient
    filter: GradientFilter | None = None  # Grokfast's filter as trainers.run keeps it: the checkpoint format

    def finished(self) -> bool:
        c = self.config
        return self.step >= c.max_steps or (c.stop_on_generalize and self.tracker.streak >= c.confirm_evals)

    def evaluation_due(self) -> bool:  # as trainers.run: not again at a resumed checkpoint's step
        if self.history and self.history[-1]["step"] == self.step:
            return False
        return self.step % self.config.eval_every == 0 or self.step == self.config.max_steps

    def steps_to_next_evaluation(self) -> int:
        """From a step at which it trains on (not finished): how many steps until evaluation_due()."""
        return min(self.config.eval_every - self.step % self.config.eval_every, self.config.max_steps - self.step)


class _Stack:
    """The active members' parameters, optimiser state and data, stacked along dim 0 in `members` order."""

    def __init__(self, members: list[_Member], names: list[str], device: torch.device, dtype: torch.dtype,
                 data: dict[str, torch.Tensor], progress: StackedProgress, inputs: torch.Tensor):
        self.members, self.names, self.device, self.dtype = members, names, device, dtype
        self.data = data  # train_x, train_y, val_x, val_y: (K, N, ...)
        self.progress = progress  # the progress measures of all members at once (their batching key fixes the level)
        self.inputs = inputs  # every input of the task, (N, ...): the same for every member (the neurons' grid)
        self.params: dict[str, torch.Tensor] = {}
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.active = torch.ones(len(members), dtype=torch.bool)  # False: masked out (ended="mask")
        self._cache: dict[str, tuple[tuple, dict[str, torch.Tensor]]] = {}  # see cached()
        self._lrs: list[float] | None = None  # see learning_rates()
        self.adam_steps = self._steps()
        kind = members[0].config
        for j, name in enumerate(names):
            per = [list(m.module.parameters())[j] for m in members]
            self.params[name] = torch.stack([p.detach() for p in per]).to(device, dtype).requires_grad_()
            states = [m.optimizer.state.get(p, {}) for m, p in zip(members, per, strict=True)]
            zeros = torch.zeros_like(self.params[name])
            entry = {}
            if kind.optimizer in ("adam", "adamw"):
                entry["exp_avg"] = self._gather(states, "exp_avg", zeros)
                entry["exp_avg_sq"] = self._gather(states, "exp_avg_sq", zeros)
            else:
                entry["momentum_buffer"] = self._gather(states, "momentum_buffer", zeros)
            if kind.grokfast == "ema":
                emas = [m.filter.ema if m.filter is not None else None for m in members]
                entry["ema"] = torch.stack([e[j].to(device, dtype) if e is not None else zeros[0] for e in emas])
            self.state[name] = entry

    def _gather(self, states: list[dict], key: str, zeros: torch.Tensor) -> torch.Tensor:
        rows = [s[key].to(self.device, self.dtype) if s.get(key) is not None else zeros[k]
                for k, s in enumerate(states)]
        return torch.stack(rows)

    def keep(self, keep: list[int]) -> None:
        """Compact: only members at positions `keep` remain."""
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.members = [self.members[i] for i in keep]
        self.active = self.active[keep]
        self.params = {n: p.detach().index_select(0, index).requires_grad_() for n, p in self.params.items()}
        self.state = {n: {k: t.index_select(0, index) for k, t in s.items()} for n, s in self.state.items()}
        self.data = {k: t.index_select(0, index) for k, t in self.data.items()}
        self._cache.clear()
        self._lrs = None
        self.adam_steps = self._steps()

    def learning_rates(self) -> list[float]:
        """Each member's lr at its step; computed once more per step only while some member warms up."""
        if self._lrs is not None:
            return self._lrs
        lrs = [learning_rate(m.config, m.step) for m in self.members]
        if all(m.step + 1 >= m.config.warmup_steps for m in self.members):  # constant from here on
            self._lrs = lrs
        return lrs

    def _steps(self) -> torch.Tensor:
        """Each member's Adam step count so far, (K,) float64 on the device (the bias corrections)."""
        return torch.tensor([float(m.adam_steps) for m in self.members], dtype=torch.float64, device=self.device)

    def columns(self, dtype: torch.dtype | None = None, **values: list[float]) -> dict[str, torch.Tensor]:
        """Per-member scalars as (K,) tensors of the model dtype, rounded from float64 as torch.optim's
        Python-float scalars are when applied to a tensor; one host-to-device copy for all of them."""
        table = torch.tensor(list(values.values()), dtype=torch.float64).to(self.device, dtype or self.dtype)
        return dict(zip(values, table.unbind(0), strict=True))

    def cached(self, name: str, key: tuple, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """`build()` again only when `key` changed (lr during warm-up, who is live, a first step): a
        host-to-device copy waits for the device, so copying every step would stall a GPU's queue."""
        if name not in self._cache or self._cache[name][0] != key:
            self._cache[name] = (key, build())
        return self._cache[name][1]


@torch.no_grad()
def _optimizer_step(stack: _Stack, lrs: list[float]) -> None:
    """One step of every active member's own optimiser (torch.optim's single-tensor algorithms, the ones
    make_optimizer builds, with per-member scalars); a masked member's parameters stay as they are."""
    members = stack.members
    live = stack.active.tolist()
    configs = [m.config for m in members]
    c0 = configs[0]
    if c0.grokfast == "ema":  # optim.GradientFilter, applied before the step as trainers.run does
        seen = tuple(m.has_ema for m in members)
        f = stack.cached("grokfast", seen, lambda: stack.columns(
            seen=[float(x) for x in seen], alpha=[c.grokfast_alpha for c in configs],
            rest=[1 - c.grokfast_alpha for c in configs], lamb=[c.grokfast_lambda for c in configs]))
        for name, p in stack.params.items():
            g, ema, nd = p.grad, stack.state[name]["ema"], p.ndim
            ema.copy_(torch.where(_each(f["seen"], nd) != 0, ema * _each(f["alpha"], nd) + _each(f["rest"], nd) * g,
                                  g))
            g.add_(ema * _each(f["lamb"], nd))
        for m in members:
            m.has_ema = True
    wd = [c.weight_decay for c in configs]
    if c0.optimizer in ("adam", "adamw"):
        for m, on in zip(members, live, strict=True):
            m.adam_steps += on
        decoupled = c0.optimizer == "adamw"
        key = (tuple(lrs), tuple(live))
        f = stack.cached("adam", key, lambda: {
            **stack.columns(
                decay=[1 - lr * w if decoupled and on else 1.0 for lr, w, on in zip(lrs, wd, live, strict=True)],
                l2=[0.0 if decoupled else w for w in wd], lerp=[1 - c.beta1 for c in configs],
                beta2=[c.beta2 for c in configs], rest2=[1 - c.beta2 for c in configs]),
            **{f"{k}64": v for k, v in stack.columns(
                torch.float64, lr=[lr if on else 0.0 for lr, on in zip(lrs, live, strict=True)],
                beta1=[c.beta1 for c in configs], beta2=[c.beta2 for c in configs],
                live=[float(on) for on in live]).items()}})
        stack.adam_steps += f["live64"]  # = each member's adam_steps, kept on the device
        steps = stack.adam_steps.clamp(min=1)
        neg_step = (-(f["lr64"] / (1 - f["beta164"] ** steps))).to(stack.dtype)  # as torch.optim, in float64
        bc2_sqrt = (1 - f["beta264"] ** steps).sqrt().to(stack.dtype)
        for name, p in stack.params.items():
            grad, st, nd = p.grad, stack.state[name], p.ndim
            if not decoupled:
                grad = grad.add(p * _each(f["l2"], nd))
            p.mul_(_each(f["decay"], nd))
            st["exp_avg"].lerp_(grad, _each(f["lerp"], nd))
            st["exp_avg_sq"].mul_(_each(f["beta2"], nd)).addcmul_(grad * _each(f["rest2"], nd), grad)
            denom = (st["exp_avg_sq"].sqrt() / _each(bc2_sqrt, nd)).add_(EPS)
            p.addcdiv_(st["exp_avg"] * _each(neg_step, nd), denom)
        return
    has_buf = tuple(m.has_momentum for m in members)
    f = stack.cached("sgd", (tuple(lrs), tuple(live), has_buf), lambda: stack.columns(
        momentum=[c.momentum for c in configs], has_buf=[float(x) for x in has_buf],
        neg_lr=[-lr if on else 0.0 for lr, on in zip(lrs, live, strict=True)], decay=wd))
    for name, p in stack.params.items():
        nd = p.ndim
        d_p = p.grad.add(p * _each(f["decay"], nd))
        buf = stack.state[name]["momentum_buffer"]
        buf.copy_(torch.where(_each(f["has_buf"], nd) != 0, buf * _each(f["momentum"], nd) + d_p, d_p))
        p.add_(buf * _each(f["neg_lr"], nd))
    for m in members:
        m.has_momentum = m.has_momentum or m.config.momentum != 0


@torch.no_grad()
def _evaluate(stack: _Stack, train_logits: torch.Tensor | None, n: int, modular: bool,
              due: list[bool] | None = None) -> list[dict[str, float]]:
    """trainers.metrics.evaluate for every member at once (one device sync), and the progress measures of the
    `due` members at once (one more)."""
    c0, data = stack.members[0].config, stack.data
    K = len(stack.members)
    train_logits = forward(c0, stack.params, data["train_x"]) if train_logits is None else train_logits.detach()
    val_logits = forward(c0, stack.params, data["val_x"])
    rows = evaluate_stacked((train_logits, data["train_y"]), (val_logits, data["val_y"]), list(stack.params.values()),
                            embedding(c0, stack.params, n), c0.loss, modular)
    if c0.progress_measures != "none":
        slots = [s for s in range(K) if due is None or due[s]]

        def due_only(t: torch.Tensor) -> torch.Tensor:  # usually every member is due: no copy then
            return t.detach() if len(slots) == K else t.detach()[slots]

        P = {name: due_only(p) for name, p in stack.params.items()}
        inputs = stack.inputs.expand(len(slots), *stack.inputs.shape)
        measured = stack.progress(P, embedding(c0, P, n), (due_only(train_logits), due_only(data["train_y"])),
                                  (due_only(val_logits), due_only(data["val_y"])),
                                  neurons(c0, P, inputs) if stack.progress.wants_neurons() else None)
        for slot, values in zip(slots, measured, strict=True):
            rows[slot].update(values)
    return rows


def _copy_weights(stack: _Stack, slot: int, module: torch.nn.Module) -> None:
    """Copy member `slot`'s stacked weights into its own single model (its checkpoint's format)."""
    with torch.no_grad():
        for name, p in zip(stack.names, module.parameters(), strict=True):
            p.copy_(stack.params[name][slot].detach().to(p.device, p.dtype))


def _member_state(stack: _Stack, slot: int, m: _Member, started: float) -> dict:
    """Member `slot`'s checkpoint, in trainers.run's format (its own model and optimiser state_dicts)."""
    params = list(m.module.parameters())
    _copy_weights(stack, slot, m.module)
    c = m.config
    for name, p in zip(stack.names, params, strict=True):
        st = stack.state[name]
        if c.optimizer in ("adam", "adamw"):
            if m.adam_steps:
                m.optimizer.state[p] = {"step": torch.tensor(float(m.adam_steps)),
                                        "exp_avg": st["exp_avg"][slot].detach().cpu().clone(),
                                        "exp_avg_sq": st["exp_avg_sq"][slot].detach().cpu().clone()}
        elif m.has_momentum:
            m.optimizer.state[p] = {"momentum_buffer": st["momentum_buffer"][slot].detach().cpu().clone()}
    for group in m.optimizer.param_groups:
        group["lr"] = learning_rate(c, max(m.step - 1, 0))
    grad_filter = None
    if c.grokfast == "ema":
        ema = [stack.state[name]["ema"][slot].detach().cpu().clone() for name in stack.names] if m.has_ema else None
        grad_filter = {"ema": ema, "history": []}
    return dict(model=m.module.state_dict(), optimizer=m.optimizer.state_dict(),
                grad_filter=grad_filter, step=m.step, history=m.history, config=c.to_dict(),
                wall_s=m.wall_before + time.perf_counter() - started)


def _load(m: _Member) -> None:
    """Resume member `m` from its checkpoint directory, if one is there (either trainer's)."""
    saved = checkpoint.latest(m.checkpoint_dir) if m.checkpoint_dir is not None else None
    if saved is None:
        return
    state = checkpoint.load(saved)
    history = resumed_history(saved, state, m.config)  # as trainers.run: only a larger max_steps may differ
    m.module.load_state_dict(state["model"])
    m.optimizer.load_state_dict(state["optimizer"])
    if m.filter is not None and state.get("grad_filter"):
        m.filter.load_state_dict(state["grad_filter"])
    m.has_ema = m.filter is not None and m.filter.ema is not None
    first = m.optimizer.state.get(next(iter(m.module.parameters())), {})
    m.adam_steps = int(first["step"]) if "step" in first else 0
    m.has_momentum = first.get("momentum_buffer") is not None
    m.step, m.history, m.wall_before = state["step"], history, float(state.get("wall_s", 0.0))
    m.tracker = EventTracker.replay(m.history, p=m.config.p)


def run_batched(configs: Sequence[TrainConfig], reports: Sequence[Report | None] | None = None,
                checkpoint_dirs: Sequence[str | Path | None] | None = None, checkpoint_every: int = 10,
                checkpoint_every_s: float = 0.0, on_end: Callable[[int, TrialResult], None] | None = None,
                ended: str = "compact") -> list[TrialResult]:
    """Train `configs` (equal `batching_key`) as one batched model; per member as `trainers.run` would
    alone: `reports[i]` sees member i's evaluations (True stops it), `checkpoint_dirs[i]` is its own
    checkpoint directory (resumed from, written as run() writes it), `on_end(i, result)` is called the
    moment member i ends. Returns the results in `configs` order. `ended`: compact | mask (module docstring)."""
    if not configs:
        return []
    keys = {batching_key(c) for c in configs}
    if len(keys) != 1 or None in keys:
        raise ConfigError("run_batched: every config needs the same batching_key (trainers.batching.BATCH_KEY_FIELDS)")
    if ended not in ("compact", "mask"):
        raise ValueError(f"ended: compact | mask, got {ended!r}")
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if configs[0].threads is not None:
        torch.set_num_threads(configs[0].threads)
    try:
        return _run_batched(list(configs), list(reports or [None] * len(configs)),
                            list(checkpoint_dirs or [None] * len(configs)), checkpoint_every, checkpoint_every_s,
                            on_end, ended, started)
    finally:
        torch.set_num_threads(previous_threads)


def _run_batched(configs: list[TrainConfig], reports: list[Report | None], dirs: list[str | Path | None],
                 checkpoint_every: int, checkpoint_every_s: float,
                 on_end: Callable[[int, TrialResult], None] | None, ended: str, started: float) -> list[TrialResult]:
    device, dtype, c0 = pick_device(), getattr(torch, configs[0].dtype), configs[0]
    members, data_rows = [], {"train_x": [], "train_y": [], "val_x": [], "val_y": []}
    for i, (config, report, directory) in enumerate(zip(configs, reports, dirs, strict=True)):
        data = make_dataset(config.op, config.p, config.train_fraction, config.seed, "cpu")
        module = build_model(config, data.n_symbols).to(dtype=dtype)
        m = _Member(i, config, report, None if directory is None else Path(directory), module,
                    make_optimizer(config, list(module.parameters())))
        m.filter = None if config.grokfast == "none" else GradientFilter(
            config.grokfast, config.grokfast_alpha, config.grokfast_lambda, config.grokfast_window)
        m.tracker = EventTracker(p=config.p)
        inputs = module.inputs(data.a, data.b)
        _load(m)
        m.last_save = time.monotonic()
        members.append(m)
        data_rows["train_x"].append(inputs[data.train_idx])
        data_rows["train_y"].append(data.labels[data.train_idx])
        data_rows["val_x"].append(inputs[data.val_idx])
        data_rows["val_y"].append(data.labels[data.val_idx])
    n, modular = data.n_symbols, c0.op in MODULAR
    names = [name for name, _ in members[0].module.named_parameters()]
    progress = StackedProgress(c0.progress_measures, c0.op, n, c0.loss, c0.model, dtype, device)
    stack = _Stack(members, names, device, dtype, {k: torch.stack(v).to(device) for k, v in data_rows.items()},
                   progress, inputs.to(device))
    n_train = stack.data["train_y"].shape[1]
    full_batch = c0.batch_size is None or c0.batch_size >= n_train
    results: list[TrialResult | None] = [None] * len(members)

    def end(slot: int, m: _Member, stopped_by_report: bool) -> None:
        final = {k: v for k, v in m.history[-1].items() if k != "step"}
        result = TrialResult(config=m.config, events=dict(m.tracker.events), censored=m.tracker.censored,
                             steps_run=m.step, wall_s=m.wall_before + time.perf_counter() - started,
                             final_metrics=final, device=str(device), history=m.history,
                             stopped_by_report=stopped_by_report)
        results[m.index] = result
        if on_end is not None:
            on_end(m.index, result)

    quiet = 0  # steps in which no member is due: train on without looking at each member
    while stack.members:
        if quiet:
            quiet -= 1
            _train_step(stack, None, full_batch, n_train)
            continue
        live = stack.active.tolist()
        due = [on and m.evaluation_due() for m, on in zip(stack.members, live, strict=True)]
        leaving: list[int] = []
        logits = None
        if any(due):
            if full_batch:  # this step's training forward; the evaluation reads the train metrics off it
                logits = forward(c0, stack.params, stack.data["train_x"])
            evaluations = _evaluate(stack, logits, n, modular, due)
            for slot, (m, metrics) in enumerate(zip(stack.members, evaluations, strict=True)):
                if not due[slot]:
                    continue
                m.history.append({"step": m.step, **metrics})
                m.tracker.update(m.step, metrics)
                done = m.finished()
                m.since_save += 1
                written = None
                if m.checkpoint_dir is not None and (done or (m.since_save >= checkpoint_every and
                                                              time.monotonic() - m.last_save >= checkpoint_every_s)):
                    written = checkpoint.save(m.checkpoint_dir, _member_state(stack, slot, m, started),
                                              m.config.to_dict())
                    m.since_save, m.last_save = 0, time.monotonic()
                stop = m.report is not None and m.report(Evaluation(m.step, metrics, dict(m.tracker.events),
                                                                    written, done))
                if stop or done:
                    end(slot, m, stopped_by_report=bool(stop) and not done)
                    leaving.append(slot)
        for slot, (m, on) in enumerate(zip(stack.members, live, strict=True)):
            if on and not due[slot] and m.finished():  # resumed from the final checkpoint of a finished run
                end(slot, m, stopped_by_report=False)
                leaving.append(slot)
        if leaving:
            if ended == "compact":
                stack.keep([s for s in range(len(stack.members)) if s not in leaving])
                logits = None  # computed for the old stack
            else:
                stack.active[leaving] = False
            if not stack.active.any():
                break
        quiet = min(m.steps_to_next_evaluation() for m, on in zip(stack.members, stack.active.tolist(), strict=True)
                    if on) - 1
        _train_step(stack, logits, full_batch, n_train)
    return [r for r in results if r is not None]


def _train_step(stack: _Stack, logits: torch.Tensor | None, full_batch: bool, n_train: int) -> None:
    """One optimiser step of every member: the mean loss of each member's batch, summed (members do not
    interact, so each one's gradient is its own loss's), then each member's own update."""
    members, c0, data = stack.members, stack.members[0].config, stack.data
    if full_batch:
        x, y = data["train_x"], data["train_y"]
    else:
        rows = torch.stack([batch_indices(m.config, n_train, m.step) for m in members]).to(stack.device)
        member = torch.arange(len(members), device=stack.device).unsqueeze(1)
        x, y = data["train_x"][member, rows], data["train_y"][member, rows]  # (K, B, ...) each member's own batch
    if logits is None:
        logits = forward(c0, stack.params, x)
    K = len(members)
    loss = per_sample_loss(c0.loss, logits.flatten(0, 1), y.flatten()).view(K, -1).mean(1).sum()
    for p in stack.params.values():
        p.grad = None
    loss.backward()
    live = stack.active.tolist()
    _optimizer_step(stack, stack.learning_rates())
    for m, on in zip(members, live, strict=True):
        m.step += on
