"""The trainer config: one frozen dataclass whose field names are the product's vocabulary.

The same word is the CLI `--set` key, the sweep-spec key, the Tune param-space key and the Parquet
column. `asdict(config)` is its only dict form.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A bad config value; the message names the field and what is allowed."""


@dataclass(frozen=True)
class TrainConfig:
    # --- task (Power et al. 2022) ---
    op: str = "x+y"  # a key of trainers.tasks.OPERATIONS
    p: int = 97  # modulus; S5 tasks ignore it (120 elements)
    train_fraction: float = 0.5
    # --- model ---
    model: str = "mlp"  # mlp | transformer
    width: int = 512  # mlp hidden width (Gromov 2023)
    activation: str = "quadratic"  # mlp activation: quadratic | relu
    layers: int = 1  # transformer blocks
    d_model: int = 128
    heads: int = 4
    d_mlp: int = 512
    layer_norm: bool = False
    op_token: bool = False  # transformer input `a op b =` (Power 2022) instead of `a b =` (Nanda 2023)
    init_scale: float = 1.0  # Omnigrok's alpha: every weight scaled by it at initialisation
    # --- optimisation ---
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.98
    momentum: float = 0.0  # sgd only
    weight_decay: float = 1.0
    warmup_steps: int = 0  # linear warm-up of the learning rate
    batch_size: int | None = None  # None: full batch
    loss: str = "cross_entropy"  # cross_entropy | mse | stablemax (Prieto et al. 2025)
    grokfast: str = "none"  # none | ema | ma (Lee et al. 2024)
    grokfast_alpha: float = 0.98  # ema filter momentum
    grokfast_lambda: float = 2.0  # amplification of the slow gradient
    grokfast_window: int = 100  # ma filter window
    # --- run ---
    seed: int = 0
    max_steps: int = 3000  # optimiser steps, not epochs
    eval_every: int = 10  # evaluation interval: the precision of every event step
    stop_on_generalize: bool = True  # end once val_acc >= 0.99 held for confirm_evals evaluations
    confirm_evals: int = 3
    dtype: str = "float32"  # float32 | float64
    threads: int | None = None  # torch intra-op threads; results reproduce for a given count
    # --- measures (added later: a field's default is what an older checkpoint or row means) ---
    progress_measures: str = "cheap"  # none | cheap | full: Nanda 2023's progress measures (trainers/progress.py)

    def __post_init__(self) -> None:
        validate(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))

CHOICES: dict[str, tuple[str, ...]] = {
    "model": ("mlp", "transformer"),
    "activation": ("quadratic", "relu"),
    "optimizer": ("adamw", "adam", "sgd"),
    "loss": ("cross_entropy", "mse", "stablemax"),
    "grokfast": ("none", "ema", "ma"),
    "dtype": ("float32", "float64"),
    "progress_measures": ("none", "cheap", "full"),
}

_POSITIVE_INT = ("p", "width", "layers", "d_model", "heads", "d_mlp", "max_steps", "eval_every",
                 "confirm_evals", "grokfast_window")
_NON_NEGATIVE = ("lr", "weight_decay", "momentum", "warmup_steps", "grokfast_lambda")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def validate(c: TrainConfig) -> None:
    """Check values (types are checked by `from_dict`); raise ConfigError naming the field."""
    from trainers.tasks import DIVISION_OPS, OPERATIONS  # tasks imports nothing from here at import time

    if c.op not in OPERATIONS:
        raise ConfigError(f"op: unknown operation {c.op!r}; choose one of {', '.join(OPERATIONS)}")
    for name, allowed in CHOICES.items():
        if getattr(c, name) not in allowed:
            raise ConfigError(f"{name}: {getattr(c, name)!r} is not allowed; choose one of {', '.join(allowed)}")
    for name in _POSITIVE_INT:
        if getattr(c, name) < 1:
            raise ConfigError(f"{name}: must be a positive integer, got {getattr(c, name)}")
    for name in _NON_NEGATIVE:
        if getattr(c, name) < 0:
            raise ConfigError(f"{name}: must be >= 0, got {getattr(c, name)}")
    if c.lr == 0:
        raise ConfigError("lr: must be > 0, got 0")
    if not 0 < c.train_fraction < 1:
        raise ConfigError(f"train_fraction: must be strictly between 0 and 1, got {c.train_fraction}")
    if c.p < 2:
        raise ConfigError(f"p: must be >= 2, got {c.p}")
    if c.op in DIVISION_OPS and not _is_prime(c.p):
        raise ConfigError(f"p: {c.op} needs a prime modulus (division), got {c.p}; try 97 or 113")
    if c.init_scale <= 0:
        raise ConfigError(f"init_scale: must be > 0, got {c.init_scale}")
    for name in ("beta1", "beta2", "grokfast_alpha"):
        if not 0 <= getattr(c, name) < 1:
            raise ConfigError(f"{name}: must be in [0, 1), got {getattr(c, name)}")
    if c.batch_size is not None and c.batch_size < 1:
        raise ConfigError(f"batch_size: must be a positive integer or null (full batch), got {c.batch_size}")
    if c.threads is not None and c.threads < 1:
        raise ConfigError(f"threads: must be a positive integer or null (torch default), got {c.threads}")
    if c.model == "transformer" and c.d_model % c.heads:
        raise ConfigError(f"heads: must divide d_model ({c.d_model}), got {c.heads}")


# --- typed construction from untyped input (CLI strings, YAML, JSON, Tune param dicts) ---

@functools.cache
def _field_type(name: str) -> tuple[type, bool]:
    """(base type, nullable) of a field, from its annotation (resolving annotations costs ~0.3 ms a call:
    a 10,000-trial sweep converts every field of every trial)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        base = next(a for a in args if a is not type(None))
        return base, type(None) in args
    return hint, False


def coerce(name: str, value: Any) -> Any:
    """Turn `value` (possibly a CLI string) into the field's type, or raise ConfigError."""
    if name not in FIELD_NAMES:
        raise ConfigError(f"{name}: unknown field; known fields: {', '.join(FIELD_NAMES)}")
    base, nullable = _field_type(name)
    is_null_word = isinstance(value, str) and value.strip().lower() in ("null", "none")
    if value is None or (is_null_word and nullable):  # "none" is also a value of `grokfast`
        if nullable:
            return None
        raise ConfigError(f"{name}: cannot be null; expected {base.__name__}")
    if isinstance(value, str):
        text = value.strip()
        try:
            if base is bool:
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            if base is int:
                number = float(text)
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return base(text)
        except ValueError:
            raise ConfigError(f"{name}: expected {base.__name__}, got {value!r}") from None
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if base is str and not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def with_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict completed with each missing field's default: a checkpoint or row written before a
    field existed means that default (the rule for every field added later)."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return {**defaults, **values}


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a validated config from untyped values; unknown keys are an error."""
    return TrainConfig(**{name: coerce(name, value) for name, value in values.items()})


# --- presets: each one a promise that it groks on its defaults (benchmarks/presets.py shows it) ---

PRESETS: dict[str, dict[str, Any]] = {
    # Gromov 2023, "Grokking modular arithmetic": 2-layer MLP on one-hot(a)+one-hot(b) with quadratic
    # activation. The CPU demo; AdamW settings of Power 2022. Measured here: memorise ~160, generalise ~570.
    "gromov": dict(op="x+y", p=97, train_fraction=0.5, model="mlp", width=512, activation="quadratic",
                   loss="cross_entropy", optimizer="adamw", lr=1e-3, beta1=0.9, beta2=0.98,
                   weight_decay=1.0, batch_size=None, max_steps=3000, eval_every=10),
    # Nanda et al. 2023, "Progress measures for grokking via mechanistic interpretability": a+b mod 113,
    # 1-layer transformer without LayerNorm, tokens `a b =`, full batch, warm-up 10 steps.
    "nanda2023": dict(op="x+y", p=113, train_fraction=0.3, model="transformer", layers=1, d_model=128,
                      heads=4, d_mlp=512, layer_norm=False, op_token=False, optimizer="adamw", lr=1e-3,
                      beta1=0.9, beta2=0.98, weight_decay=1.0, warmup_steps=10, batch_size=None,
                      max_steps=20000, eval_every=100),
    # Power et al. 2022, "Grokking: generalization beyond overfitting on small algorithmic datasets":
    # x/y mod 97, 2-layer decoder (d_model 128, 4 heads, LayerNorm), tokens `a op b =`, AdamW with wd 1
    # (paper appendix), 10-step warm-up, batch 512, 1e5 steps.
    "power2022": dict(op="x/y", p=97, train_fraction=0.5, model="transformer", layers=2, d_model=128,
                      heads=4, d_mlp=512, layer_norm=True, op_token=True, optimizer="adamw", lr=1e-3,
                      beta1=0.9, beta2=0.98, weight_decay=1.0, warmup_steps=10, batch_size=512,
                      max_steps=100_000, eval_every=100),
    # Lee et al. 2024, "Grokfast: accelerated grokking by amplifying slow gradients": the power2022
    # transformer on x*y mod 97 with 50% of the data and the EMA gradient filter (alpha 0.98, lambda 2);
    # their code's default optimiser is Adam, with weight_decay 0.005 as an L2 term. Headline: steps to 95%
    # validation accuracy fall ~50x. Measured here: memorise 820, generalise 1120 (~40 s).
    "grokfast": dict(op="x*y", p=97, train_fraction=0.5, model="transformer", layers=2, d_model=128,
                     heads=4, d_mlp=512, layer_norm=True, op_token=True, optimizer="adam", lr=1e-3,
                     beta1=0.9, beta2=0.98, weight_decay=0.005, warmup_steps=10, batch_size=512,
                     grokfast="ema", grokfast_alpha=0.98, grokfast_lambda=2.0, max_steps=20_000,
                     eval_every=20),
    # For tests: the behaviour, not a paper setting. Measured (seeds 0-3): memorise at 50 steps, generalise
    # at 240-290, val_acc < 0.1 at memorisation, ~0.2 s on one thread.
    "tiny": dict(op="x+y", p=31, train_fraction=0.5, model="mlp", width=128, activation="quadratic",
                 loss="cross_entropy", optimizer="adamw", lr=1e-2, beta1=0.9, beta2=0.98, weight_decay=3.0,
                 batch_size=None, max_steps=1000, eval_every=10),
    # For tests and quick looks at Nanda's circuit: nanda2023's transformer shape, narrower, at p = 31 with 60%
    # of the data. Measured: memorise at 100 steps, the progress measures move from ~200, generalise at ~800
    # (~10 s on one thread); with weight_decay 0 it stays censored and no circuit forms.
    "tiny_transformer": dict(op="x+y", p=31, train_fraction=0.6, model="transformer", layers=1, d_model=64,
                             heads=4, d_mlp=256, layer_norm=False, op_token=False, optimizer="adamw", lr=3e-3,
                             beta1=0.9, beta2=0.98, weight_decay=1.0, warmup_steps=10, batch_size=None,
                             max_steps=3000, eval_every=50),
}


PRESET_SOURCES: dict[str, str] = {
    "gromov": "Gromov 2023, Grokking modular arithmetic (quadratic MLP); the CPU demo",
    "nanda2023": "Nanda et al. 2023, Progress measures for grokking via mechanistic interpretability",
    "power2022": "Power et al. 2022, Grokking: generalization beyond overfitting on small algorithmic datasets",
    "grokfast": "Lee et al. 2024, Grokfast: accelerated grokking by amplifying slow gradients (EMA filter)",
    "tiny": "for tests: memorise, then a delayed jump, in well under a second",
    "tiny_transformer": "for tests: Nanda 2023's circuit forming in seconds (nanda2023's shape, narrower, p = 31)",
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A preset's config, with `overrides` (untyped values allowed) applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return from_dict({**PRESETS[name], **overrides})


def resolve(values: dict[str, Any]) -> TrainConfig:
    """A config from a dict that may name a `preset` (applied first) and override any field."""
    values = dict(values)
    name = values.pop("preset", None)
    if name is None:
        return from_dict(values)
    return preset(str(name), **values)
