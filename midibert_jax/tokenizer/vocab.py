"""The Octuple vocabulary of the published Adversarial-MidiBERT / PianoBART models.

Generated in code (never loaded from a pickle) and pinned against a golden copy of the
published dictionary in tests/. Every field has its own id space: the regular values
first, then six specials in the order PAD, MASK, SOS, EOS, CLS, SEP.

A token row is int32 [8] in the column order of `FIELDS`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Column order of a token row (and of the model's per-field embeddings and heads).
FIELDS = ("Bar", "Position", "Instrument", "Pitch", "Duration", "Velocity", "TimeSig", "Tempo")
BAR, POSITION, INSTRUMENT, PITCH, DURATION, VELOCITY, TIMESIG, TEMPO = range(8)
NUM_FIELDS = len(FIELDS)

SPECIALS = ("PAD", "MASK", "SOS", "EOS", "CLS", "SEP")

# Quantisation constants (REFERENCE.md §1.2).
POSITIONS_PER_BEAT = 16  # a "beat" is a quarter note
MAX_BARS = 256  # bars per chunk; longer pieces are cut
MAX_BAR_POSITIONS = 128  # 8 beats: the longest bar after time-signature reduction
NUM_DURATION_OCTAVES = 8  # duration bins double in width every 16 bins
NUM_VELOCITY_BINS = 32
VELOCITY_BIN_WIDTH = 4
MIN_TEMPO, MAX_TEMPO = 16.0, 256.0
TEMPO_BINS_PER_OCTAVE = 12
MAX_TS_DENOMINATOR_LOG2 = 6  # denominators 1..64
MAX_TS_NUMERATOR_FACTOR = 2  # numerators 1..2*denominator
DRUM_PROGRAM = 128  # Instrument value for percussion tracks
DRUM_PITCH_OFFSET = 128  # Pitch value = 128 + drum key


def _time_signatures() -> list[tuple[int, int]]:
    """(numerator, denominator) pairs in id order: denominators 1..64, numerators 1..2*den."""
    return [
        (num, 2**k)
        for k in range(MAX_TS_DENOMINATOR_LOG2 + 1)
        for num in range(1, MAX_TS_NUMERATOR_FACTOR * 2**k + 1)
    ]


TIME_SIGNATURES: tuple[tuple[int, int], ...] = tuple(_time_signatures())
TEMPO_VALUES: tuple[float, ...] = tuple(
    2 ** (e / TEMPO_BINS_PER_OCTAVE) * MIN_TEMPO  # the published floats (48 of 49 to the last bit)
    for e in range(round(TEMPO_BINS_PER_OCTAVE * math.log2(MAX_TEMPO / MIN_TEMPO)) + 1)
)


def _regular_token_names() -> dict[str, list[str]]:
    return {
        "Bar": [f"Bar {i}" for i in range(MAX_BARS)],
        "Position": [f"Position {i}/64" for i in range(MAX_BAR_POSITIONS)],
        "Instrument": [f"Instrument {i}" for i in range(128)] + ["Instrument percussion"],
        "Pitch": [f"Pitch {i}" for i in range(128)] + [f"Pitch percussion {i}" for i in range(128)],
        "Duration": [f"Duration {i}" for i in range(NUM_DURATION_OCTAVES * POSITIONS_PER_BEAT)],
        "Velocity": [
            f"Velocity {VELOCITY_BIN_WIDTH * i + VELOCITY_BIN_WIDTH // 2}" for i in range(NUM_VELOCITY_BINS)
        ],
        "TimeSig": [f"TimeSig {n}/{d}" for n, d in TIME_SIGNATURES],
        "Tempo": [f"Tempo {t!r}" for t in TEMPO_VALUES],
    }


def token_names() -> dict[str, list[str]]:
    """Field -> token strings in id order, exactly as the published dictionary spells them."""
    return {
        field: regular + [f"{field} <{s}>" for s in SPECIALS]
        for field, regular in _regular_token_names().items()
    }


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Sizes and special ids of each field, in column order."""

    num_regular: tuple[int, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(n + len(SPECIALS) for n in self.num_regular)

    def special(self, name: str) -> np.ndarray:
        """int32 [8]: the id of special `name` (PAD, MASK, ...) in every field."""
        offset = SPECIALS.index(name)
        return np.asarray(self.num_regular, np.int32) + offset

    @property
    def pad(self) -> np.ndarray:
        return self.special("PAD")

    @property
    def mask(self) -> np.ndarray:
        return self.special("MASK")

    @property
    def eos(self) -> np.ndarray:
        return self.special("EOS")

    @property
    def total(self) -> int:
        return sum(self.sizes)


_names = _regular_token_names()
VOCAB = Vocab(num_regular=tuple(len(_names[f]) for f in FIELDS))
del _names

VOCAB_SIZES = VOCAB.sizes  # (262, 134, 135, 262, 134, 38, 260, 55)
PAD_ROW = VOCAB.pad  # int32 [8]
MASK_ROW = VOCAB.mask
EOS_ROW = VOCAB.eos
