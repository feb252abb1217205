"""Octuple tokenization of MIDI (pretty_midi in, pretty_midi out)."""

from midibert_jax.tokenizer.errors import (
    AbsurdTempoError,
    EmptyMidiError,
    InvalidTokensError,
    MidiReadError,
    MidiTooLargeError,
    TokenizerError,
    UnsupportedTimeSignatureError,
)
from midibert_jax.tokenizer.midi_io import DEFAULT_LIMITS, MidiLimits, load_midi
from midibert_jax.tokenizer.octuple import chunk_by_bars, decode, encode, encode_absolute, encode_file

__all__ = [
    "AbsurdTempoError",
    "DEFAULT_LIMITS",
    "EmptyMidiError",
    "InvalidTokensError",
    "MidiLimits",
    "MidiReadError",
    "MidiTooLargeError",
    "TokenizerError",
    "UnsupportedTimeSignatureError",
    "chunk_by_bars",
    "decode",
    "encode",
    "encode_absolute",
    "encode_file",
    "load_midi",
]
