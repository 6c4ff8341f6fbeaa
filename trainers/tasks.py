"""The binary-operation tasks of Power et al. 2022 and their deterministic train/validation split."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads lazily: trainers.config validates ops without importing it
    import torch

# Modular operations over Z_p, keyed by the string the user types. Each maps integer tensors (or ints)
# a, b and the modulus p to the answer. Division is a * b^(p-2) mod p (Fermat), defined for b != 0.
MODULAR: dict[str, Callable] = {
    "x+y": lambda x, y, p: (x + y) % p,
    "x-y": lambda x, y, p: (x - y) % p,
    "x*y": lambda x, y, p: (x * y) % p,
    "x/y": lambda x, y, p: (x * pow_mod(y, p - 2, p)) % p,
    "x^2+y^2": lambda x, y, p: (x * x + y * y) % p,
    "x^2+xy+y^2": lambda x, y, p: (x * x + x * y + y * y) % p,
    "x^2+xy+y^2+x": lambda x, y, p: (x * x + x * y + y * y + x) % p,
    "x^3+xy": lambda x, y, p: (x * x * x + x * y) % p,
    "x^3+xy^2+y": lambda x, y, p: (x * x * x + x * y * y + y) % p,
}
DIVISION_OPS: frozenset[str] = frozenset({"x/y"})
# Permutation tasks over S5 (120 elements): composition x.y and conjugation x.y.x^-1.
PERMUTATION: tuple[str, ...] = ("s5", "s5conj")
OPERATIONS: tuple[str, ...] = (*MODULAR, *PERMUTATION)

S5: list[tuple[int, ...]] = list(itertools.permutations(range(5)))


def pow_mod(base, exponent: int, p: int):
    """base**exponent mod p by squaring, elementwise for tensors (keeps int64 from overflowing)."""
    result = base * 0 + 1
    base = base % p
    while exponent:
        if exponent & 1:
            result = (result * base) % p
        base = (base * base) % p
        exponent >>= 1
    return result


def s5_table(op: str) -> list[list[int]]:
    """answer[x][y] as indices into S5: composition (x.y)(i) = x[y[i]], conjugation x.y.x^-1."""
    index = {perm: i for i, perm in enumerate(S5)}

    def compose(f: tuple[int, ...], g: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(f[g[i]] for i in range(5))

    def inverse(f: tuple[int, ...]) -> tuple[int, ...]:
        out = [0] * 5
        for i, fi in enumerate(f):
            out[fi] = i
        return tuple(out)

    if op == "s5":
        return [[index[compose(x, y)] for y in S5] for x in S5]
    return [[index[compose(compose(x, y), inverse(x))] for y in S5] for x in S5]


def n_symbols(op: str, p: int) -> int:
    """Operand/answer alphabet size: p for modular tasks, 120 for S5."""
    return len(S5) if op in PERMUTATION else p


@dataclass(frozen=True)
class Dataset:
    """Every (a, b) pair of the task, on one device, split once by (seed, train_fraction)."""

    a: torch.Tensor  # (N,) int64 left operands
    b: torch.Tensor  # (N,) int64 right operands
    labels: torch.Tensor  # (N,) int64 answers
    train_idx: torch.Tensor  # (N_train,) sorted indices into a/b/labels
    val_idx: torch.Tensor  # (N_val,) sorted, disjoint from train_idx
    n_symbols: int  # operands and answers are in range(n_symbols)


def all_pairs(op: str, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, labels) for every valid pair, in row-major order (division drops b = 0)."""
    import torch

    n = n_symbols(op, p)
    a, b = torch.cartesian_prod(torch.arange(n), torch.arange(n)).unbind(1)
    if op in DIVISION_OPS:
        keep = b != 0
        a, b = a[keep], b[keep]
    if op in PERMUTATION:
        labels = torch.tensor(s5_table(op)).reshape(-1)
    else:
        labels = MODULAR[op](a, b, p)
    return a.contiguous(), b.contiguous(), labels.contiguous()


def split(n: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic disjoint (train, val) index sets: a seeded permutation, cut at round(fraction * n)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_train = min(max(round(train_fraction * n), 1), n - 1)
    return order[:n_train].sort().values, order[n_train:].sort().values


def make_dataset(op: str, p: int, train_fraction: float, seed: int, device: torch.device | str = "cpu") -> Dataset:
    a, b, labels = all_pairs(op, p)
    train_idx, val_idx = split(len(labels), train_fraction, seed)
    to = dict(device=device)
    return Dataset(a.to(**to), b.to(**to), labels.to(**to), train_idx.to(**to), val_idx.to(**to), n_symbols(op, p))
