"""`midibert-jax detokenize song.npy -o back.mid`: Octuple rows back to a playable MIDI file."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tokens", type=pathlib.Path, help="input .npy of int [rows, 8] Octuple ids")
    parser.add_argument("-o", "--output", type=pathlib.Path, help="output MIDI (default: beside the input)")


def run(args: argparse.Namespace) -> int:
    from midibert_jax.tokenizer import InvalidTokensError, decode
    from midibert_jax.tokenizer.midi_io import write_midi

    try:
        rows = np.load(args.tokens, allow_pickle=False)
    except ValueError as e:
        raise InvalidTokensError(f"not a numpy array file ({e})", args.tokens) from e
    try:
        pm = decode(rows)
    except InvalidTokensError as e:
        raise e.with_path(args.tokens) from e
    output = args.output or args.tokens.with_suffix(".mid")
    write_midi(pm, output)
    notes = sum(len(i.notes) for i in pm.instruments)
    print(f"{args.tokens}: {notes} notes, {len(pm.instruments)} instrument(s), {pm.get_end_time():.1f} s -> {output}")
    return 0
