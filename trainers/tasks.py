"""The binary-operation tasks of Power et al. 2022 and their deterministic train/validation split."""

from __future__ import annotations

import itertools
from collections.abc import Callable

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
