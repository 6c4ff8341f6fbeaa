"""Optimisers, warm-up, losses (incl. StableMax) and the Grokfast gradient filters.

Everything here is a function of the step or of saved tensors, so a resumed run replays it exactly.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

from trainers.config import TrainConfig


def make_optimizer(config: TrainConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    betas = (config.beta1, config.beta2)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, betas=betas, weight_decay=config.weight_decay)
    if config.optimizer == "adam":  # weight decay as an L2 term in the gradient
        return torch.optim.Adam(parameters, lr=config.lr, betas=betas, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps` (Power 2022, Nanda 2023), then constant. `step` counts from 0."""
    if config.warmup_steps == 0:
        return config.lr
    return config.lr * min(1.0, (step + 1) / config.warmup_steps)


def per_sample_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, n) logits, (B,) labels -> (B,) losses."""
    if name == "cross_entropy":
        return F.cross_entropy(logits, labels, reduction="none")
    if name == "mse":  # Gromov 2023: squared distance to the one-hot answer, summed over classes
        target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
        return (logits - target).pow(2).sum(-1)
    return -log_stablemax(logits).gather(1, labels[:, None]).squeeze(1)


def mean_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if name == "cross_entropy":
        return F.cross_entropy(logits, labels)
    return per_sample_loss(name, logits, labels).mean()


def log_stablemax(logits: torch.Tensor) -> torch.Tensor:
    """Prieto et al. 2025: s(x) = x + 1 for x >= 0, 1 / (1 - x) below; probabilities s(x_i) / sum_j s(x_j).

    It grows linearly rather than exponentially, so large logits cannot absorb the others (softmax collapse).
    """
    s = torch.where(logits >= 0, logits + 1, 1 / (1 - logits.clamp(max=0)))
    return s.log() - s.sum(-1, keepdim=True).log()


class GradientFilter:
    """Grokfast (Lee et al. 2024): add `lambda` x a low-pass filtered gradient to each gradient.

    `ema`: filtered = alpha * filtered + (1 - alpha) * grad (starting from the first grad).
    `ma`: the mean of the last `window` grads, applied once the window is full.
    """

    def __init__(self, kind: str, alpha: float, lamb: float, window: int):
        self.kind, self.alpha, self.lamb, self.window = kind, alpha, lamb, window
        self.ema: list[torch.Tensor] | None = None
        self.history: deque[list[torch.Tensor]] = deque(maxlen=window)

    @torch.no_grad()
    def apply(self, parameters: list[nn.Parameter]) -> None:
        grads = [p.grad for p in parameters]
        if self.kind == "ema":
            if self.ema is None:
                self.ema = [g.clone() for g in grads]
            else:
                for slow, g in zip(self.ema, grads, strict=True):
                    slow.mul_(self.alpha).add_(g, alpha=1 - self.alpha)
            for slow, g in zip(self.ema, grads, strict=True):
                g.add_(slow, alpha=self.lamb)
        else:
            self.history.append([g.clone() for g in grads])
            if len(self.history) == self.window:
                for i, g in enumerate(grads):
                    g.add_(sum(h[i] for h in self.history) / self.window, alpha=self.lamb)

    def state_dict(self) -> dict:
        return {"ema": self.ema, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"]
        self.history = deque(state["history"], maxlen=self.window)
