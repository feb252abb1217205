"""Fine-tuning input transforms: velocity blanking, pitch shift and mask fine-tuning (REFERENCE.md §7).

Pure, traceable functions; they run inside the jitted fine-tuning and evaluation steps. All per-example
randomness comes from `fold_in(key, index[b])` with the example's global index, so what an example
gets never depends on the other examples of its batch, the batch size or the host count (the caller
folds the step into the key in training and uses a fixed key in evaluation).

* `blank_velocity`: the Velocity field of every row becomes PAD (the velocity task's input must not
  contain its answer; the reference forgot, §8.2).
* `pitch_shift`: one transposition per example, s ~ uniform integer in [lo, hi] with
  lo = -min(max_shift, min pitch), hi = min(max_shift, 127 - max pitch) over the example's pitched
  notes, so every pitch stays inside 0..127 (the reference's rule). Pitched notes only: drums
  (Instrument 128, Pitch >= 128) and special rows (PAD, EOS, MASK) are untouched. Labels unchanged.
* `mask_notes`: mask fine-tuning. Per example, k_b = round(ratio * #candidates_b) candidates chosen
  uniformly; the first round(mask_prob * k_b) of them (in the same random order) become the MASK row,
  the rest stay as they are. All k_b are "selected": note tasks skip them in loss and accuracy.
  Candidates are the non-pad notes; the reference draws from all L positions (pads included).
* `loss_weights`: which notes a note task scores: labelled (label >= 0), not selected. With the
  reference's bug (§8.4) the selection of the *last* example is applied to every example.

Shapes: B examples, L positions, 8 fields; tokens int32 [B, L, 8]; index int [B].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from midibert_jax.tokenizer import vocab
from midibert_jax.train import masking

MAX_PITCH = 127
_PAD = vocab.PAD_ROW


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Static (hashable) settings; build with `from_config(config.augment)`.

    Attributes:
      mask_ratio: fraction of candidates selected for mask fine-tuning (0 disables it).
      mask_prob: fraction (rounded count) of the selected notes that become the MASK row.
      pitch_shift: largest transposition in semitones (0 disables it).
      blank_velocity: set the Velocity field to PAD at the model input (velocity task).
      eval_mask, eval_pitch_shift: also apply masking / pitch shift in evaluation (the reference does,
        §8.3), with the fixed key of `eval_seed`, so evaluation stays deterministic.
      eval_seed: seed of the evaluation key.
      reference_pads_as_candidates: mask candidates are all L positions, pads included (the reference).
      reference_last_example_only: the reference's loss-mask bug: only the last example's selection
        is excluded from the loss, for every example (§8.4).
    """

    mask_ratio: float = 0.15
    mask_prob: float = 1.0
    pitch_shift: int = 11
    blank_velocity: bool = False
    eval_mask: bool = False
    eval_pitch_shift: bool = False
    eval_seed: int = 4321
    reference_pads_as_candidates: bool = False
    reference_last_example_only: bool = False

    def __post_init__(self):
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"augment.mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ValueError(f"augment.mask_prob must be in [0, 1], got {self.mask_prob}")
        if not 0 <= self.pitch_shift <= MAX_PITCH:
            raise ValueError(f"augment.pitch_shift must be in [0, 127], got {self.pitch_shift}")

    @classmethod
    def from_config(cls, cfg: Any) -> "AugmentConfig":
        """From a `config.augment` ConfigDict (or any mapping with the attribute names above)."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg})


def example_uniforms(key: jax.Array, index: jax.Array, n: int) -> jax.Array:
    """float32 [B, n] U[0, 1) draws from fold_in(key, index[b]) (depend on the example only)."""
    return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (n,)))(index.astype(jnp.int32))


def blank_velocity(tokens: jax.Array) -> jax.Array:
    """tokens [B, L, 8] (jax or numpy) with the Velocity field of every row set to its PAD id."""
    tokens = jnp.asarray(tokens)
    return tokens.at[..., vocab.VELOCITY].set(jnp.asarray(_PAD[vocab.VELOCITY], tokens.dtype))


def pitched(tokens: jax.Array) -> jax.Array:
    """bool [B, L]: rows that are pitched notes (Pitch 0..127, not a drum), not PAD/EOS/MASK rows."""
    pitch = tokens[..., vocab.PITCH]
    return (pitch >= 0) & (pitch <= MAX_PITCH) & (tokens[..., vocab.INSTRUMENT] != vocab.DRUM_PROGRAM)


def shift_range(tokens: jax.Array, max_shift: int) -> tuple[jax.Array, jax.Array]:
    """(lo, hi) int32 [B]: the allowed transpositions of each example; (0, 0) without pitched notes."""
    is_pitched = pitched(tokens)
    pitch = tokens[..., vocab.PITCH]
    low = jnp.min(jnp.where(is_pitched, pitch, MAX_PITCH), axis=-1)
    high = jnp.max(jnp.where(is_pitched, pitch, 0), axis=-1)
    any_pitched = is_pitched.any(-1)
    lo = jnp.where(any_pitched, -jnp.minimum(max_shift, low), 0)
    hi = jnp.where(any_pitched, jnp.minimum(max_shift, MAX_PITCH - high), 0)
    return lo.astype(jnp.int32), hi.astype(jnp.int32)


def pitch_shift(key: jax.Array, tokens: jax.Array, index: jax.Array, max_shift: int) -> tuple[jax.Array, jax.Array]:
    """One random transposition per example, inside 0..127.

    Args:
      key: a key (folded with the step in training, fixed in evaluation).
      tokens: int32 [B, L, 8]; index: int [B] global example indices.
      max_shift: largest |shift| in semitones.
    Returns:
      (shifted tokens int32 [B, L, 8], shifts int32 [B]).
    """
    lo, hi = shift_range(tokens, max_shift)
    u = example_uniforms(key, index, 1)[:, 0]
    span = hi - lo + 1
    shift = lo + jnp.minimum(jnp.floor(u * span).astype(jnp.int32), span - 1)
    moved = jnp.where(pitched(tokens), tokens[..., vocab.PITCH] + shift[:, None], tokens[..., vocab.PITCH])
    return tokens.at[..., vocab.PITCH].set(moved.astype(tokens.dtype)), shift


def _round_half_up(x: jax.Array) -> jax.Array:
    return jnp.floor(x + 0.5).astype(jnp.int32)


def mask_notes(
    key: jax.Array, tokens: jax.Array, index: jax.Array, cfg: AugmentConfig
) -> tuple[jax.Array, jax.Array]:
    """Mask fine-tuning, per example.

    Args:
      key: a key; tokens: int32 [B, L, 8]; index: int [B]; cfg: ratio, mask_prob, candidates.
    Returns:
      (tokens with the masked rows set to MASK, selected bool [B, L]).
    """
    B, L = tokens.shape[:2]
    candidates = jnp.ones((B, L), bool) if cfg.reference_pads_as_candidates else masking.non_pad(tokens)
    noise = example_uniforms(key, index, L)
    rank = masking.rank_descending(noise, candidates)
    k = _round_half_up(cfg.mask_ratio * candidates.sum(-1))
    n_mask = _round_half_up(cfg.mask_prob * k)
    selected = candidates & (rank < k[:, None])
    to_mask = candidates & (rank < n_mask[:, None])
    out = jnp.where(to_mask[..., None], jnp.asarray(vocab.MASK_ROW, tokens.dtype), tokens)
    return out, selected


def loss_weights(labels: jax.Array, selected: jax.Array | None, cfg: AugmentConfig) -> jax.Array:
    """bool [B, L]: notes a note task scores (labels int [B, L], -1 = ignore; selected bool [B, L] or None)."""
    weights = labels >= 0
    if selected is None:
        return weights
    if cfg.reference_last_example_only:
        return weights & ~selected[-1][None, :]
    return weights & ~selected


@dataclasses.dataclass(frozen=True)
class Transformed:
    """The model input and what mask fine-tuning selected (None when it is off)."""

    tokens: jax.Array
    selected: jax.Array | None


def transform(key: jax.Array, tokens: jax.Array, index: jax.Array, cfg: AugmentConfig, *, train: bool) -> Transformed:
    """Velocity blanking, then pitch shift, then masking, as enabled for training or evaluation.

    Use the *clean* tokens' non-pad mask as the attention mask (masked rows stay attended).
    """
    if cfg.blank_velocity:
        tokens = blank_velocity(tokens)
    k_shift, k_mask = jax.random.split(key)
    if cfg.pitch_shift and (train or cfg.eval_pitch_shift):
        tokens, _ = pitch_shift(k_shift, tokens, index, cfg.pitch_shift)
    selected = None
    if cfg.mask_ratio and (train or cfg.eval_mask):
        tokens, selected = mask_notes(k_mask, tokens, index, cfg)
    return Transformed(tokens, selected)
