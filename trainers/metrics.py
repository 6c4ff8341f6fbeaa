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

    with torch.no_grad():
        train_logits = model(train[0]) if train_logits is None else train_logits.detach()
        val_logits = model(val[0])
        values = evaluate_stacked((train_logits[None], train[1][None]), (val_logits[None], val[1][None]),
                                  [p[None] for p in model.parameters()], model.embedding()[None], loss, modular)[0]
        measures = {} if progress is None else progress(model, train_logits, val_logits)
    return {**values, **measures}


def evaluate_stacked(train: tuple, val: tuple, params: list, embedding, loss: str, modular: bool) -> list[dict]:
    """Every METRICS value of K runs of one shape at once (`evaluate` is K = 1; trainers.batched's members
    are K > 1): `train` and `val` are (logits (K, N, c), labels (K, N)), `params` the stacked parameters
    (K, ...), `embedding` the per-symbol weights (K, n, k). One device-to-host copy for all K."""
    import torch

    from trainers.optim import per_sample_loss

    K = train[1].shape[0]

    def losses(logits, labels):
        return per_sample_loss(loss, logits.flatten(0, 1), labels.flatten()).view(K, -1)

    with torch.no_grad():
        (train_logits, train_labels), (val_logits, val_labels) = train, val
        train_losses, val_losses = losses(*train), losses(*val)
        dtype = train_losses.dtype
        norm = torch.sqrt(sum(p.detach().pow(2).flatten(1).sum(1) for p in params))
        columns = [train_losses.mean(1), (train_logits.argmax(-1) == train_labels).to(dtype).mean(1),
                   val_losses.mean(1), (val_logits.argmax(-1) == val_labels).to(dtype).mean(1),
                   norm.to(dtype), (train_losses == 0).to(dtype).mean(1)]
        if modular:
            columns.append(fourier_sparsity(embedding).to(dtype))
        values = torch.stack(columns, dim=1).tolist()
    names = ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm", "softmax_collapse", "fourier_sparsity")
    return [{**dict(zip(names, row, strict=False)), **({} if modular else {"fourier_sparsity": float("nan")})}
            for row in values]


def fourier_sparsity(embedding):
    """(K, n, k) embeddings -> (K,) float64: the share of each one's squared norm, in the Fourier basis over
    Z_n, held by its TOP_FREQUENCIES strongest non-constant frequencies (f and n - f count as one)."""
    import torch

    spectrum = torch.fft.rfft(embedding.detach().double(), dim=1).abs().pow(2).sum(2)  # (K, n // 2 + 1)
    n = embedding.shape[1]
    spectrum[:, 1:(n + 1) // 2] *= 2  # f and n - f; the constant term and (even n) Nyquist term appear once
    top = spectrum[:, 1:].topk(min(TOP_FREQUENCIES, spectrum.shape[1] - 1), dim=1).values.sum(1)
    return top / spectrum.sum(1)
