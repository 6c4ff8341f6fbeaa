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
- `neuron_frequencies` (`full`): how many neurons have each frequency as their strongest (ties within a relative
  TIE go to the lower frequency: a neuron firing on one input has a flat spectrum).
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
TIE = 1e-6  # powers within this relative distance of a neuron's strongest count as tied (see strongest_frequency)
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


# Everything below takes a leading member axis K: one run is K = 1, a batched model's members are K > 1, and
# both go through the same products (a loop over members grew with K and dominated a GPU's evaluations).

def fourier_power(weights: torch.Tensor, basis: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """(K, p, m) rows per symbol -> (K, p // 2, m) squared norm per frequency k = 1 .. p // 2, columns apart."""
    squares = (basis @ weights).pow(2)  # (K, rows, m)
    return squares.new_zeros(squares.shape[0], int(freq[-1]) + 1, squares.shape[2]).index_add_(1, freq, squares)


def gini(values: torch.Tensor) -> torch.Tensor:
    """(K, n) non-negative values -> (K,) Gini coefficients in float64 (0: all equal; NaN: all zero)."""
    x = values.double().sort(-1).values
    n, total = x.shape[-1], x.sum(-1)
    i = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    coefficient = ((2 * i - n - 1) * x).sum(-1) / (n * total)
    return torch.where(total > 0, coefficient, torch.full_like(total, float("nan")))


def key_mask(power: torch.Tensor, share: float = KEY_SHARE) -> torch.Tensor:
    """(K, F) power per frequency -> (K, F) bool: the smallest set of frequencies, strongest first, holding
    `share` of each row's sum (ties: the lower frequency first)."""
    order = torch.argsort(-power, dim=-1, stable=True)
    cumulative = power.gather(-1, order).cumsum(-1)
    count = ((cumulative < share * cumulative[..., -1:]).sum(-1, keepdim=True) + 1).clamp(max=power.shape[-1])
    ranks = torch.arange(power.shape[-1], device=power.device).expand_as(order)
    return torch.zeros_like(order, dtype=torch.bool).scatter_(-1, order, ranks < count)


def key_frequencies(power: torch.Tensor, share: float = KEY_SHARE) -> list[int]:
    """One run's (F,) power per frequency -> its key frequencies, 1-based (`key_mask` of one row)."""
    return (torch.nonzero(key_mask(power.unsqueeze(0), share)[0]).flatten() + 1).tolist()


def circuit_part(val_logits: torch.Tensor, val_labels: torch.Tensor, keys: torch.Tensor, basis: torch.Tensor,
                 freq: torch.Tensor) -> torch.Tensor:
    """(K, p, c): the key-frequency component, along s, of the mean validation logits of the inputs whose answer
    is s (`keys`: `key_mask`'s (K, F)). The directions cos/sin(w_k s) are functions of s = a +- b alone, so
    projecting logits on them is averaging over each s and keeping the key frequencies of that table.
    Held-out inputs only: averaged over training inputs, the memorised answers themselves would pass for a
    circuit (see module docstring)."""
    K, _, c = val_logits.shape
    p = basis.shape[1]
    sums = val_logits.new_zeros(K, p, c).scatter_add_(1, val_labels.unsqueeze(-1).expand(-1, -1, c), val_logits)
    counts = val_logits.new_zeros(K, p).scatter_add_(1, val_labels, val_logits.new_ones(val_labels.shape))
    means = sums / counts.clamp_min(1).unsqueeze(-1)
    on = keys[:, freq].to(basis.dtype).unsqueeze(-1)  # (K, rows, 1): the key frequencies' cos and sin rows
    return basis.t() @ (on * (basis @ means))


def restricted_and_excluded(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                            keys: torch.Tensor, basis: torch.Tensor, freq: torch.Tensor, loss: str
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(restricted_loss, excluded_loss), each (K,), from (logits (K, N, c), labels (K, N)) of the training
    and validation inputs; the labels are s itself for x+y and x-y."""
    circuit = circuit_part(val[0], val[1], keys, basis, freq)

    def at(labels: torch.Tensor) -> torch.Tensor:  # circuit[k, labels[k]] for every member k
        return circuit.gather(1, labels.unsqueeze(-1).expand(-1, -1, circuit.shape[2]))

    def mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return per_sample_loss(loss, logits.flatten(0, 1), labels.flatten()).view(labels.shape).mean(1)

    kept = at(val[1])
    restricted = kept + (val[0] - kept).mean(1, keepdim=True)  # Nanda's bias fix: add back the mean removed
    return mean_loss(restricted, val[1]), mean_loss(train[0] - at(train[1]), train[1])


def neuron_shares(power: torch.Tensor) -> torch.Tensor:
    """(K, F, neurons) power per frequency -> (K, neurons): each neuron's share in its strongest frequency."""
    return power.max(1).values / power.sum(1).clamp_min(torch.finfo(power.dtype).tiny)


def strongest_frequency(power: torch.Tensor) -> torch.Tensor:
    """(K, F, neurons) -> (K, neurons): each neuron's strongest frequency (0-based), ties (within TIE of the
    maximum) to the lower frequency. A neuron that fires on one input has a flat spectrum: a plain argmax
    would pick by rounding noise, and a batched model's member would disagree with the same run alone."""
    near = power >= power.max(1, keepdim=True).values * (1 - TIE)
    return near.to(power.dtype).argmax(1)  # the first of the maxima


def activation_block_power(activations: torch.Tensor, basis: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """(K, p^2, neurons) activations over the (a, b) grid -> (K, p // 2, neurons): per frequency k, the
    variance in the 2-D Fourier block {1, cos k, sin k} x {1, cos k, sin k} minus the constant (Nanda 2023)."""
    p = basis.shape[1]
    grid = activations.reshape(activations.shape[0], p, p, -1)
    grid = grid - grid.mean((1, 2), keepdim=True)
    full = torch.cat([basis.new_full((1, p), p ** -0.5), basis])  # the constant first: row 0
    coef = torch.einsum("ia,kabn->kibn", full, grid)
    coef = torch.einsum("jb,kibn->kijn", full, coef).pow(2)  # (K, rows + 1, rows + 1, neurons)
    rows = [[0, *(1 + torch.nonzero(freq == k).flatten()).tolist()] for k in range(int(freq[-1]) + 1)]
    return torch.stack([coef[:, r][:, :, r].sum((1, 2)) - coef[:, 0, 0] for r in rows], dim=1)


class StackedProgress:
    """The progress measures of K runs of one shape at once, from stacked weights and logits: a batched
    model's members, or one run (K = 1, `ProgressMeter`). One device-to-host copy for all K."""

    def __init__(self, level: str, op: str, p: int, loss: str, model_kind: str, dtype: torch.dtype,
                 device: torch.device | str):
        self.level, self.p, self.loss, self.model_kind = level, p, loss, model_kind
        self.fourier = level != "none" and op in FOURIER_OPS
        self.basis, self.freq = fourier_basis(p, dtype, device) if self.fourier else (None, None)

    def wants_neurons(self) -> bool:
        """Whether __call__ needs the transformer's neuron activations (`full` only: one more forward)."""
        return self.fourier and self.level == "full" and self.model_kind == "transformer"

    @torch.no_grad()
    def __call__(self, params: dict[str, torch.Tensor], embedding: torch.Tensor,
                 train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 neurons: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """Per member, every COLUMNS value (None where not defined), or {} when progress_measures is none.
        `params`: name -> (K, ...) stacked parameters; `embedding`: (K, p, m) per-symbol weights;
        `train`/`val`: (logits (K, N, c), labels (K, N)); `neurons`: (K, p^2, d_mlp) when wants_neurons()."""
        K = embedding.shape[0]
        if self.level == "none":
            return [{} for _ in range(K)]
        squares: dict[str, list[torch.Tensor]] = {}
        for name, parameter in params.items():
            group = parameter_group(self.model_kind, name)
            if group is not None:
                squares.setdefault(group, []).append(parameter.detach().double().pow(2).flatten(1).sum(1))
        scalars = {f"weight_norm_{group}": torch.stack(squares[group]).sum(0).sqrt()  # name -> (K,)
                   for group in GROUPS if group in squares}
        lists: dict[str, torch.Tensor] = {}  # name -> (K, F)
        if self.fourier:
            basis, freq = self.basis, self.freq
            power = fourier_power(embedding.detach(), basis, freq).sum(2).double()  # (K, F)
            keys = key_mask(power)
            scalars["fourier_gini"] = gini(power)
            scalars["restricted_loss"], scalars["excluded_loss"] = restricted_and_excluded(
                train, val, keys, basis, freq, self.loss)
            lists.update(fourier_spectrum=power.sqrt(), key_frequencies=keys)
            neuron_power = None
            if self.model_kind == "mlp":
                w_in = params["w_in"].detach()  # rows: a's one-hot, then b's: (K, 2p, width)
                neuron_power = (fourier_power(w_in[:, :self.p], basis, freq)
                                + fourier_power(w_in[:, self.p:], basis, freq))
            elif neurons is not None:
                neuron_power = activation_block_power(neurons, basis, freq)
            if neuron_power is not None:
                scalars["neuron_frequency_share"] = neuron_shares(neuron_power.double()).mean(1)
                if self.level == "full":
                    strongest = strongest_frequency(neuron_power)  # (K, neurons)
                    lists["neuron_frequencies"] = power.new_zeros(power.shape).scatter_add_(
                        1, strongest, power.new_ones(strongest.shape))
        table = torch.cat([torch.stack([v.double() for v in scalars.values()], 1),
                           *(v.double() for v in lists.values())], 1).cpu().tolist()  # the one device sync
        out = []
        for row in table:
            values: dict[str, Any] = dict.fromkeys(COLUMNS)
            values.update(zip(scalars, row, strict=False))
            at = len(scalars)
            for name, part in lists.items():
                values[name] = row[at:at + part.shape[1]]
                at += part.shape[1]
            if "key_frequencies" in lists:  # a mask -> the frequencies, 1-based
                values["key_frequencies"] = [k + 1 for k, on in enumerate(values["key_frequencies"]) if on]
            if "neuron_frequencies" in lists:
                values["neuron_frequencies"] = [int(count) for count in values["neuron_frequencies"]]
            out.append(values)
        return out


class ProgressMeter:
    """Computes the progress measures of one run at its evaluations; built once per run."""

    def __init__(self, level: str, op: str, p: int, loss: str, model_kind: str, labels: torch.Tensor,
                 train_idx: torch.Tensor, val_idx: torch.Tensor, inputs: torch.Tensor,
                 dtype: torch.dtype = torch.float32):
        self.level = level
        self.measures = StackedProgress(level, op, p, loss, model_kind, dtype, labels.device)
        self.train_labels, self.val_labels, self.inputs = labels[train_idx], labels[val_idx], inputs

    @torch.no_grad()
    def __call__(self, model: nn.Module, train_logits: torch.Tensor, val_logits: torch.Tensor) -> dict[str, Any]:
        """Every COLUMNS value (None where not defined), or {} when progress_measures is none."""
        if self.level == "none":
            return {}
        neurons = model.neurons(self.inputs).unsqueeze(0) if self.measures.wants_neurons() else None
        one = {name: p.unsqueeze(0) for name, p in model.named_parameters()}  # K = 1
        train = (train_logits.unsqueeze(0), self.train_labels.unsqueeze(0))
        val = (val_logits.unsqueeze(0), self.val_labels.unsqueeze(0))
        return self.measures(one, model.embedding().unsqueeze(0), train, val, neurons)[0]
