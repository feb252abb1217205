"""Masking policies for pre-training: which notes the recoverer must restore, and how they are corrupted.

Every function here is pure and traceable: it runs inside the jitted, sharded train step, with no
Python loop over examples or positions. All per-example randomness comes from
`fold_in(rng, global_index[b])`, so the notes chosen for a window never depend on which other windows
share its batch, on the batch size or on the host count (the caller folds the step into `rng`).

Policies (REFERENCE.md §6, with the reference's quirks behind `reference_*` switches):

* `adversarial`: per example b, k_b = min(floor(u_b · #eligible_b), floor(cap · L)) with
  u_b ~ U(ratio_min, ratio_max); the k_b eligible notes with the highest masker scores are selected.
  Eligible = non-pad and not frozen in the mask book.
* `random` (the MidiBERT baseline): k_b = round(random_ratio · #non-pad_b) notes chosen uniformly; no masker.
* evaluation (`eval_mask`): the `random` policy with a fixed key, the same notes on every call.

Selected notes are corrupted BERT-style, each independently: with probability `mask_prob` the whole
octuple becomes `MASK_ROW`, with probability `random_prob` a random row (each field uniform over its
regular values), otherwise it stays. Every selected note is scored by the recoverer loss.

Shapes: B examples, L positions, 8 fields. Tokens are int32 [B, L, 8]; pads have Bar == PAD.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from midibert_jax.tokenizer import vocab

POLICIES = ("adversarial", "random")


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """Static (hashable) masking settings; build it with `from_config(config.masking)`.

    Attributes:
      policy: "adversarial" (masker top-k) or "random" (uniform baseline).
      ratio_min, ratio_max: u_b ~ U(ratio_min, ratio_max), the adversarial fraction of eligible notes.
      cap: at most floor(cap · L) notes per example (adversarial).
      random_ratio: fraction of non-pad notes selected by the random policy and by evaluation.
      mask_prob: probability that a selected note becomes the MASK row.
      random_prob: probability that a selected note becomes a random row.
      eval_seed: seed of the fixed evaluation masking.
      reference_pads_as_candidates: reference quirk (§8.6): pads are candidates and count in #eligible.
      reference_random_any_token: reference quirk (§8.18): random rows are drawn from the whole
        vocabulary of each field, specials included.
    """

    policy: str
    ratio_min: float
    ratio_max: float
    cap: float
    random_ratio: float
    mask_prob: float
    random_prob: float
    eval_seed: int
    reference_pads_as_candidates: bool
    reference_random_any_token: bool

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"masking.policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0.0 <= self.ratio_min <= self.ratio_max <= 1.0:
            raise ValueError(f"need 0 <= ratio_min <= ratio_max <= 1, got {self.ratio_min}, {self.ratio_max}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1:
            raise ValueError(f"bad corruption split mask_prob={self.mask_prob} random_prob={self.random_prob}")

    @classmethod
    def from_config(cls, cfg: Any) -> "MaskingConfig":
        """From a `config.masking` ConfigDict (or any mapping with the attribute names above)."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})


@struct.dataclass
class MaskedBatch:
    """The result of a masking policy.

    Attributes:
      tokens: int32 [B, L, 8], the corrupted input of the recoverer.
      selected: bool [B, L], notes the recoverer is scored on (MASK, random and unchanged).
      replaced: bool [B, L], the selected notes that became MASK or a random row.
      k: int32 [B], the number of selected notes per example (== selected.sum(-1)).
      eligible: bool [B, L], the candidates the policy chose from.
    """

    tokens: jax.Array
    selected: jax.Array
    replaced: jax.Array
    k: jax.Array
    eligible: jax.Array


def non_pad(tokens: jax.Array) -> jax.Array:
    """bool [B, L]: True where the note is not padding (Bar != PAD), from int32 tokens [B, L, 8]."""
    return tokens[..., vocab.BAR] != int(vocab.PAD_ROW[vocab.BAR])


def floor_fraction(fraction: float, n: int) -> int:
    """floor(fraction · n) for static Python numbers, robust to products that round just below an integer."""
    return int(math.floor(fraction * n + 1e-6))


# Columns of the per-note uniforms from `example_uniforms`.
NOISE, CHOICE, RANDOM_VALUES = 0, 1, slice(2, 2 + vocab.NUM_FIELDS)
NUM_UNIFORMS = 2 + vocab.NUM_FIELDS


def example_uniforms(rng: jax.Array, index: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """U[0, 1) draws that depend only on (rng, index[b]), not on the batch composition or host count.

    Args:
      rng: a key; index: int [B] global example (window) indices; length: L.
    Returns:
      (per_example float32 [B, NUM_UNIFORMS], per_note float32 [B, L, NUM_UNIFORMS]). Per note, column
      NOISE orders notes at random, CHOICE picks MASK / random / keep, RANDOM_VALUES give the random row.
    """
    shape = (length + 1, NUM_UNIFORMS)
    # A flat draw, reshaped: multi-dimensional threefry draws compile ~10x slower on CPU.
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(rng, i), (shape[0] * shape[1],)))(index)
    u = u.reshape((-1,) + shape)
    return u[:, length], u[:, :length]


def rank_descending(values: jax.Array, valid: jax.Array) -> jax.Array:
    """int32 [B, L]: rank of each position among the `valid` ones by descending value.

    Rank 0 is the largest. Ties go to the lower position. Invalid positions rank after every valid one.
    values: float [B, L]; valid: bool [B, L].
    """
    key = jnp.where(valid, -values.astype(jnp.float32), jnp.inf)
    order = jnp.argsort(key, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def select_top_k(scores: jax.Array, eligible: jax.Array, k: jax.Array) -> jax.Array:
    """bool [B, L]: exactly min(k_b, #eligible_b) eligible positions with the highest scores.

    scores: float [B, L]; eligible: bool [B, L]; k: int [B].
    """
    return eligible & (rank_descending(scores, eligible) < k[:, None])


def corrupt(uniforms: jax.Array, tokens: jax.Array, selected: jax.Array, cfg: MaskingConfig):
    """80/10/10 corruption of the selected notes, each note independently.

    Args:
      uniforms: float32 [B, L, NUM_UNIFORMS], the per-note draws of `example_uniforms`.
      tokens: int32 [B, L, 8] clean tokens.
      selected: bool [B, L].
    Returns:
      (corrupted int32 [B, L, 8], replaced bool [B, L]) where replaced = became MASK or random.
    """
    high = vocab.VOCAB_SIZES if cfg.reference_random_any_token else vocab.VOCAB.num_regular
    high = jnp.asarray(high, jnp.int32)
    choice = uniforms[..., CHOICE]
    to_mask = selected & (choice < cfg.mask_prob)
    to_random = selected & (choice >= cfg.mask_prob) & (choice < cfg.mask_prob + cfg.random_prob)
    random_rows = jnp.minimum(jnp.floor(uniforms[..., RANDOM_VALUES] * high).astype(jnp.int32), high - 1)
    out = jnp.where(to_mask[..., None], jnp.asarray(vocab.MASK_ROW, tokens.dtype), tokens)
    out = jnp.where(to_random[..., None], random_rows.astype(tokens.dtype), out)
    return out, to_mask | to_random


def _candidates(tokens: jax.Array, frozen: jax.Array | None, cfg: MaskingConfig) -> jax.Array:
    """bool [B, L]: not frozen and (unless the reference quirk is on) not a pad."""
    eligible = jnp.ones(tokens.shape[:2], bool) if cfg.reference_pads_as_candidates else non_pad(tokens)
    if frozen is not None:
        eligible = eligible & ~frozen
    return eligible


def adversarial_mask(
    rng: jax.Array,
    tokens: jax.Array,
    index: jax.Array,
    scores: jax.Array,
    frozen: jax.Array | None,
    cfg: MaskingConfig,
) -> MaskedBatch:
    """Masker-driven top-k selection and corruption.

    Args:
      rng: key, already folded with the step.
      tokens: int32 [B, L, 8] clean tokens.
      index: int [B] global example (window) indices.
      scores: float [B, L] masker scores of the clean input; the selection carries no gradient.
      frozen: bool [B, L] from the mask book (True = frozen), or None for no book.
    Returns:
      MaskedBatch with k_b = min(floor(u_b · #eligible_b), floor(cap · L)), u_b ~ U(ratio_min, ratio_max).
    """
    L = tokens.shape[1]
    per_example, per_note = example_uniforms(rng, index, L)
    eligible = _candidates(tokens, frozen, cfg)
    ratio = cfg.ratio_min + (cfg.ratio_max - cfg.ratio_min) * per_example[:, 0]
    k = jnp.minimum(jnp.floor(ratio * eligible.sum(-1)).astype(jnp.int32), floor_fraction(cfg.cap, L))
    selected = select_top_k(jax.lax.stop_gradient(scores), eligible, k)
    corrupted, replaced = corrupt(per_note, tokens, selected, cfg)
    return MaskedBatch(corrupted, selected, replaced, selected.sum(-1).astype(jnp.int32), eligible)


def random_mask(
    rng: jax.Array, tokens: jax.Array, index: jax.Array, cfg: MaskingConfig, frozen: jax.Array | None = None
) -> MaskedBatch:
    """The random baseline: round(random_ratio · #eligible_b) eligible notes, uniformly, then 80/10/10.

    Args:
      rng: key (folded with the step in training, a fixed key in evaluation).
      tokens: int32 [B, L, 8]; index: int [B] global example indices; frozen: optional bool [B, L].
    """
    _, per_note = example_uniforms(rng, index, tokens.shape[1])
    eligible = _candidates(tokens, frozen, cfg)
    k = jnp.floor(cfg.random_ratio * eligible.sum(-1) + 0.5).astype(jnp.int32)
    selected = select_top_k(per_note[..., NOISE], eligible, k)
    corrupted, replaced = corrupt(per_note, tokens, selected, cfg)
    return MaskedBatch(corrupted, selected, replaced, selected.sum(-1).astype(jnp.int32), eligible)


def eval_mask(tokens: jax.Array, index: jax.Array, cfg: MaskingConfig) -> MaskedBatch:
    """Deterministic evaluation masking: `random_mask` with the key of `cfg.eval_seed`.

    The same window (global index) gets the same notes and corruption on every call, whatever the
    batch it is in. tokens: int32 [B, L, 8]; index: int [B].
    """
    return random_mask(jax.random.key(cfg.eval_seed), tokens, index, cfg)


def mask_batch(
    rng: jax.Array,
    tokens: jax.Array,
    index: jax.Array,
    cfg: MaskingConfig,
    *,
    scores: jax.Array | None = None,
    frozen: jax.Array | None = None,
) -> MaskedBatch:
    """The training policy `cfg.policy` (static): adversarial needs `scores` [B, L]; random ignores them."""
    if cfg.policy == "adversarial":
        if scores is None:
            raise ValueError("the adversarial policy needs masker scores")
        return adversarial_mask(rng, tokens, index, scores, frozen, cfg)
    return random_mask(rng, tokens, index, cfg)
