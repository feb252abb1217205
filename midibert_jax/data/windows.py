"""Cutting tokenized pieces into fixed-length windows of Octuple rows.

Two packings:

* ``'piece'`` (default): windows inside one piece, never mixing pieces. A new window starts
  when the current one holds `max_len` rows or when the next row's bar would not fit the
  256-bar vocabulary (bar >= window_first_bar + 256). Bars are re-based to the window's first
  bar and the last window is padded with PAD rows. No EOS rows.
* ``'reference'``: the PianoBART / Adversarial-MidiBERT packing (REFERENCE.md §1.3): each piece
  is cut into chunks of 256 bars (`tokenizer.chunk_by_bars`), each chunk gets one EOS row, all
  pieces of a split are concatenated in piece order, and the stream is chopped into windows of
  `max_len` rows, the last padded with PAD. Windows cross piece boundaries. The reference's extra
  all-PAD window (when the stream length is an exact multiple of `max_len`) is added only with
  `extra_pad_window=True`.

For distributed builds the reference packing is also expressed as fragments
(`reference_fragments` + `assemble_window`): a piece whose stream starts at global row
`offset` contributes slices to the windows it overlaps, so windows can be assembled by key
without materializing the whole stream on one worker.

All windows are int32 [max_len, 8].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from midibert_jax.tokenizer import vocab

PACKINGS = ("piece", "reference")


def _check_rows(rows_abs: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows_abs)
    if rows.ndim != 2 or rows.shape[1] != vocab.NUM_FIELDS:
        raise ValueError(f"expected rows [N, {vocab.NUM_FIELDS}], got shape {rows.shape}")
    if not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"expected integer rows, got {rows.dtype}")
    bars = rows[:, vocab.BAR]
    if len(bars) and (bars.min() < 0 or np.any(np.diff(bars) < 0)):
        raise ValueError("bar numbers must be non-negative and non-decreasing (rows sorted)")
    return rows


def piece_window_bounds(bars: np.ndarray, max_len: int, max_bars: int = vocab.MAX_BARS) -> list[tuple[int, int]]:
    """[start, end) row ranges of the windows of one piece, given its sorted absolute bars."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    bounds = []
    start, n = 0, len(bars)
    while start < n:
        bar_limit = int(np.searchsorted(bars, bars[start] + max_bars, side="left"))
        end = min(start + max_len, bar_limit)
        bounds.append((start, end))
        start = end
    return bounds


def piece_window_bars(rows_abs: np.ndarray, max_len: int) -> np.ndarray:
    """int64 [W]: the absolute bar of each `piece_windows` window's first row (what its re-basing took
    away), so that a piece's note stream can be put back together from its windows."""
    rows = _check_rows(rows_abs)
    return np.asarray([rows[start, vocab.BAR] for start, _ in piece_window_bounds(rows[:, vocab.BAR], max_len)],
                      np.int64)


def view_bounds(bars: np.ndarray, max_len: int, offset: int) -> list[tuple[int, int]]:
    """[start, end) row ranges of a piece cut as `piece_window_bounds` does, but with the first window
    ending at row `offset` (0: exactly `piece_window_bounds`). Evaluation views: each note lands at
    another place of its window in each view."""
    bars = np.asarray(bars)
    if not 0 <= offset < max(max_len, 1):
        raise ValueError(f"offset must be in [0, max_len), got {offset} with max_len {max_len}")
    head = min(offset, len(bars))
    bounds = piece_window_bounds(bars[:head], max_len) if head else []
    return bounds + [(start + head, end + head) for start, end in piece_window_bounds(bars[head:], max_len)]


def pad_window(rows: np.ndarray, max_len: int) -> np.ndarray:
    """int32 [max_len, 8]: `rows` followed by PAD rows."""
    if len(rows) > max_len:
        raise ValueError(f"{len(rows)} rows do not fit a window of {max_len}")
    out = np.broadcast_to(vocab.PAD_ROW, (max_len, vocab.NUM_FIELDS)).astype(np.int32)
    out[: len(rows)] = rows
    return out


def piece_windows(rows_abs: np.ndarray, max_len: int) -> np.ndarray:
    """Default packing of one piece.

    Args:
      rows_abs: int [N, 8] note rows sorted by bar, with absolute bar numbers in column 0.
      max_len: rows per window.

    Returns:
      int32 [W, max_len, 8]; each window's bars start at 0 and stay below 256. W = 0 for N = 0.
    """
    rows = _check_rows(rows_abs)
    bounds = piece_window_bounds(rows[:, vocab.BAR], max_len)
    out = np.empty((len(bounds), max_len, vocab.NUM_FIELDS), np.int32)
    for w, (start, end) in enumerate(bounds):
        window = rows[start:end].astype(np.int64)
        window[:, vocab.BAR] -= window[0, vocab.BAR]
        out[w] = pad_window(window, max_len)
    return out


def reference_stream(rows_abs: np.ndarray) -> np.ndarray:
    """int32 [M, 8]: a piece as the reference packs it: 256-bar chunks, each followed by EOS."""
    from midibert_jax import tokenizer  # pylint: disable=import-outside-toplevel

    rows = _check_rows(rows_abs)
    parts = []
    for chunk in tokenizer.chunk_by_bars(rows):
        parts.append(np.asarray(chunk, np.int32))
        parts.append(vocab.EOS_ROW[None].astype(np.int32))
    if not parts:
        return np.empty((0, vocab.NUM_FIELDS), np.int32)
    return np.concatenate(parts, axis=0)


def num_reference_windows(total_rows: int, max_len: int, extra_pad_window: bool = False) -> int:
    """Windows of a packed stream of `total_rows` rows (see module docstring for the quirk)."""
    full, rest = divmod(total_rows, max_len)
    if rest:
        return full + 1
    return full + (1 if extra_pad_window else 0)


class ReferencePacker:
    """Streaming reference packing: feed piece streams in order, get complete windows back.

    Each window comes with the piece id of its first row (-1 for an all-PAD window).
    """

    def __init__(self, max_len: int, extra_pad_window: bool = False):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self.extra_pad_window = extra_pad_window
        self._buffer = np.empty((0, vocab.NUM_FIELDS), np.int32)
        self._first_piece = -1  # piece of the buffer's first row
        self.total_rows = 0

    def add(self, stream: np.ndarray, piece_id: int) -> list[tuple[np.ndarray, int]]:
        """Appends one piece's stream; returns the windows it completed as (window, piece_id)."""
        stream = np.asarray(stream, np.int32)
        if not len(stream):
            return []
        if not len(self._buffer):
            self._first_piece = piece_id
        self._buffer = np.concatenate([self._buffer, stream], axis=0)
        self.total_rows += len(stream)
        out = []
        while len(self._buffer) >= self.max_len:
            out.append((self._buffer[: self.max_len].copy(), self._first_piece))
            self._buffer = self._buffer[self.max_len :]
            # The next window starts inside the piece just added.
            self._first_piece = piece_id
        return out

    def finish(self) -> list[tuple[np.ndarray, int]]:
        """The padded last window (and the optional all-PAD quirk window)."""
        out = []
        if len(self._buffer):
            out.append((pad_window(self._buffer, self.max_len), self._first_piece))
        elif self.extra_pad_window and self.total_rows > 0:
            out.append((pad_window(self._buffer, self.max_len), -1))
        self._buffer = np.empty((0, vocab.NUM_FIELDS), np.int32)
        return out


def pack_reference(
    streams: Sequence[np.ndarray], max_len: int, extra_pad_window: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Packs piece streams (piece id = position in `streams`).

    Returns:
      windows int32 [W, max_len, 8] and first-row piece ids int32 [W].
    """
    packer = ReferencePacker(max_len, extra_pad_window)
    pairs = []
    for piece_id, stream in enumerate(streams):
        pairs.extend(packer.add(stream, piece_id))
    pairs.extend(packer.finish())
    windows = np.stack([w for w, _ in pairs]) if pairs else np.empty((0, max_len, vocab.NUM_FIELDS), np.int32)
    return windows, np.asarray([p for _, p in pairs], np.int32)


def reference_fragments(
    stream: np.ndarray, offset: int, max_len: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Slices of a piece stream that starts at global row `offset`: (window, row_in_window, rows)."""
    pos = 0
    while pos < len(stream):
        window, row = divmod(offset + pos, max_len)
        take = min(max_len - row, len(stream) - pos)
        yield window, row, stream[pos : pos + take]
        pos += take


def assemble_window(fragments: Sequence[tuple[int, np.ndarray, int]], max_len: int) -> tuple[np.ndarray, int]:
    """Builds one window from (row_in_window, rows, piece_id) fragments; PAD fills the rest.

    Returns the window and the piece id of its first row (-1 when empty).
    """
    out = np.broadcast_to(vocab.PAD_ROW, (max_len, vocab.NUM_FIELDS)).astype(np.int32)
    first_piece, first_row = -1, max_len
    for row, rows, piece_id in fragments:
        if row + len(rows) > max_len:
            raise ValueError(f"fragment at row {row} with {len(rows)} rows overflows a window of {max_len}")
        out[row : row + len(rows)] = rows
        if row < first_row:
            first_row, first_piece = row, piece_id
    return out, first_piece
