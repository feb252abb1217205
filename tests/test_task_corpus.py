"""Pre-training corpora of task training splits (configs/prepare.py:tasks), on real files of each dataset.

A few real songs / pieces / clips of POP909, Pianist8 and EMOPIA (from ../shared/data) are laid out as
their releases are, with the official split deciding which are train, validation and test; an extra
folder holds a POP1K7 cover, byte-identical copies of a POP909 test song and of a Pianist8 validation
piece, and a copy of a training piece. No validation or test file of any task may reach the corpus,
by song id or by content.
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil

import pytest

from conftest import shared_data
from midibert_jax.config_loading import load_config
from midibert_jax.data import manifest, prepare
from midibert_jax.data.builders import task_corpus
from midibert_jax.data.errors import DatasetConfigError
from real_tasks import copy_release, inner_path, listed, midi_folder


def sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, pathlib.Path]:
    base = tmp_path_factory.mktemp("task_roots")
    roots = {"pop909": base / "POP909", "pianist8": base / "Pianist8", "emopia": base / "EMOPIA_1.0"}
    chosen = {}
    for dataset, prefix, counts in (("pop909", "", (3, 1, 1)), ("pianist8", "Hisaishi/", (2, 1, 1)),
                                    ("emopia", "Q3", (2, 1, 1))):
        for split, n in zip(("train", "valid", "test"), counts):
            names = listed(dataset, split, n, prefix)
            copy_release(roots[dataset], dataset, names)
            chosen.update({f"{dataset}/{inner_path(dataset, name)}": split for name in names})
    extra = base / "extra"
    extra.mkdir()
    shutil.copy(shared_data("POP1K7", "midi_synchronized", "src_001", "0.mid"), extra / "cover0.mid")
    test_song = inner_path("pop909", listed("pop909", "test", 1)[0])
    shutil.copy(roots["pop909"] / test_song, extra / "renamed_copy_of_a_test_song.mid")
    valid_piece = listed("pianist8", "valid", 1, "Hisaishi/")[0]
    shutil.copy(midi_folder(roots["pianist8"], "pianist8") / valid_piece, extra / "copy_of_a_validation_piece.mid")
    train_clip = listed("emopia", "train", 1, "Q3")[0]
    shutil.copy(midi_folder(roots["emopia"], "emopia") / train_clip, extra / "copy_of_a_training_clip.mid")
    return {**roots, "extra": extra, "chosen": chosen}


def corpus_config(roots, data_dir, **task_roots):
    config = load_config("configs/prepare.py:tasks")
    for dataset, root in task_roots.items():
        config.task_roots[dataset] = str(root)
    config.extra_folders = (str(roots["extra"]),)
    config.max_len = 128
    config.valid_fraction = 0.2
    config.data_dir = str(data_dir)
    config.num_workers = 2
    config.progress = False
    return config


@pytest.fixture(scope="module")
def built(roots, tmp_path_factory):
    config = corpus_config(roots, tmp_path_factory.mktemp("tfds"), pop909=roots["pop909"],
                           pianist8=roots["pianist8"], emopia=roots["emopia"])
    dataset_dir = prepare.prepare(config)
    return manifest.Manifest.load(dataset_dir), dataset_dir


def test_only_training_files_enter_and_held_out_ones_never_do(roots, built):
    records, _ = built
    by_path = {r.path: r for r in records.records}
    chosen = roots["chosen"]
    ok = {r.path for r in records.records if r.status == "ok"}
    train = {p for p, s in chosen.items() if s == "train"}
    held = {p for p, s in chosen.items() if s != "train"}
    # Every training file of every task is in (one EMOPIA clip also comes as a copy: the first one stays).
    assert train <= ok
    assert ok - train == {"extra/cover0.mid"}
    # No validation or test file by id...
    for path in held:
        assert by_path[path].status == "ignored" and by_path[path].error_kind == task_corpus.HELD_OUT, path
        assert ("validation" if chosen[path] == "valid" else "test") in by_path[path].reason
    # ... nor by content: copies under other names are left out, naming the file they copy.
    held_hashes = task_corpus.held_out_hashes(records.records)
    assert held_hashes == {sha(_root_path(roots, p)) for p in held}
    assert not {r.sha256 for r in records.records if r.status == "ok"} & held_hashes
    for name, original in (("renamed_copy_of_a_test_song.mid", "pop909/"), ("copy_of_a_validation_piece.mid", "pianist8/")):
        r = by_path[f"extra/{name}"]
        assert r.status == "ignored" and r.error_kind == task_corpus.HELD_OUT_COPY and original in r.reason
    # A copy of a training file is a duplicate across sources, not a second piece.
    assert by_path["extra/copy_of_a_training_clip.mid"].status == "duplicate"


def test_every_input_is_accounted_for_per_source(roots, built):
    records, _ = built
    summary = records.summary()
    assert sum(summary["status"].values()) == summary["files"] == len(records.records)
    groups = summary["groups"]
    assert set(groups) == {"pop909", "pianist8", "emopia", "extra"}
    assert groups["pop909"]["pieces"] == 3 and groups["pop909"]["ignored"] == 2
    assert groups["extra"]["pieces"] == 1 and groups["extra"]["ignored"] == 2 and groups["extra"]["duplicate"] == 1
    assert summary["ignored_by_kind"][task_corpus.HELD_OUT] == sum(s != "train" for s in roots["chosen"].values())
    assert summary["ignored_by_kind"][task_corpus.HELD_OUT_COPY] == 2
    text = manifest.format_summary(summary)
    assert "held_out" in text and "pop909" in text


def test_pretraining_splits_hold_windows_of_the_kept_files(built):
    records, dataset_dir = built
    from midibert_jax.data import pipeline

    ok_ids = {r.piece_id for r in records.records if r.status == "ok"}
    seen = set()
    for split in ("train", "validation"):
        source = pipeline.load_split(dataset_dir, split)
        seen |= {int(source[i]["piece_id"]) for i in range(len(source))}
    assert seen == ok_ids


def test_one_task_alone_and_bad_roots(roots, tmp_path):
    config = corpus_config(roots, tmp_path, pop909=roots["pop909"])
    config.extra_folders = ()
    builder = prepare.make_builder(config)
    inputs = task_corpus.task_train_inputs(builder.config, builder.options)
    pending = sorted(i.name for i in inputs if i.status == "pending")
    assert pending == sorted(p for p, s in roots["chosen"].items() if s == "train" and p.startswith("pop909/"))
    config.task_roots.pop909 = str(tmp_path / "nowhere")
    with pytest.raises(DatasetConfigError, match="task_roots.pop909"):
        prepare.make_builder(config).download_and_prepare()
    config.task_roots.pop909 = ""
    with pytest.raises(DatasetConfigError, match="task_roots"):
        prepare.make_builder(config)


def _root_path(roots, manifest_path: str) -> pathlib.Path:
    source, rel = manifest_path.split("/", 1)
    return midi_folder(roots[source], source) / rel
