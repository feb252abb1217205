"""Typed tokenizer errors: every bad input names the file (when there is one) and the reason.

Dataset builders catch `TokenizerError` and record `reason` in their manifest; anything
else escaping the tokenizer is a bug.
"""

from __future__ import annotations

import os

from midibert_jax.errors import UserError


class TokenizerError(UserError):
    """Base class. `path` is the offending file (or None for in-memory input)."""

    kind = "invalid"

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {reason}" if self.path else reason)

    def with_path(self, path: str | os.PathLike) -> "TokenizerError":
        """The same error, attributed to `path` (used when an in-memory step fails for a file)."""
        return type(self)(self.reason, path)


class MidiReadError(TokenizerError):
    """The bytes are not a readable Standard MIDI File (not MIDI, truncated, corrupt chunks)."""

    kind = "unreadable"


class MidiTooLargeError(TokenizerError):
    """The file exceeds a configured size limit (bytes, ticks or notes)."""

    kind = "too_large"


class EmptyMidiError(TokenizerError):
    """The file parses but holds no notes."""

    kind = "no_notes"


class AbsurdTempoError(TokenizerError):
    """A tempo event of zero (or non-finite) microseconds per beat."""

    kind = "absurd_tempo"


class UnsupportedTimeSignatureError(TokenizerError):
    """A time signature the Octuple vocabulary cannot express even after reduction."""

    kind = "time_signature"


class InvalidTokensError(TokenizerError):
    """A token array that is not a valid Octuple sequence (decode input)."""

    kind = "invalid_tokens"
