"""Metric and event names (defined once, imported by Tune, the stopper, the store and the queries),
evaluation, progress measures and the events tracker.

Importing this module does not import torch (the store reads the names); `evaluate` loads it.
"""

from __future__ import annotations

import math

# Reported at every evaluation, in this order.
METRICS: tuple[str, ...] = (
    "train_loss", "train_acc", "val_loss", "val_acc",
    "weight_norm",  # total L2 norm of all parameters
    "fourier_sparsity",  # modular tasks: share of embedding norm in its top frequencies (Nanda 2023)
    "softmax_collapse",  # share of samples whose loss is exactly 0 in floating point (Prieto 2025)
)
# Progress measures (trainers/progress.py; config field progress_measures): curve columns only, None where
# not defined (ops other than x+y / x-y, a group a model lacks, a measure its level leaves out).
PROGRESS: tuple[str, ...] = (
    "fourier_gini", "neuron_frequency_share", "restricted_loss", "excluded_loss",
    "weight_norm_embedding", "weight_norm_attention", "weight_norm_mlp", "weight_norm_unembedding",
)
PROGRESS_LISTS: dict[str, type] = {"fourier_spectrum": float, "key_frequencies": int, "neuron_frequencies": int}
# When generalisation emerges (../shared/research/grokking.md); null when it never happened.
EVENTS: tuple[str, ...] = (
    "steps_to_memorize",  # first evaluation with train_acc >= MEMORIZE_ACC
    "steps_to_generalize",  # first evaluation with val_acc >= GENERALIZE_ACC
    "steps_to_generalize_95",  # first evaluation with val_acc >= 0.95 (Grokfast's measure)
    "grokking_delay",  # steps_to_generalize - steps_to_memorize
    "circuit_step",  # first evaluation at or after memorisation with restricted_loss <= CIRCUIT_FRACTION * ln p
)
# The epoch-wise double-descent bump of validation loss after memorisation (not a survival event: "no bump"
# is not censoring); see val_loss_bump.
BUMP: tuple[str, ...] = ("val_loss_peak_step", "val_loss_peak")
CIRCUIT_FRACTION = 0.1  # x ln p, the loss of a uniform guess: the key-frequency logits alone nearly solve the task
BUMP_WINDOW = 5  # evaluations in the centred moving average that smooths val_loss before the peak is read
BUMP_RISE, BUMP_FALL = 1.10, 0.5  # a bump: peak >= 1.1 x its value at memorisation, later <= 0.5 x peak
CENSORED = "censored"  # the budget ended before val_acc >= GENERALIZE_ACC
MEMORIZE_ACC = 0.99
GENERALIZE_ACC = 0.99
GENERALIZE_95_ACC = 0.95
TOP_FREQUENCIES = 5  # fourier_sparsity counts this many strongest frequencies (Nanda 2023 finds ~5 key ones)


class EventTracker:
    """Events from the evaluations seen so far, plus the streak of evaluations at val_acc >= GENERALIZE_ACC."""

    def __init__(self, p: int | None = None) -> None:
        self.events: dict[str, int | None] = dict.fromkeys(EVENTS)
        self.streak = 0
        self.circuit_loss = None if not p else CIRCUIT_FRACTION * math.log(p)  # restricted_loss threshold

    def update(self, step: int, metrics: dict[str, float]) -> None:
        first = self.events
        if first["steps_to_memorize"] is None and metrics["train_acc"] >= MEMORIZE_ACC:
            first["steps_to_memorize"] = step
        if first["steps_to_generalize_95"] is None and metrics["val_acc"] >= GENERALIZE_95_ACC:
            first["steps_to_generalize_95"] = step
        if first["steps_to_generalize"] is None and metrics["val_acc"] >= GENERALIZE_ACC:
            first["steps_to_generalize"] = step
        if first["steps_to_memorize"] is not None and first["steps_to_generalize"] is not None:
            first["grokking_delay"] = first["steps_to_generalize"] - first["steps_to_memorize"]
        restricted = metrics.get("restricted_loss")
        if (first["circuit_step"] is None and first["steps_to_memorize"] is not None and self.circuit_loss
                and restricted is not None and restricted <= self.circuit_loss):
            first["circuit_step"] = step
        self.streak = self.streak + 1 if metrics["val_acc"] >= GENERALIZE_ACC else 0

    @classmethod
    def replay(cls, history: list[dict[str, float]], p: int | None = None) -> EventTracker:
        tracker = cls(p)
        for row in history:
            tracker.update(int(row["step"]), row)
        return tracker

    @property
    def censored(self) -> bool:
        """At the end of a run: it never reached val_acc >= GENERALIZE_ACC."""
        return self.events["steps_to_generalize"] is None


def val_loss_bump(history: list[dict[str, float]], memorized: int | None) -> dict[str, float | int | None]:
    """Epoch-wise double descent after memorisation: smooth val_loss with a centred moving average over
    BUMP_WINDOW evaluations (shorter at the ends); the bump is the highest smoothed value at or after the
    memorisation step, when it is at least BUMP_RISE x the smoothed value at memorisation and a later
    smoothed value falls to at most BUMP_FALL x the peak. None (both) otherwise, or before memorisation."""
    none = dict.fromkeys(BUMP)
    rows = sorted((r for r in history if r.get("val_loss") is not None and r["val_loss"] == r["val_loss"]),
                  key=lambda r: r["step"])
    if memorized is None or not rows:
        return none
    losses, half = [float(r["val_loss"]) for r in rows], BUMP_WINDOW // 2
    smooth = [sum(losses[max(0, i - half):i + half + 1]) / len(losses[max(0, i - half):i + half + 1])
              for i in range(len(losses))]
    after = [i for i, r in enumerate(rows) if r["step"] >= memorized]
    if not after:
        return none
    peak = max(after, key=lambda i: (smooth[i], -i))  # the highest, the earliest of equals
    if smooth[peak] < BUMP_RISE * smooth[after[0]] or min(smooth[peak:]) > BUMP_FALL * smooth[peak]:
        return none
    return {"val_loss_peak_step": int(rows[peak]["step"]), "val_loss_peak": smooth[peak]}


def evaluate(model, train: tuple, val: tuple, loss: str, modular: bool, train_logits=None,
             progress=None) -> dict:
    """Every METRICS value, without autograd. `train` and `val` are (inputs, labels); `train_logits`: the
    training step's own forward over the whole training set at these weights (full batch), reused rather
    than computed twice -- the models have no dropout or normalisation statistics, so train and eval mode
    compute the same function. `progress` (a trainers.progress.ProgressMeter) adds its measures from the
    same logits."""
    import torch

    from trainers.optim import per_sample_loss

    with torch.no_grad():
        train_logits = model(train[0]) if train_logits is None else train_logits.detach()
        val_logits = model(val[0])
        train_losses = per_sample_loss(loss, train_logits, train[1])
        val_losses = per_sample_loss(loss, val_logits, val[1])
        norm = torch.sqrt(sum(p.detach().pow(2).sum() for p in model.parameters()))
        dtype = train_losses.dtype
        values = torch.stack([
            train_losses.mean(), (train_logits.argmax(-1) == train[1]).to(dtype).mean(),
            val_losses.mean(), (val_logits.argmax(-1) == val[1]).to(dtype).mean(),
            norm.to(dtype), (train_losses == 0).to(dtype).mean(),
        ]).tolist()
        sparsity = fourier_sparsity(model.embedding()) if modular else float("nan")
        measures = {} if progress is None else progress(model, train_logits, val_logits)
    names = ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm", "softmax_collapse")
    return {**dict(zip(names, values, strict=True)), "fourier_sparsity": sparsity, **measures}


def fourier_sparsity(embedding) -> float:
    """Share of the (n, k) embedding's squared norm, in the Fourier basis over Z_n, held by its
    TOP_FREQUENCIES strongest non-constant frequencies (frequency f and n - f count as one)."""
    import torch

    spectrum = torch.fft.rfft(embedding.detach().double(), dim=0).abs().pow(2).sum(1)  # (n // 2 + 1,)
    n = embedding.shape[0]
    spectrum[1:(n + 1) // 2] *= 2  # f and n - f; the constant term and (even n) Nyquist term appear once
    total = spectrum.sum()
    return float(spectrum[1:].topk(min(TOP_FREQUENCIES, len(spectrum) - 1)).values.sum() / total)
