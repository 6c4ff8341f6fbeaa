"""The two model families: Gromov's one-hot MLP and a small decoder-only transformer.

Both read out one answer per (a, b) pair, and neither computes what cannot reach that answer: the MLP
never builds the one-hot matrix (its product is a sum of two weight rows), and the transformer's last
layer computes only the answer position's query, attention output, MLP and unembedding.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from trainers.config import TrainConfig


def _uniform(generator: torch.Generator, shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
    """nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from an explicit generator."""
    bound = 1 / math.sqrt(fan_in)
    return nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * bound)


def _normal(generator: torch.Generator, shape: tuple[int, ...], std: float) -> torch.Tensor:
    return nn.Parameter(torch.randn(shape, generator=generator) * std)


def _rows_gradient(x: torch.Tensor, grad: torch.Tensor, rows: int, scatter: torch.Tensor | None) -> torch.Tensor:
    """The gradient of w (rows, width) in h = w[x[:, 0]] + w[x[:, 1]]: every pair's grad added to its two rows.
    With `scatter` (the (rows, B) CSR matrix of which pair reads which row) one sparse product does it,
    ~1.6x faster than two index_add_ on CPU (gromov: 0.40 vs 0.65 ms)."""
    if scatter is not None:
        return torch.sparse.mm(scatter, grad)
    grad_w = grad.new_zeros(rows, grad.shape[1])
    return grad_w.index_add_(0, x[:, 0], grad).index_add_(0, x[:, 1], grad)


def scatter_matrix(x: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """CSR (rows, B) with a 1 at (r, i) when pair i reads row r (x's two columns use disjoint rows)."""
    flat = x.flatten()  # pair i reads rows flat[2i], flat[2i + 1]
    order = torch.argsort(flat, stable=True)  # by row, pairs in increasing order within a row
    crow = torch.zeros(rows + 1, dtype=torch.long, device=x.device)
    crow[1:] = torch.bincount(flat, minlength=rows).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": sparse.mm on CPU is long-standing
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, order // 2, torch.ones(len(flat), dtype=dtype, device=x.device),
                                       (rows, x.shape[0]))


class _RowSum(torch.autograd.Function):
    """w[x[:, 0]] + w[x[:, 1]] (embedding_bag), with the faster backward of `_rows_gradient`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, scatter: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.rows, ctx.scatter = w.shape[0], scatter
        return F.embedding_bag(x, w, mode="sum")  # (B, width)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return None, _rows_gradient(x, grad, ctx.rows, ctx.scatter), None


def square_then_project_backward(grad: torch.Tensor, h: torch.Tensor, a: torch.Tensor,
                                 w_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients (of h, of w_out) of logits = (h * h) @ w_out^T, a = h * h, for one model ((B, width))
    or a leading member axis ((K, B, width); trainers.batched). The activation's factor 2 goes on the small
    logit gradient (an exact scaling), then one in-place product with h: one pass over the activations,
    where autograd's backward of h * h takes two products and a sum, and no temporary."""
    grad_w_out = grad.mT @ a  # (..., n, width)
    return (grad * 2 @ w_out).mul_(h), grad_w_out


class _QuadraticMLP(torch.autograd.Function):
    """(w_in[x0] + w_in[x1])^2 @ w_out^T as one autograd node (backward: square_then_project_backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor,
                scatter: torch.Tensor | None) -> torch.Tensor:
        h = F.embedding_bag(x, w_in, mode="sum")  # (B, width)
        a = h * h
        ctx.save_for_backward(x, h, a, w_out)
        ctx.rows, ctx.scatter = w_in.shape[0], scatter
        return F.linear(a, w_out)  # (B, n)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor, None]:
        x, h, a, w_out = ctx.saved_tensors
        grad_h, grad_w_out = square_then_project_backward(grad, h, a, w_out)
        return None, _rows_gradient(x, grad_h, ctx.rows, ctx.scatter), grad_w_out, None


class MLP(nn.Module):
    """Gromov 2023: logits = W_out phi(W_in [one-hot(a); one-hot(b)]), no biases, phi quadratic or ReLU.

    W_in [one-hot(a); one-hot(b)] is the sum of rows a and n + b of `w_in`: one `embedding_bag` look-up
    and sum (same parameters and maths as the dense one-hot Linear, a fraction of its work). `w_in` is
    the transpose of that Linear's weight.
    """

    def __init__(self, n: int, width: int, activation: str, generator: torch.Generator):
        super().__init__()
        self.n, self.activation = n, activation
        self.w_in = _uniform(generator, (2 * n, width), fan_in=2 * n)  # rows: a's one-hot, then b's
        self.w_out = _uniform(generator, (n, width), fan_in=width)  # nn.Linear(width, n).weight
        self._scatter: tuple | None = None  # (inputs, their version, scatter_matrix): see _scatter_matrix

    def inputs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The row indices each pair sums, (N, 2)."""
        return torch.stack([a, b + self.n], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scatter = self._scatter_matrix(x) if torch.is_grad_enabled() else None
        if self.activation == "quadratic":
            return _QuadraticMLP.apply(x, self.w_in, self.w_out, scatter)  # (B, n)
        return F.linear(torch.relu(_RowSum.apply(x, self.w_in, scatter)), self.w_out)

    def _scatter_matrix(self, x: torch.Tensor) -> torch.Tensor | None:
        """`scatter_matrix(x)` on CPU (elsewhere index_add_ serves), kept while the same input tensor comes
        back: full-batch training passes the same one every step."""
        if x.device.type != "cpu":
            return None
        cached = self._scatter
        if cached is None or cached[0] is not x or cached[1] != x._version or cached[2].dtype != self.w_in.dtype:
            cached = self._scatter = (x, x._version, scatter_matrix(x, self.w_in.shape[0], self.w_in.dtype))
        return cached[2]

    def embedding(self) -> torch.Tensor:
        """Per-symbol input weights, (n, 2 * width): the Fourier-sparsity measure reads these."""
        return torch.cat([self.w_in[: self.n], self.w_in[self.n:]], dim=1)


class Block(nn.Module):
    """Attention + ReLU MLP on a residual stream; pre-LayerNorm when `layer_norm` (GPT-2 style, as the Power
    2022 reimplementations and Grokfast's code), none for Nanda 2023.

    Attention runs over at most 4 positions, so scores are elementwise products and sums: far cheaper
    than a batch of 3x3 matrix products.
    """

    def __init__(self, d_model: int, heads: int, d_mlp: int, layer_norm: bool, generator: torch.Generator):
        super().__init__()
        self.heads = heads
        std = 1 / math.sqrt(d_model)  # Nanda 2023's init
        self.w_qkv = _normal(generator, (d_model, 3 * d_model), std)  # x @ w_qkv -> [q | k | v]
        self.w_o = _normal(generator, (d_model, d_model), std)
        self.w_in = _normal(generator, (d_model, d_mlp), std)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.w_out = _normal(generator, (d_mlp, d_model), std)
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.ln_attn = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.ln_mlp = nn.LayerNorm(d_model) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor, last_only: bool) -> torch.Tensor:
        """(B, T, d) -> (B, T, d), or (B, d) for the last position only."""
        x = self.attend(x, last_only)
        return x + self.hidden(x) @ self.w_out + self.b_out

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP's neuron activations, (..., d_mlp): the progress measures read them."""
        return torch.relu(self.ln_mlp(x) @ self.w_in + self.b_in)

    def attend(self, x: torch.Tensor, last_only: bool) -> torch.Tensor:
        """The residual stream after attention: (B, T, d), or (B, d) at the last position only."""
        B, T, d = x.shape
        H, dh = self.heads, d // self.heads
        h = self.ln_attn(x)
        kv = h @ self.w_qkv[:, d:]  # (B, T, 2d)
        k, v = kv.view(B, T, 2, H, dh).unbind(2)  # (B, T, H, dh) each
        if last_only:
            q = (h[:, -1] @ self.w_qkv[:, :d]).view(B, 1, H, dh)
            scores = (q * k).sum(-1) / math.sqrt(dh)  # (B, T, H): the last query sees every position
            z = (scores.softmax(1).unsqueeze(-1) * v).sum(1).reshape(B, d)  # (B, d)
            x = x[:, -1]
        else:
            q = (h @ self.w_qkv[:, :d]).view(B, T, H, dh)
            scores = (q.unsqueeze(2) * k.unsqueeze(1)).sum(-1) / math.sqrt(dh)  # (B, Tq, Tk, H)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril().view(1, T, T, 1)
            weights = scores.masked_fill(~causal, float("-inf")).softmax(2)
            z = (weights.unsqueeze(-1) * v.unsqueeze(1)).sum(2).reshape(B, T, d)  # (B, T, d)
        return x + z @ self.w_o


class Transformer(nn.Module):
    """Decoder-only transformer over `a b =` (Nanda 2023) or `a op b =` (Power 2022); reads the answer at `=`."""

    def __init__(self, n: int, layers: int, d_model: int, heads: int, d_mlp: int, layer_norm: bool,
                 op_token: bool, generator: torch.Generator):
        super().__init__()
        self.n, self.op_token = n, op_token
        n_tokens = 4 if op_token else 3
        std = 1 / math.sqrt(d_model)
        self.embed = _normal(generator, (n + n_tokens - 2, d_model), std)  # symbols, then `op` if used, then `=`
        self.pos = _normal(generator, (n_tokens, d_model), std)
        self.blocks = nn.ModuleList(Block(d_model, heads, d_mlp, layer_norm, generator) for _ in range(layers))
        self.ln_final = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.unembed = _normal(generator, (d_model, n), 1 / math.sqrt(n))

    def inputs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Token ids, (N, 3) or (N, 4)."""
        if self.op_token:
            return torch.stack([a, torch.full_like(a, self.n), b, torch.full_like(a, self.n + 1)], dim=1)
        return torch.stack([a, b, torch.full_like(a, self.n)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.embedding(x, self.embed) + self.pos  # (B, T, d)
        for i, block in enumerate(self.blocks):
            h = block(h, last_only=i == len(self.blocks) - 1)
        return self.ln_final(h) @ self.unembed  # (B, n)

    def embedding(self) -> torch.Tensor:
        return self.embed[: self.n]  # (n, d_model)

    def neurons(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's MLP activations at the answer position, (B, d_mlp) (Nanda 2023's neurons)."""
        h = F.embedding(x, self.embed) + self.pos  # (B, T, d)
        for block in self.blocks[:-1]:
            h = block(h, last_only=False)
        return self.blocks[-1].hidden(self.blocks[-1].attend(h, last_only=True))


def build_model(config: TrainConfig, n: int) -> nn.Module:
    """The config's model over `n` symbols, initialised from `config.seed` and scaled by `init_scale`."""
    generator = torch.Generator().manual_seed(config.seed)
    if config.model == "mlp":
        model: nn.Module = MLP(n, config.width, config.activation, generator)
    else:
        model = Transformer(n, config.layers, config.d_model, config.heads, config.d_mlp, config.layer_norm,
                            config.op_token, generator)
    if config.init_scale != 1.0:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(config.init_scale)
    return model
