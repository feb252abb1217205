"""The mask book: one "frozen" bit per (training window, position), bit-packed.

A frozen note is never selected by the adversarial policy. The book is uint8 [num_windows, L / 8];
position p of a window is bit (p % 8) of byte p // 8 (little-endian bit order), 1 = frozen. A new book
is all zeros (nothing frozen). It is saved with the checkpoint.

`pack`, `unpack`, `gather`, `scatter` and `count_frozen` work on numpy arrays (a host-side book) and on
jax arrays, traced or not (a replicated or sharded book inside jit). `update_frozen` and `refresh` draw
random numbers and are jax-only; their randomness comes from `fold_in(rng, global_index[b])`, so the
result does not depend on batch composition or host count.

Update rule (REFERENCE.md §6.9, pads excluded by default): every `every` epochs (or steps), for each
training window, with the masker in eval mode:
  1. freeze the top floor(U(freeze_min, freeze_max) · #candidates) candidates by masker score, where
     candidates = unfrozen non-pad notes;
  2. unfreeze each frozen note with probability u ~ U(0, unfreeze_max), u drawn once per window.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from midibert_jax.train import masking

UNITS = ("epoch", "step")
_BIT_SHIFTS = np.arange(8, dtype=np.uint8)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


@dataclasses.dataclass(frozen=True)
class MaskBookConfig:
    """Static mask-book settings; build it with `from_config(config.mask_book)`.

    Attributes:
      every: update the book every `every` units (0 disables the book updates).
      unit: "epoch" or "step".
      freeze_min, freeze_max: per window, freeze floor(U(freeze_min, freeze_max) · #candidates) notes.
      unfreeze_max: per window, unfreeze each frozen note with probability u ~ U(0, unfreeze_max).
      reference_pads_as_candidates: reference quirk §8.6: pads can be frozen and count as candidates.
    """

    every: int
    unit: str
    freeze_min: float
    freeze_max: float
    unfreeze_max: float
    reference_pads_as_candidates: bool

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"mask_book.unit must be one of {UNITS}, got {self.unit!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> "MaskBookConfig":
        """From a `config.mask_book` ConfigDict (or any mapping with the attribute names above)."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp


def create(num_windows: int, length: int) -> np.ndarray:
    """A host-side book with nothing frozen: uint8 zeros [num_windows, length / 8]."""
    if length % 8:
        raise ValueError(f"the window length must be a multiple of 8, got {length}")
    return np.zeros((num_windows, length // 8), np.uint8)


def pack(bits):
    """uint8 [..., L / 8] from bool [..., L] (L a multiple of 8); numpy in, numpy out; jax in, jax out."""
    xp = _xp(bits)
    shaped = bits.reshape(bits.shape[:-1] + (bits.shape[-1] // 8, 8)).astype(xp.uint8)
    return (shaped << xp.asarray(_BIT_SHIFTS)).sum(-1, dtype=xp.uint8)


def unpack(packed):
    """bool [..., 8 · n] from uint8 [..., n]; the inverse of `pack`."""
    xp = _xp(packed)
    bits = (packed[..., None] >> xp.asarray(_BIT_SHIFTS)) & xp.uint8(1)
    return bits.reshape(packed.shape[:-1] + (packed.shape[-1] * 8,)).astype(bool)


def gather(book, index):
    """bool [B, L]: the frozen bits of windows `index` int [B] from a book uint8 [N, L / 8]."""
    return unpack(book[index])


def scatter(book, index, frozen, valid=None):
    """Writes the frozen bits bool [B, L] of windows `index` int [B] into the book uint8 [N, L / 8].

    valid: optional bool [B]; rows where it is False (e.g. padding examples of a last batch) are not written.
    A jax book is updated functionally (inside jit the caller should donate it); a numpy book is updated
    in place. Returns the updated book. Valid indices must not repeat within a call.
    """
    rows = pack(frozen)
    if isinstance(book, np.ndarray):
        keep = slice(None) if valid is None else np.asarray(valid, bool)
        book[np.asarray(index)[keep]] = np.asarray(rows)[keep]
        return book
    if valid is not None:
        index = jnp.where(valid, index, book.shape[0])  # out of range: dropped
    return book.at[index].set(rows.astype(jnp.uint8), mode="drop")


def update_frozen(
    rng: jax.Array,
    index: jax.Array,
    frozen: jax.Array,
    scores: jax.Array,
    nonpad: jax.Array,
    cfg: MaskBookConfig,
) -> jax.Array:
    """One freeze/unfreeze round for a batch of windows.

    Args:
      rng: key for this book update (e.g. fold_in(base, update_number)).
      index: int [B] global window indices; frozen: bool [B, L] current bits.
      scores: float [B, L] masker scores (eval mode); nonpad: bool [B, L].
    Returns:
      bool [B, L], the new frozen bits. Pads are never frozen unless `reference_pads_as_candidates`.
    """
    per_example, per_note = masking.example_uniforms(rng, index, frozen.shape[-1])
    allowed = jnp.ones_like(nonpad) if cfg.reference_pads_as_candidates else nonpad
    candidates = allowed & ~frozen
    ratio = cfg.freeze_min + (cfg.freeze_max - cfg.freeze_min) * per_example[:, 0]
    n = jnp.floor(ratio * candidates.sum(-1)).astype(jnp.int32)
    frozen = (frozen & allowed) | masking.select_top_k(scores, candidates, n)
    unfreeze_prob = cfg.unfreeze_max * per_example[:, 1:2]
    return frozen & ~(per_note[..., 0] < unfreeze_prob)


def refresh(
    book,
    rng: jax.Array,
    index: jax.Array,
    scores: jax.Array,
    nonpad: jax.Array,
    cfg: MaskBookConfig,
    valid: jax.Array | None = None,
):
    """gather → `update_frozen` → scatter for one batch of windows; returns the new book.

    book: jax uint8 [N, L / 8] (use gather/update_frozen/scatter directly for a numpy book);
    index: int [B]; scores: float [B, L]; nonpad: bool [B, L]; valid: optional bool [B] rows to write.
    """
    frozen = update_frozen(rng, index, gather(book, index), scores, nonpad, cfg)
    return scatter(book, index, frozen, valid)


def count_frozen(book):
    """Number of frozen bits in a book uint8 [N, L / 8] (a Python int for numpy, an int32 scalar for jax)."""
    if isinstance(book, np.ndarray):
        return int(_POPCOUNT[book].sum(dtype=np.int64))
    return jax.lax.population_count(book).astype(jnp.int32).sum()


def frozen_fraction(book, num_notes: int):
    """Fraction of the training set's `num_notes` non-pad notes that are frozen (float).

    With `reference_pads_as_candidates` pads can be frozen too: pass num_notes = num_windows · L then.
    """
    return count_frozen(book) / max(int(num_notes), 1)


def batch_frozen_fraction(frozen: jax.Array, nonpad: jax.Array) -> jax.Array:
    """float32 scalar: frozen non-pad notes / non-pad notes in a batch (bool [B, L] each)."""
    return (frozen & nonpad).sum() / jnp.maximum(nonpad.sum(), 1)


def update_due(step: int, steps_per_epoch: int, cfg: MaskBookConfig) -> int | None:
    """The update number if the book is refreshed after `step` completed steps (1-based count), else None.

    `cfg.unit` 'step': after every `cfg.every` steps; 'epoch': after every `cfg.every` epochs of
    `steps_per_epoch` steps. Update n is the n-th refresh (it seeds that refresh's random draws).
    """
    if not cfg.every or step <= 0:
        return None
    if cfg.unit == "step":
        count = step
    elif step % steps_per_epoch:
        return None
    else:
        count = step // steps_per_epoch
    return count // cfg.every if count % cfg.every == 0 else None
