"""Vectorised value <-> token-id maps for the Octuple fields (REFERENCE.md §1.2).

All functions take and return numpy arrays so that a whole piece is quantised without a
per-note Python loop. Rounding is numpy's round-half-to-even, which is what the reference's
Python `round` does.
"""

from __future__ import annotations

import numpy as np

from midibert_jax.tokenizer import vocab
from midibert_jax.tokenizer.errors import UnsupportedTimeSignatureError

# Duration bins: token t = 16*g + j covers [16*(2^g - 1) + j*2^g, ... + 2^g) positions.
_OCTAVE = np.arange(vocab.NUM_DURATION_OCTAVES * vocab.POSITIONS_PER_BEAT) // vocab.POSITIONS_PER_BEAT
_STEP = np.arange(vocab.NUM_DURATION_OCTAVES * vocab.POSITIONS_PER_BEAT) % vocab.POSITIONS_PER_BEAT
DURATION_LOWER_EDGES = (vocab.POSITIONS_PER_BEAT * (2**_OCTAVE - 1) + _STEP * 2**_OCTAVE).astype(np.int64)
del _OCTAVE, _STEP

_TS_INDEX = {ts: i for i, ts in enumerate(vocab.TIME_SIGNATURES)}


def duration_to_token(positions: np.ndarray) -> np.ndarray:
    """Durations in 1/16-beat positions (>= 0) -> duration ids 0..127 (long ones clip to 127)."""
    positions = np.maximum(np.asarray(positions, np.int64), 0)
    return (np.searchsorted(DURATION_LOWER_EDGES, positions, side="right") - 1).astype(np.int32)


def token_to_duration(tokens: np.ndarray) -> np.ndarray:
    """Duration ids -> the lower edge of their bin, in positions."""
    return DURATION_LOWER_EDGES[np.asarray(tokens)]


def velocity_to_token(velocity: np.ndarray) -> np.ndarray:
    """MIDI velocity 0..127 -> 0..31."""
    v = np.clip(np.asarray(velocity, np.int64), 0, 127)
    return (v // vocab.VELOCITY_BIN_WIDTH).astype(np.int32)


def token_to_velocity(tokens: np.ndarray) -> np.ndarray:
    """Velocity ids -> the bin centre (4e + 2)."""
    return np.asarray(tokens, np.int64) * vocab.VELOCITY_BIN_WIDTH + vocab.VELOCITY_BIN_WIDTH // 2


def tempo_to_token(bpm: np.ndarray) -> np.ndarray:
    """BPM -> 0..48: round(12 * log2(bpm / 16)) after clamping to [16, 256]."""
    bpm = np.clip(np.asarray(bpm, np.float64), vocab.MIN_TEMPO, vocab.MAX_TEMPO)
    return np.rint(np.log2(bpm / vocab.MIN_TEMPO) * vocab.TEMPO_BINS_PER_OCTAVE).astype(np.int32)


def token_to_tempo(tokens: np.ndarray) -> np.ndarray:
    """Tempo ids -> BPM (16 * 2^(e/12))."""
    return 2 ** (np.asarray(tokens, np.float64) / vocab.TEMPO_BINS_PER_OCTAVE) * vocab.MIN_TEMPO


def reduce_time_signature(numerator: int, denominator: int) -> tuple[int, int]:
    """The reference's reduction: halve both while den > 64 and both even; then divide the
    numerator by its smallest factor while num > 2 * den. Raises for what cannot be expressed."""
    num, den = int(numerator), int(denominator)
    if num <= 0 or den <= 0 or den & (den - 1):
        raise UnsupportedTimeSignatureError(f"time signature {numerator}/{denominator} is not n/2^k")
    max_den = 2**vocab.MAX_TS_DENOMINATOR_LOG2
    while den > max_den and den % 2 == 0 and num % 2 == 0:
        num, den = num // 2, den // 2
    if den > max_den:
        raise UnsupportedTimeSignatureError(
            f"time signature {numerator}/{denominator}: denominator above {max_den} after reduction"
        )
    while num > vocab.MAX_TS_NUMERATOR_FACTOR * den:
        num //= next(f for f in range(2, num + 1) if num % f == 0)
    return num, den


def time_signature_to_token(numerator: int, denominator: int) -> int:
    return _TS_INDEX[reduce_time_signature(numerator, denominator)]


def bar_length(ts_token: np.ndarray) -> np.ndarray:
    """Time-signature ids -> bar length in positions (num * 64 / den)."""
    table = np.array(
        [n * 4 * vocab.POSITIONS_PER_BEAT // d for n, d in vocab.TIME_SIGNATURES], np.int64
    )
    return table[np.asarray(ts_token)]
