"""Progress measures at evaluations: how far the grokked circuit has formed, read from weights and logits.

Definitions (sources: ../shared/research/interpretability.md; Nanda et al. 2023, Gromov 2023):
- Fourier basis over Z_p: the constant, then cos/sin(2 pi k x / p) for k = 1 .. p // 2, orthonormal.
- `fourier_spectrum`: the norm of the per-symbol embedding (the transformer's W_E[:p]; the MLP's input
  weights, both operand halves side by side) in each frequency k, cos and sin together, constant excluded.
- `fourier_gini`: the Gini coefficient of the squared norms per frequency (0: spread evenly; (K-1)/K: one).
- `key_frequencies`: the smallest set of frequencies, strongest first, holding KEY_SHARE of the squared norm
  (constant excluded). A share, not a top-k: Nanda's transformer concentrates on ~5 frequencies, Gromov's MLP
  uses nearly all of them (one per neuron), and a fixed share reads both.
- `restricted_loss`: the validation loss of the logits kept only on the key directions cos/sin(w_k s),
  s = a + b (a - b for x-y), per answer class, plus Nanda's bias fix (the per-class mean over inputs of what
  was removed). `excluded_loss`: the training loss with that same component removed.
  The component is fitted to the held-out logits (their mean per s). Nanda fixes the keys on the final
  model, so they are few; chosen live, before a circuit exists they are nearly every frequency, and then
  the component along functions of s fitted over all p^2 inputs carries the memorised training answers
  themselves (for x+y, s is the label): restricted loss drops to ~0.1 at memorisation with weight decay 0
  and no circuit (measured on tiny_transformer). Fitted on held-out inputs it cannot see a training label.
- `neuron_frequency_share`: the mean over hidden neurons of the share held by each neuron's strongest
  frequency. MLP (cheap): of its input weights (both halves). Transformer (`full` only): of the variance of
  its activation at `=` over the p^2 grid in the frequency's {1, cos k, sin k}^2 block (Nanda's "clean
  neuron" measure, which needs one more forward pass).
- `neuron_frequencies` (`full`): how many neurons have each frequency as their strongest.
- `weight_norm_<group>`: the L2 norm of each parameter group (their squares sum to weight_norm's square).

The losses use the run's own loss function, so they sit on the same axis as train_loss and val_loss.
Everything here runs under no_grad, draws no random numbers and never changes the training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainers.metrics import PROGRESS, PROGRESS_LISTS
from trainers.optim import per_sample_loss

LEVELS = ("none", "cheap", "full")
FOURIER_OPS = ("x+y", "x-y")  # the answer is a function of s = a +- b: the circuit's directions are defined
KEY_SHARE = 0.9  # key frequencies hold this share of the embedding's squared norm
GROUPS = ("embedding", "attention", "mlp", "unembedding")
COLUMNS: tuple[str, ...] = (*PROGRESS, *PROGRESS_LISTS)  # names defined once, torch-free, in trainers.metrics


def parameter_group(model_kind: str, name: str) -> str | None:
    """The weight-norm group of a parameter. MLP: w_in is the per-symbol embedding, w_out the unembedding
    (no attention or mlp group). Transformer: LayerNorms go with the block part they feed."""
    if model_kind == "mlp":
        return {"w_in": "embedding", "w_out": "unembedding"}.get(name)
    if name in ("embed", "pos"):
        return "embedding"
    if name.startswith("unembed") or name.startswith("ln_final"):
        return "unembedding"
    part = name.split(".")[2] if name.startswith("blocks.") else ""
    if part in ("w_qkv", "w_o", "ln_attn"):
        return "attention"
    if part in ("w_in", "b_in", "w_out", "b_out", "ln_mlp"):
        return "mlp"
    return None


def fourier_basis(p: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, p) orthonormal Fourier basis over Z_p without the constant: cos k, sin k for k = 1 .. p // 2 (no
    sin at k = p / 2), and (rows,) the frequency of each row. Matrix products with it are ~50x faster than
    torch.fft along a prime length on CPU (Bluestein) and give contiguous results."""
    x = torch.arange(p, dtype=torch.float64)
    rows, freqs = [], []
    for k in range(1, p // 2 + 1):
        rows.append(torch.cos(2 * torch.pi * k * x / p))
        freqs.append(k)
        if 2 * k != p:
            rows.append(torch.sin(2 * torch.pi * k * x / p))
            freqs.append(k)
    basis = torch.stack(rows)
    basis = basis / basis.norm(dim=1, keepdim=True)
    return basis.to(dtype=dtype, device=device), torch.tensor(freqs, device=device) - 1


def fourier_power(weights: torch.Tensor, basis: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """(p, m) rows per symbol -> (p // 2, m) squared norm per frequency k = 1 .. p // 2, columns kept apart."""
    squares = (basis @ weights).pow(2)  # (rows, m)
    return squares.new_zeros(int(freq[-1]) + 1, squares.shape[1]).index_add_(0, freq, squares)


def gini(values: torch.Tensor) -> float:
    """Gini coefficient of non-negative values (0: all equal)."""
    x = values.double().sort().values
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return float("nan")
    i = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def key_frequencies(power: torch.Tensor, share: float = KEY_SHARE) -> list[int]:
    """The smallest set of frequencies (1-based), strongest first, holding `share` of `power`'s sum."""
    order = torch.argsort(-power, stable=True)  # ties: the lower frequency first
    cumulative = power[order].cumsum(0)
    count = int((cumulative < share * cumulative[-1]).sum()) + 1
    return sorted((order[:min(count, len(order))] + 1).tolist())


def circuit_part(val_logits: torch.Tensor, val_labels: torch.Tensor, keys: list[int], basis: torch.Tensor,
                 freq: torch.Tensor) -> torch.Tensor:
    """(p, c): the key-frequency component, along s, of the mean validation logits of the inputs whose answer
    is s. The directions cos/sin(w_k s) are functions of s = a +- b alone, so projecting logits on them is
    averaging over each s and keeping the key frequencies of that table. Held-out inputs only: averaged over
    training inputs, the memorised answers themselves would pass for a circuit (see module docstring)."""
    p = basis.shape[1]
    sums = val_logits.new_zeros(p, val_logits.shape[1]).index_add_(0, val_labels, val_logits)
    means = sums / torch.bincount(val_labels, minlength=p).clamp_min(1).unsqueeze(1).to(sums.dtype)
    rows = basis[torch.isin(freq + 1, torch.tensor(keys, device=freq.device))]  # (2 |keys|, p)
    return rows.t() @ (rows @ means)  # (p, c)


def restricted_and_excluded(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                            keys: list[int], basis: torch.Tensor, freq: torch.Tensor, loss: str) -> tuple[float, float]:
    """(restricted_loss, excluded_loss) from (logits, labels) of the training and validation inputs; the
    labels are s itself for x+y and x-y."""
    circuit = circuit_part(val[0], val[1], keys, basis, freq)
    kept = circuit[val[1]]
    restricted = kept + (val[0] - kept).mean(0)  # Nanda's bias fix: add back the mean of what was removed
    excluded = train[0] - circuit[train[1]]
    return (float(per_sample_loss(loss, restricted, val[1]).mean()),
            float(per_sample_loss(loss, excluded, train[1]).mean()))


def neuron_shares(power: torch.Tensor) -> torch.Tensor:
    """(K, neurons) power per frequency -> each neuron's share in its strongest frequency."""
    return power.max(0).values / power.sum(0).clamp_min(torch.finfo(power.dtype).tiny)


def activation_block_power(activations: torch.Tensor, basis: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """(p^2, neurons) activations over the (a, b) grid -> (p // 2, neurons): per frequency k, the variance in
    the 2-D Fourier block {1, cos k, sin k} x {1, cos k, sin k} minus the constant (Nanda 2023)."""
    p = basis.shape[1]
    grid = activations.reshape(p, p, -1)
    grid = grid - grid.mean((0, 1))
    full = torch.cat([basis.new_full((1, p), p ** -0.5), basis])  # the constant first: row 0
    coef = torch.einsum("ia,abn->ibn", full, grid)
    coef = torch.einsum("jb,ibn->ijn", full, coef).pow(2)  # (rows + 1, rows + 1, neurons)
    rows = [[0, *(1 + torch.nonzero(freq == k).flatten()).tolist()] for k in range(int(freq[-1]) + 1)]
    return torch.stack([coef[r][:, r].sum((0, 1)) - coef[0, 0] for r in rows])


class ProgressMeter:
    """Computes the progress measures of one run at its evaluations; built once per run."""

    def __init__(self, level: str, op: str, p: int, loss: str, model_kind: str, labels: torch.Tensor,
                 train_idx: torch.Tensor, val_idx: torch.Tensor, inputs: torch.Tensor,
                 dtype: torch.dtype = torch.float32):
        self.level, self.p, self.loss, self.model_kind = level, p, loss, model_kind
        self.fourier = level != "none" and op in FOURIER_OPS
        self.train_labels, self.val_labels, self.inputs = labels[train_idx], labels[val_idx], inputs
        self.basis, self.freq = fourier_basis(p, dtype, labels.device) if self.fourier else (None, None)

    def __call__(self, model: nn.Module, train_logits: torch.Tensor, val_logits: torch.Tensor) -> dict[str, Any]:
        """Every COLUMNS value (None where not defined), or {} when progress_measures is none."""
        if self.level == "none":
            return {}
        out: dict[str, Any] = dict.fromkeys(COLUMNS)
        squares: dict[str, list[torch.Tensor]] = {}
        for name, parameter in model.named_parameters():
            group = parameter_group(self.model_kind, name)
            if group is not None:
                squares.setdefault(group, []).append(parameter.detach().double().pow(2).sum())
        norms = {group: float(torch.stack(values).sum().sqrt()) for group, values in squares.items()}
        for group in GROUPS:
            out[f"weight_norm_{group}"] = norms.get(group)
        if not self.fourier:
            return out
        basis, freq = self.basis, self.freq
        power = fourier_power(model.embedding().detach(), basis, freq).sum(1).double()  # (K,)
        keys = key_frequencies(power)
        out.update(fourier_spectrum=power.sqrt().tolist(), key_frequencies=keys, fourier_gini=gini(power))
        out["restricted_loss"], out["excluded_loss"] = restricted_and_excluded(
            (train_logits, self.train_labels), (val_logits, self.val_labels), keys, basis, freq, self.loss)
        neuron_power = None
        if self.model_kind == "mlp":
            w_in = model.w_in.detach()  # rows: a's one-hot, then b's: (2p, width)
            neuron_power = fourier_power(w_in[:self.p], basis, freq) + fourier_power(w_in[self.p:], basis, freq)
        elif self.level == "full":
            neuron_power = activation_block_power(model.neurons(self.inputs), basis, freq)
        if neuron_power is not None:
            out["neuron_frequency_share"] = float(neuron_shares(neuron_power.double()).mean())
            if self.level == "full":
                strongest = neuron_power.argmax(0)
                out["neuron_frequencies"] = torch.bincount(strongest, minlength=len(power)).tolist()
        return out
