"""`midibert-jax tokenize song.mid -o song.npy`: the same tokenizer the dataset builders use."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("midi", type=pathlib.Path, help="input MIDI file")
    parser.add_argument("-o", "--output", type=pathlib.Path, help="output .npy (default: beside the input)")
    parser.add_argument(
        "--absolute",
        action="store_true",
        help="keep absolute bar numbers (int64) instead of 256-bar chunks separated by EOS rows",
    )


def run(args: argparse.Namespace) -> int:
    from midibert_jax.tokenizer import encode, encode_absolute, load_midi, vocab

    pm = load_midi(args.midi)
    try:
        rows = encode_absolute(pm) if args.absolute else encode(pm)
    except Exception as e:
        if hasattr(e, "with_path") and getattr(e, "path", None) is None:
            raise e.with_path(args.midi) from e
        raise
    output = args.output or args.midi.with_suffix(".npy")
    np.save(output, rows)
    eos = int(np.all(rows == vocab.EOS_ROW, axis=1).sum())
    print(f"{args.midi}: {len(rows) - eos} notes, {eos + 1} chunk(s) of <= 256 bars -> {output} {rows.shape} {rows.dtype}")
    return 0
