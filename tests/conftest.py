"""Shared fixtures: small MIDI corpora (see midi_factory) and one dataset built from them."""

from __future__ import annotations

import pathlib

import pytest

import midi_factory

# Rows per window in the test datasets (tiny, so builds and pipelines stay fast).
TEST_MAX_LEN = 32


@pytest.fixture(scope="session")
def midi_corpus(tmp_path_factory) -> tuple[pathlib.Path, dict[str, str]]:
    """A folder with good pieces, broken files, a duplicate, a README and a 300-bar piece.

    Returns (folder, {relative path: expected manifest status}).
    """
    folder = tmp_path_factory.mktemp("midi_corpus")
    expected = midi_factory.make_corpus(folder, num_good=8, long_piece_bars=300)
    return folder, expected


@pytest.fixture(scope="session")
def built_folder_dataset(midi_corpus, tmp_path_factory):
    """The midi_folder dataset of `midi_corpus` (piece packing, max_len 32), built locally once.

    Returns the builder (``.data_path`` is the dataset folder, ``.summary`` the build summary).
    """
    from midibert_jax.data.builders import common, corpus

    folder, _ = midi_corpus
    config = corpus.folder_config(folder, max_len=TEST_MAX_LEN, valid_fraction=0.3, seed=0)
    builder = corpus.MidiFolder(
        config=config,
        data_dir=tmp_path_factory.mktemp("tfds_local"),
        options=common.BuildOptions(num_workers=2, timeout=30, progress=False),
    )
    builder.download_and_prepare()
    return builder


# The real datasets beside the checkout (../shared/data: POP909, Pianist8, EMOPIA_1.0, POP1K7); CI has them.
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> pathlib.Path:
    """A path under ../shared/data; a test that needs it fails (never skips) when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} not found: the tests read the real datasets from ../shared/data beside the checkout")
    return path
