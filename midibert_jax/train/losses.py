"""Losses and metrics of adversarial pre-training (REFERENCE.md §6.4-6.8), as pure functions.

Shapes: B examples, L positions, 8 fields, V_f the vocabulary of field f. Logits come as a tuple of 8
float arrays [B, L, V_f]; targets are the clean int32 tokens [B, L, 8]. Means over notes are global
over the batch (sum / count), so they are the same however the batch is sharded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from midibert_jax.tokenizer import vocab
from midibert_jax.train import masking

FIELD_WEIGHTS = ("inverse_accuracy", "uniform")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static loss settings; build it with `from_config(config.loss)`.

    Attributes:
      field_weights: "inverse_accuracy" (w_f ∝ 1 / last eval accuracy of field f) or "uniform".
      masker_target_fraction: per example, floor(fraction · k_b) highest- and lowest-loss replaced notes
        get masker targets 1 and 0.
      full_sequence_weight: weight of the full-sequence reconstruction term (0 disables it; reference 1).
      reference_sign_flip: reference bug §6.6: odd examples get inverted masker targets.
      reference_full_sequence_includes_pads: reference quirk §8.5: the full-sequence term averages over all
        B·L positions, pads included (otherwise over non-pad notes).
    """

    field_weights: str
    masker_target_fraction: float
    full_sequence_weight: float
    reference_sign_flip: bool
    reference_full_sequence_includes_pads: bool

    def __post_init__(self):
        if self.field_weights not in FIELD_WEIGHTS:
            raise ValueError(f"loss.field_weights must be one of {FIELD_WEIGHTS}, got {self.field_weights!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> "LossConfig":
        """From a `config.loss` ConfigDict (or any mapping with the attribute names above)."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x [B, L, ...] over the positions where mask [B, L] is True; 0 if there are none.

    Returns x's trailing shape (e.g. [8] for per-field values).
    """
    m = mask.astype(jnp.float32).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return (x * m).sum((0, 1)) / jnp.maximum(m.sum((0, 1)), 1.0)


def per_field_cross_entropy(logits: Sequence[jax.Array], targets: jax.Array) -> jax.Array:
    """float32 [B, L, 8]: cross-entropy of each field, from 8 logits [B, L, V_f] and int32 targets [B, L, 8]."""
    return jnp.stack(
        [
            optax.softmax_cross_entropy_with_integer_labels(lg.astype(jnp.float32), targets[..., f])
            for f, lg in enumerate(logits)
        ],
        axis=-1,
    )


def per_field_correct(logits: Sequence[jax.Array], targets: jax.Array) -> jax.Array:
    """bool [B, L, 8]: argmax prediction equals the target, per field."""
    return jnp.stack([jnp.argmax(lg, -1) == targets[..., f] for f, lg in enumerate(logits)], axis=-1)


def uniform_field_weights() -> jax.Array:
    """float32 [8]: 1/8 each (the weights before the first evaluation)."""
    return jnp.full((vocab.NUM_FIELDS,), 1.0 / vocab.NUM_FIELDS, jnp.float32)


def field_weights_from_accuracy(accuracy: jax.Array, mode: str, min_accuracy: float = 1e-3) -> jax.Array:
    """float32 [8] weights summing to 1, from the last evaluation's per-field accuracy [8].

    "inverse_accuracy": w_f ∝ 1 / max(acc_f, min_accuracy); "uniform": 1/8 each.
    """
    if mode == "uniform":
        return uniform_field_weights()
    if mode != "inverse_accuracy":
        raise ValueError(f"unknown field weighting {mode!r}")
    inv = 1.0 / jnp.maximum(jnp.asarray(accuracy, jnp.float32), min_accuracy)
    return inv / inv.sum()


def recoverer_loss(
    ce: jax.Array,
    selected: jax.Array,
    nonpad: jax.Array,
    field_weights: jax.Array,
    cfg: LossConfig,
) -> tuple[jax.Array, jax.Array]:
    """Weighted recoverer loss.

    loss = Σ_f w_f · mean_{selected} CE_f  +  full_sequence_weight · Σ_f w_f · mean_{non-pad (or all)} CE_f.

    Args:
      ce: float32 [B, L, 8] per-field cross-entropy.
      selected: bool [B, L] scored notes; nonpad: bool [B, L].
      field_weights: float [8] (no gradient flows into them).
    Returns:
      (loss scalar, per-field mean CE over the selected notes float32 [8]).
    """
    w = jax.lax.stop_gradient(jnp.asarray(field_weights, jnp.float32))
    per_field = _masked_mean(ce, selected)
    loss = per_field @ w
    if cfg.full_sequence_weight:
        region = jnp.ones_like(nonpad) if cfg.reference_full_sequence_includes_pads else nonpad
        loss = loss + cfg.full_sequence_weight * (_masked_mean(ce, region) @ w)
    return loss, per_field


def masker_targets(
    weighted_ce: jax.Array,
    replaced: jax.Array,
    k: jax.Array,
    cfg: LossConfig,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-example masker targets from the recoverer's per-note weighted loss (no gradient).

    Per example b, with t_b = min(floor(fraction · k_b), floor(r_b / 2)), r_b = #replaced_b: the t_b
    replaced notes with the highest weighted loss get target 1, the t_b with the lowest get target 0.
    (The floor(r_b / 2) bound only matters when few of the k_b selected notes were replaced; it keeps the
    two sets disjoint.)

    With `cfg.reference_sign_flip`, odd examples (b = 1, 3, …, by position in the batch) reproduce the
    reference bug: target 0 goes to the t_b highest-loss replaced notes and target 1 to t_b non-replaced
    positions (the first ones by position, standing in for the reference's arbitrary choice).

    Args:
      weighted_ce: float [B, L], Σ_f w_f CE_f per note.
      replaced: bool [B, L] notes that became MASK or random; k: int [B] selected count.
    Returns:
      (target float32 [B, L] in {0, 1}, positive bool [B, L], negative bool [B, L]).
    """
    s = jax.lax.stop_gradient(weighted_ce)
    r = replaced.sum(-1)
    frac_t = jnp.floor(cfg.masker_target_fraction * k.astype(jnp.float32) + 1e-4).astype(jnp.int32)
    t = jnp.minimum(frac_t, r // 2)[:, None]
    rank = masking.rank_descending(s, replaced)  # rank < r on replaced notes
    top = replaced & (rank < t)
    bottom = replaced & (rank >= r[:, None] - t)
    if cfg.reference_sign_flip:
        odd = (jnp.arange(s.shape[0]) % 2 == 1)[:, None]
        others = ~replaced & (jnp.cumsum(~replaced, axis=-1) <= t)
        positive = jnp.where(odd, others, top)
        negative = jnp.where(odd, top, bottom)
    else:
        positive, negative = top, bottom
    return positive.astype(jnp.float32), positive, negative


def masker_loss(scores: jax.Array, positive: jax.Array, negative: jax.Array) -> jax.Array:
    """Masker MSE: mean over examples of [mean_{positive} (p − 1)² + mean_{negative} p²].

    Examples without targets are left out of the mean; the loss is 0 when no example has targets.
    scores: float [B, L] masker scores p in (0, 1) (gradients flow into them); positive, negative: bool [B, L].
    """
    p = scores.astype(jnp.float32)
    pos, neg = positive.astype(jnp.float32), negative.astype(jnp.float32)
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    per_example = ((p - 1.0) ** 2 * pos).sum(-1) / jnp.maximum(n_pos, 1.0) + (p**2 * neg).sum(-1) / jnp.maximum(
        n_neg, 1.0
    )
    has = ((n_pos + n_neg) > 0).astype(jnp.float32)
    return (per_example * has).sum() / jnp.maximum(has.sum(), 1.0)


def masker_statistics(scores: jax.Array, nonpad: jax.Array) -> dict[str, jax.Array]:
    """Health of the masker over non-pad notes: mean score and mean binary entropy (nats).

    scores: float [B, L] in (0, 1); nonpad: bool [B, L]. Returns scalars {"mean_score", "entropy"}.
    """
    p = jnp.clip(jax.lax.stop_gradient(scores).astype(jnp.float32), 1e-7, 1.0 - 1e-7)
    entropy = -(p * jnp.log(p) + (1.0 - p) * jnp.log1p(-p))
    return {"mean_score": _masked_mean(p, nonpad), "entropy": _masked_mean(entropy, nonpad)}


def field_sums(logits: Sequence[jax.Array], targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Sums for exact per-field accuracy and loss over many batches (evaluation).

    Args:
      logits: 8 × float [B, L, V_f]; targets: int32 [B, L, 8]; mask: bool [B, L] scored notes.
    Returns:
      {"correct": float32 [8], "loss": float32 [8] summed CE, "count": float32 scalar #scored notes}.
      Accuracy = correct / count, loss = loss / count, after summing over batches.
    """
    m = mask.astype(jnp.float32)
    return {
        "correct": (per_field_correct(logits, targets) * m[..., None]).sum((0, 1)),
        "loss": (per_field_cross_entropy(logits, targets) * m[..., None]).sum((0, 1)),
        "count": m.sum(),
    }


def pretraining_loss(
    logits: Sequence[jax.Array],
    clean_tokens: jax.Array,
    masked: masking.MaskedBatch,
    scores: jax.Array | None,
    field_weights: jax.Array,
    cfg: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss = recoverer loss + masker loss (0 when `scores` is None, i.e. the random policy).

    Args:
      logits: 8 × float [B, L, V_f] recoverer outputs on `masked.tokens`.
      clean_tokens: int32 [B, L, 8] targets.
      masked: the policy's MaskedBatch.
      scores: float [B, L] masker scores of the clean input (with gradient), or None.
      field_weights: float32 [8].
    Returns:
      (total loss scalar, metrics: dict of float32 scalars, keys "loss/…", "acc/…", "mask/…", "masker/…").
    """
    nonpad = masking.non_pad(clean_tokens)
    ce = per_field_cross_entropy(logits, clean_tokens)
    rec, per_field = recoverer_loss(ce, masked.selected, nonpad, field_weights, cfg)
    acc = _masked_mean(per_field_correct(logits, clean_tokens).astype(jnp.float32), masked.selected)
    metrics = {"loss/recoverer": rec}
    if scores is not None:
        weighted = ce @ jax.lax.stop_gradient(jnp.asarray(field_weights, jnp.float32))
        _, positive, negative = masker_targets(weighted, masked.replaced, masked.k, cfg)
        msk = masker_loss(scores, positive, negative)
        stats = masker_statistics(scores, nonpad)
        metrics |= {
            "loss/masker": msk,
            "masker/mean_score": stats["mean_score"],
            "masker/entropy": stats["entropy"],
            "masker/targets_per_example": (positive.sum() + negative.sum()) / clean_tokens.shape[0],
        }
    else:
        msk = jnp.zeros((), jnp.float32)
    total = rec + msk
    n_nonpad = jnp.maximum(nonpad.sum(), 1)
    metrics |= {
        "loss/total": total,
        "mask/selected_fraction": masked.selected.sum() / n_nonpad,
        "mask/replaced_fraction": masked.replaced.sum() / n_nonpad,
        "mask/k_mean": masked.k.mean(),
        "acc/mean": acc.mean(),
    }
    for f, name in enumerate(vocab.FIELDS):
        metrics[f"loss/{name}"] = per_field[f]
        metrics[f"acc/{name}"] = acc[f]
    return total, {key: jnp.asarray(v, jnp.float32) for key, v in metrics.items()}
