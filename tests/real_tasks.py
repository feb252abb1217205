"""Small copies of the real task datasets (../shared/data) laid out as their releases are.

The names come from MidiBERT-Piano's official lists (midibert_jax/resources/midibert_splits.json), so
the official split decides which copy is a train, validation or test file.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Sequence

from conftest import shared_data
from midibert_jax.data.builders import task_base

SPLITS = json.loads(pathlib.Path(task_base.OFFICIAL_SPLITS_PATH).read_text())
# Dataset -> (its folder under ../shared/data, the folder of its MIDI files inside the release).
RELEASES = {"pop909": ("POP909", ""), "pianist8": ("Pianist8", "midi"), "emopia": ("EMOPIA_1.0", "midis")}


def listed(dataset: str, split: str, n: int, prefix: str = "") -> list[str]:
    """The first `n` names of an official list ('train' / 'valid' / 'test') that start with `prefix`."""
    return [p for p in SPLITS[dataset][split] if p.startswith(prefix)][:n]


def inner_path(dataset: str, name: str) -> str:
    """A listed name's path inside the release's MIDI folder (POP909: '001.mid' -> '001/001.mid')."""
    return f"{name[:-4]}/{name}" if dataset == "pop909" else name


def midi_folder(root: pathlib.Path, dataset: str) -> pathlib.Path:
    """The folder of a release copy at `root` that holds its MIDI files (`root/midi` for Pianist8)."""
    return root / RELEASES[dataset][1]


def copy_release(root: pathlib.Path, dataset: str, names: Sequence[str]) -> pathlib.Path:
    """Copies the real files `names` (listed names) of `dataset` into `root` in the release's layout; returns root."""
    source, inner = RELEASES[dataset]
    for name in names:
        rel = inner_path(dataset, name)
        target = midi_folder(root, dataset) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data(source, inner, rel), target)
    return root
