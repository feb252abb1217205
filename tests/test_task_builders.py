"""Fine-tuning datasets: labels, class maps, splits, bad inputs, demo tasks, labelled batches.

Each standard dataset is tested on a small folder generated here with the real release's layout
and file names (taken from the official split lists), with tiny windows (max_len 32) so that
pieces span several windows. Track pitch ranges are disjoint and velocities are a function of
pitch, so every row's expected label can be read off its own tokens.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pretty_midi
import pytest

import midi_factory
from midibert_jax import tokenizer
from midibert_jax.config_loading import load_config
from midibert_jax.data import dataset_lock, errors, manifest, pipeline, prepare, tasks, windows
from midibert_jax.data import labels as labelling
from midibert_jax.data.builders import task_base, task_kinds
from midibert_jax.tokenizer import vocab
from midibert_jax.train import note_views

MAX_LEN = 32
SPLITS = json.loads(pathlib.Path(task_base.OFFICIAL_SPLITS_PATH).read_text())
# Pitch range per track; the class of a note follows from its pitch.
TRACK_PITCHES = {"MELODY": (72, 84), "BRIDGE": (60, 71), "PIANO": (36, 59), "Strings": (85, 100), "Drums": (101, 110)}


def velocity_of(pitch: int) -> int:
    return max(1, (pitch * 7) % 128)


def write_song(path, tracks=("MELODY", "BRIDGE", "PIANO"), num_bars=6, seed=0) -> pathlib.Path:
    """One named track per entry, one note per beat, pitch from the track's range."""
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0, resolution=480)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    for name in tracks:
        inst = pretty_midi.Instrument(program=0, name=name)
        lo, hi = TRACK_PITCHES[name]
        for beat in range(num_bars * 4):
            pitch = int(rng.integers(lo, hi + 1))
            inst.notes.append(pretty_midi.Note(velocity_of(pitch), pitch, beat * 0.5, beat * 0.5 + 0.4))
        pm.instruments.append(inst)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pm.write(os.fspath(path))
    return path


def pitch_class(pitch: np.ndarray) -> np.ndarray:
    out = np.full(pitch.shape, -1, np.int32)
    for label, name in enumerate(tasks.MELODY_CLASSES):
        lo, hi = TRACK_PITCHES[name]
        out[(pitch >= lo) & (pitch <= hi)] = label
    return out


def data_config(task: str, root="", data_dir="", **overrides):
    config = load_config(f"configs/finetune_data.py:{task}")
    config.root = os.fspath(root)
    config.data_dir = os.fspath(data_dir)
    config.max_len = MAX_LEN
    config.num_workers = 1
    config.progress = False
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def read_split(dataset_dir, split):
    source = pipeline.load_split(dataset_dir, split)
    return [source[i] for i in range(len(source))]


def check_common(dataset_dir, level):
    """Contiguous index per split in (piece_id, window) order; features typed as the contract says."""
    for split in ("train", "validation", "test"):
        examples = sorted(read_split(dataset_dir, split), key=lambda e: int(e["index"]))
        assert [int(e["index"]) for e in examples] == list(range(len(examples)))
        keys = [(int(e["piece_id"]), int(e["window"])) for e in examples]
        assert keys == sorted(keys)
        for e in examples:
            assert e["tokens"].shape == (MAX_LEN, 8) and e["tokens"].dtype == np.int32
            if level == tasks.NOTE:
                assert e["labels"].shape == (MAX_LEN,) and e["labels"].dtype == np.int32
                pad = np.all(e["tokens"] == vocab.PAD_ROW, axis=1)
                assert np.all(e["labels"][pad] == -1)
            else:
                assert "label" in e and "labels" not in e


def piece_splits(dataset_dir) -> dict[str, str]:
    return {r.path: r.split for r in manifest.Manifest.load(dataset_dir).records if r.status == "ok"}


# -- labels, class maps, registry (no builds) -----------------------------------------------------


def test_note_labels_follow_tracks_and_rows_match_the_tokenizer(tmp_path):
    path = write_song(tmp_path / "song.mid", tracks=("MELODY", "BRIDGE", "PIANO", "Strings"), num_bars=20)
    patterns = tasks.parse_track_map("MELODY,BRIDGE,PIANO").patterns
    result = labelling.label_note_piece(os.fspath(path), max_len=MAX_LEN, patterns=patterns, unmapped="ignore")
    assert result.ok and len(result.windows) > 5
    np.testing.assert_array_equal(result.windows, windows.piece_windows(tokenizer.encode_file(path), MAX_LEN))
    pitch = result.windows[..., vocab.PITCH]
    pad = np.all(result.windows == vocab.PAD_ROW, axis=-1)
    np.testing.assert_array_equal(result.labels, np.where(pad, -1, pitch_class(pitch)))
    assert np.sum(result.labels == -1) - pad.sum() == 20 * 4  # the Strings notes: kept, unlabelled
    assert result.unmapped == ["Strings"] and any("Strings" in n for n in result.notes)

    failed = labelling.label_note_piece(os.fspath(path), max_len=MAX_LEN, patterns=patterns, unmapped="error")
    assert not failed.ok and failed.error_kind == "unmapped_track" and failed.unmapped == ["Strings"]

    velocity = labelling.label_note_piece(os.fspath(path), max_len=MAX_LEN, mode="velocity")
    real = ~np.all(velocity.windows == vocab.PAD_ROW, axis=-1)
    assert np.all(velocity.windows[..., vocab.VELOCITY] == vocab.PAD_ROW[vocab.VELOCITY])  # the label is not in the input
    expected = labelling.velocity_class(np.vectorize(velocity_of)(velocity.windows[..., vocab.PITCH]))
    np.testing.assert_array_equal(velocity.labels, np.where(real, expected, -1))
    kept = labelling.label_note_piece(os.fspath(path), max_len=MAX_LEN, mode="velocity", blank_velocity=False)
    np.testing.assert_array_equal(kept.windows, result.windows)


def test_velocity_classes_and_track_maps():
    edges = {0: 0, 31: 0, 32: 1, 47: 1, 48: 2, 63: 2, 64: 3, 79: 3, 80: 4, 95: 4, 96: 5, 127: 5}
    np.testing.assert_array_equal(labelling.velocity_class(np.array(list(edges))), list(edges.values()))
    tokens = np.arange(32)
    np.testing.assert_array_equal(labelling.velocity_token_class(tokens), labelling.velocity_class(tokens * 4 + 3))

    pop = tasks.parse_track_map("MELODY,BRIDGE,PIANO")
    assert pop.class_names == tasks.MELODY_CLASSES and pop.classify(" piano ") == 2 and pop.classify("Drums") is None
    mine = tasks.parse_track_map("Vocal*=melody, Piano=accomp, Guitar=accomp")
    assert mine.class_names == ("melody", "accomp")
    assert mine.classify("VOCALS lead") == 0 and mine.classify("guitar") == 1 and mine.classify("Bass") is None
    assert tasks.parse_track_map("Piano=accomp,Vocal=melody", ["melody", "accomp"]).classify("vocal") == 0
    with pytest.raises(errors.TaskConfigError, match="needs a track_map"):
        tasks.parse_track_map("")
    with pytest.raises(errors.SingleClassError, match="one class"):
        tasks.parse_track_map("Vocal=melody,Lead=melody")
    with pytest.raises(errors.TaskConfigError, match="not in class_names"):
        tasks.parse_track_map("Vocal=melody,Bass=bass", ["melody", "accomp"])


def test_registry_and_configs_follow_the_contract():
    expected = {
        "melody": (tasks.NOTE, ("MELODY", "BRIDGE", "PIANO")),
        "velocity": (tasks.NOTE, ("pp", "p", "mp", "mf", "f", "ff")),
        "composer": (tasks.SEQUENCE, ("Bethel", "Clayderman", "Einaudi", "Hancock", "Hillsong", "Hisaishi", "Ryuichi", "Yiruma")),
        "emotion": (tasks.SEQUENCE, ("Q1", "Q2", "Q3", "Q4")),
        "demo_melody": (tasks.NOTE, ("melody", "accompaniment")),
        "demo_collection": (tasks.SEQUENCE, ("airdsAirs", "essenFolksong", "oneills1850", "ryansMammoth")),
        "folder_sequence": (tasks.SEQUENCE, ()),
        "folder_note": (tasks.NOTE, ()),
    }
    assert set(tasks.TASKS) == set(expected)
    for name, (level, classes) in expected.items():
        task = tasks.get_task(name)
        assert (task.level, task.class_names, task.num_classes) == (level, classes, len(classes))
        assert task_kinds.BUILDERS[name].TASK == name
        assert task.target_key == ("labels" if level == tasks.NOTE else "label")
        config = load_config(f"configs/finetune_data.py:{name}")
        assert config.task == name and config.split == task.default_split
    with pytest.raises(errors.TaskConfigError, match="unknown task"):
        tasks.get_task("genre")
    config = load_config("configs/finetune_data.py:folder_note")
    config.track_map = "Vocal=melody,Piano=accompaniment"
    assert tasks.get_task("folder_note", config).class_names == ("melody", "accompaniment")
    assert load_config("configs/finetune_data.py:demo_collection,runlocal").max_len == 256
    config = load_config("configs/finetune_data.py:composer")
    config.split = "bogus"
    with pytest.raises(errors.TaskConfigError, match="data.split"):
        prepare.resolve_split(config)


# -- the standard datasets --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pop909_root(tmp_path_factory) -> pathlib.Path:
    """A POP909-Dataset checkout: POP909/<id>/<id>.mid (+ versions/, text files, an unlisted song)."""
    repo = tmp_path_factory.mktemp("POP909-Dataset")
    root = repo / "POP909"
    ids = SPLITS["pop909"]["train"][:3] + SPLITS["pop909"]["valid"][:1] + SPLITS["pop909"]["test"][:1]
    for k, name in enumerate(ids):
        song = name[:-4]
        tracks = ("MELODY", "BRIDGE", "PIANO", "Strings") if k == 0 else ("MELODY", "BRIDGE", "PIANO")
        write_song(root / song / f"{song}.mid", tracks=tracks, num_bars=4 + 3 * k, seed=k)
        (root / song / "beat_midi.txt").write_text("0.0 1\n")
    write_song(root / ids[0][:-4] / "versions" / "v1.mid", seed=99)
    write_song(root / "034" / "034.mid", seed=34)  # not in the official lists
    return repo


def test_pop909_melody_uses_the_official_split_and_labels_every_note(pop909_root, tmp_path):
    dataset_dir = prepare.prepare(data_config("melody", pop909_root, tmp_path))
    check_common(dataset_dir, tasks.NOTE)
    records = {r.path: r for r in manifest.Manifest.load(dataset_dir).records}
    train, valid, test = SPLITS["pop909"]["train"][:3], SPLITS["pop909"]["valid"][0], SPLITS["pop909"]["test"][0]
    expected = {f"{n[:-4]}/{n}": "train" for n in train} | {f"{valid[:-4]}/{valid}": "validation", f"{test[:-4]}/{test}": "test"}
    assert piece_splits(dataset_dir) == expected
    assert records["034/034.mid"].status == "ignored" and "official" in records["034/034.mid"].reason
    assert records[f"{train[0][:-4]}/versions/v1.mid"].status == "ignored"
    assert records[f"{train[0][:-4]}/beat_midi.txt"].status == "ignored"
    total_labelled = 0
    for split in ("train", "validation", "test"):
        for e in read_split(dataset_dir, split):
            pad = np.all(e["tokens"] == vocab.PAD_ROW, axis=1)
            np.testing.assert_array_equal(e["labels"], np.where(pad, -1, pitch_class(e["tokens"][:, vocab.PITCH])))
            total_labelled += int(np.sum(e["labels"] >= 0))
    assert total_labelled == sum(4 * (4 + 3 * k) * 3 for k in range(5))  # 4 notes a bar, 3 labelled tracks
    info = tasks.load_task_info(dataset_dir)
    assert info["class_names"] == list(tasks.MELODY_CLASSES) and info["level"] == "note" and info["split"] == "official"
    assert info["listed"] == 865 and info["listed_missing"] == 860
    assert tasks.dataset_task(dataset_dir).class_names == tasks.MELODY_CLASSES
    # A multi-window piece: windows cover its notes in order.
    assert max(int(e["window"]) for e in read_split(dataset_dir, "test")) >= 1
    # The manifest's window bars put every piece back together, absolute bars and all (evaluation views).
    bars = note_views.window_bars(dataset_dir)
    by_id = {r.piece_id: r for r in records.values()}
    for split in ("train", "test"):
        pieces = note_views.gather_pieces(read_split(dataset_dir, split), bars)
        assert sorted(p.piece_id for p in pieces) == sorted(r.piece_id for r in records.values() if r.split == split)
        for piece in pieces:
            assert len(bars[piece.piece_id]) == by_id[piece.piece_id].num_windows
            song = tokenizer.encode_file(os.fspath(pop909_root / "POP909" / by_id[piece.piece_id].path))
            np.testing.assert_array_equal(piece.rows, song)
            np.testing.assert_array_equal(piece.labels, pitch_class(song[:, vocab.PITCH]))


def test_pop909_velocity_blanks_the_velocity_input(pop909_root, tmp_path):
    dataset_dir = prepare.prepare(data_config("velocity", pop909_root / "POP909", tmp_path))
    check_common(dataset_dir, tasks.NOTE)
    examples = read_split(dataset_dir, "train")
    for e in examples:
        real = ~np.all(e["tokens"] == vocab.PAD_ROW, axis=1)
        assert np.all(e["tokens"][:, vocab.VELOCITY] == vocab.PAD_ROW[vocab.VELOCITY])
        expected = labelling.velocity_class(np.vectorize(velocity_of)(e["tokens"][:, vocab.PITCH]))
        np.testing.assert_array_equal(e["labels"], np.where(real, expected, -1))
    counts = tasks.load_task_info(dataset_dir)["class_counts"]["train"]["notes"]
    assert list(counts) == list(tasks.VELOCITY_CLASSES) and sum(counts.values()) > 0


def test_pianist8_composer_labels_every_window_with_the_piece(tmp_path, capsys):
    root = tmp_path / "Pianist8" / "midi"
    chosen = {}
    for split in ("train", "valid", "test"):
        for composer in ("Bethel", "Hancock", "Yiruma"):
            chosen[next(p for p in SPLITS["pianist8"][split] if p.startswith(composer + "/"))] = split
    for k, rel in enumerate(sorted(chosen)):
        midi_factory.write_piece(root / rel, num_bars=30 if k == 0 else 4, notes_per_bar=4, seed=k)
    midi_factory.write_piece(root / "Bethel" / "Bethel_Not_Listed.mid", seed=50)
    (tmp_path / "Pianist8" / "audio").mkdir()
    (tmp_path / "Pianist8" / "audio" / "x.mp3").write_bytes(b"ID3")

    dataset_dir = prepare.prepare(data_config("composer", tmp_path / "Pianist8", tmp_path / "tfds"))
    per_class = [line for line in capsys.readouterr().out.splitlines() if "per class" in line]
    assert per_class == ["  pieces per class (train/validation/test): " + ", ".join(
        f"{name} {'1/1/1' if name in ('Bethel', 'Hancock', 'Yiruma') else '0/0/0'}" for name in tasks.PIANIST8_CLASSES)]
    check_common(dataset_dir, tasks.SEQUENCE)
    assert piece_splits(dataset_dir) == {rel: {"valid": "validation"}.get(s, s) for rel, s in chosen.items()}
    records = {r.path: r for r in manifest.Manifest.load(dataset_dir).records}
    assert records["Bethel/Bethel_Not_Listed.mid"].status == "ignored"
    ids = {r.piece_id: r.path for r in records.values()}
    windows_per_piece: dict[int, int] = {}
    for split in ("train", "validation", "test"):
        for e in read_split(dataset_dir, split):
            composer = ids[int(e["piece_id"])].split("/")[0]
            assert int(e["label"]) == tasks.PIANIST8_CLASSES.index(composer)
            windows_per_piece[int(e["piece_id"])] = windows_per_piece.get(int(e["piece_id"]), 0) + 1
    assert max(windows_per_piece.values()) > 1  # the long piece: every window, each with the piece's label


def test_emopia_emotion_labels_from_the_file_name(tmp_path):
    root = tmp_path / "EMOPIA_1.0"
    chosen = {}
    for split in ("train", "valid", "test"):
        for q in ("Q1", "Q2", "Q3", "Q4"):
            chosen[next(p for p in SPLITS["emopia"][split] if p.startswith(q))] = split
    for k, name in enumerate(sorted(chosen)):
        midi_factory.write_piece(root / "midis" / name, num_bars=3, seed=k)
    midi_factory.write_piece(root / "midis" / "Q2_notlisted_0.mid", seed=60)
    midi_factory.write_piece(root / "midis" / "other.mid", seed=61)
    (root / "metadata_by_song.csv").write_text("songID\n")

    dataset_dir = prepare.prepare(data_config("emotion", root, tmp_path / "tfds"))
    check_common(dataset_dir, tasks.SEQUENCE)
    assert piece_splits(dataset_dir) == {rel: {"valid": "validation"}.get(s, s) for rel, s in chosen.items()}
    ids = {r.piece_id: r.path for r in manifest.Manifest.load(dataset_dir).records}
    for split in ("train", "validation", "test"):
        labels = {ids[int(e["piece_id"])][:2]: int(e["label"]) for e in read_split(dataset_dir, split)}
        assert labels == {"Q1": 0, "Q2": 1, "Q3": 2, "Q4": 3}
    statuses = {r.path: (r.status, r.reason) for r in manifest.Manifest.load(dataset_dir).records}
    assert statuses["Q2_notlisted_0.mid"][0] == "ignored" and statuses["other.mid"][0] == "ignored"


# -- your own data ----------------------------------------------------------------------------------


def make_label_folder(root: pathlib.Path, labels=("jazz", "pop", "rock"), per_label=5) -> None:
    for i, label in enumerate(labels):
        for k in range(per_label):
            midi_factory.write_piece(root / label / f"{label}_{k}.mid", num_bars=3 + k, seed=10 * i + k)


def test_sequence_folder_seeded_split_and_split_file(tmp_path):
    root = tmp_path / "mine"
    make_label_folder(root)
    midi_factory.write_noteless(root / "rock" / "silent.mid")
    midi_factory.write_piece(root / "loose.mid", seed=7)

    dataset_dir = prepare.prepare(data_config("folder_sequence", root, tmp_path / "tfds", valid_fraction=0.2, test_fraction=0.2))
    check_common(dataset_dir, tasks.SEQUENCE)
    # Built on the one locked path of every dataset: marked complete, the lock file beside it.
    assert (dataset_dir / dataset_lock.COMPLETE_MARKER).exists() and dataset_lock.lock_path(dataset_dir).exists()
    info = tasks.load_task_info(dataset_dir)
    assert info["class_names"] == ["jazz", "pop", "rock"] and info["split"] == "seeded"
    for split in ("validation", "test"):  # stratified: one piece of each class
        assert info["class_counts"][split]["pieces"] == {"jazz": 1, "pop": 1, "rock": 1}
    records = {r.path: r for r in manifest.Manifest.load(dataset_dir).records}
    assert records["rock/silent.mid"].status == "skipped" and records["rock/silent.mid"].error_kind == "no_notes"
    assert records["loose.mid"].status == "ignored" and "label folder" in records["loose.mid"].reason

    (root / "split.json").write_text(json.dumps(
        {"train": ["jazz/jazz_0.mid", "pop/pop_0.mid", "./rock/rock_0.mid"], "valid": ["jazz/jazz_1.mid"], "test": ["pop/pop_1.mid"]}
    ))
    dataset_dir = prepare.prepare(data_config("folder_sequence", root, tmp_path / "tfds"))  # split 'auto' -> 'file'
    assert tasks.load_task_info(dataset_dir)["split"] == "file"
    assert piece_splits(dataset_dir) == {"jazz/jazz_0.mid": "train", "pop/pop_0.mid": "train", "rock/rock_0.mid": "train",
                                         "jazz/jazz_1.mid": "validation", "pop/pop_1.mid": "test"}


def test_note_folder_maps_tracks_to_classes(tmp_path):
    root = tmp_path / "notes"
    write_song(root / "a.mid", tracks=("MELODY", "PIANO"), seed=1)
    write_song(root / "b" / "b.mid", tracks=("MELODY", "PIANO", "Drums"), seed=2)
    write_song(root / "c.mid", tracks=("MELODY", "PIANO"), seed=3)
    with pytest.raises(errors.UnmappedTrackError, match=r"b/b\.mid: \['Drums'\]"):
        prepare.prepare(data_config("folder_note", root, tmp_path / "tfds", track_map="melody=lead,piano=accomp"))
    dataset_dir = prepare.prepare(data_config(
        "folder_note", root, tmp_path / "tfds", track_map="melody=lead,piano=accomp", unmapped_tracks="ignore",
        split="seeded", valid_fraction=0.34, test_fraction=0.0,
    ))
    assert tasks.load_task_info(dataset_dir)["class_names"] == ["lead", "accomp"]
    for split in ("train", "validation"):
        for e in read_split(dataset_dir, split):
            pitch = e["tokens"][:, vocab.PITCH]
            pad = np.all(e["tokens"] == vocab.PAD_ROW, axis=1)
            expected = np.where(pitch >= 72, 0, 1)
            expected[(pitch >= TRACK_PITCHES["Drums"][0]) | pad] = -1
            np.testing.assert_array_equal(e["labels"], expected)


def test_bad_inputs_are_typed_errors_that_name_the_problem(tmp_path):
    with pytest.raises(errors.DatasetNotFoundError, match=r"zenodo.org/records/5089279(.|\n)*Bethel_<title>\.mid"):
        prepare.prepare(data_config("composer", tmp_path / "nope", tmp_path / "tfds"))
    with pytest.raises(errors.DatasetNotFoundError, match="POP909"):
        prepare.prepare(data_config("melody", "", tmp_path / "tfds"))
    one = tmp_path / "one"
    make_label_folder(one, labels=("jazz",), per_label=2)
    with pytest.raises(errors.SingleClassError, match=r"1 label folder\(s\) \['jazz'\]"):
        prepare.prepare(data_config("folder_sequence", one, tmp_path / "tfds"))
    wrong = tmp_path / "wrong"
    make_label_folder(wrong, labels=("a", "b"), per_label=1)
    with pytest.raises(errors.DatasetLayoutError, match=r"no usable MIDI file in .*wrong \(2 file\(s\), none usable: "
                                                         r"a/a_0.mid \('a' is not a composer(.|\n)*Clayderman_<title>"):
        prepare.prepare(data_config("composer", wrong, tmp_path / "tfds"))
    unlisted = tmp_path / "unlisted"
    midi_factory.write_piece(unlisted / "Bethel" / "Bethel_Unknown.mid")
    with pytest.raises(errors.DatasetLayoutError, match="none of the 411 files"):
        prepare.prepare(data_config("composer", unlisted, tmp_path / "tfds"))
    (wrong / "split.json").write_text(json.dumps({"train": ["a/a_0.mid"], "test": ["a/a_0.mid"]}))
    with pytest.raises(errors.SplitFileError, match="both"):
        prepare.prepare(data_config("folder_sequence", wrong, tmp_path / "tfds"))
    (wrong / "split.json").write_text(json.dumps({"train": ["a/a_0.mid", "b/gone.mid"], "test": ["b/b_0.mid"]}))
    with pytest.raises(errors.SplitFileError, match="gone.mid"):
        prepare.prepare(data_config("folder_sequence", wrong, tmp_path / "tfds"))
    with pytest.raises(errors.TaskConfigError, match="no official split"):
        prepare.prepare(data_config("folder_sequence", wrong, tmp_path / "tfds", split="official"))


# -- demo tasks and batches -------------------------------------------------------------------------


def test_demo_tasks_build_from_the_music21_corpus(tmp_path):
    cache = tmp_path / "cache"
    dataset_dir = prepare.prepare(data_config(
        "demo_collection", data_dir=tmp_path / "tfds", **{"demo.max_pieces": 8, "demo.cache_dir": os.fspath(cache)}
    ))
    check_common(dataset_dir, tasks.SEQUENCE)
    ids = {r.piece_id: r.path for r in manifest.Manifest.load(dataset_dir).records}
    seen = {}
    for split in ("train", "validation", "test"):
        for e in read_split(dataset_dir, split):
            seen[ids[int(e["piece_id"])]] = int(e["label"])
    assert len(seen) == 8 and all(tasks.DEMO_COLLECTION_CLASSES[v] == k.split("/")[0] for k, v in seen.items())

    dataset_dir = prepare.prepare(data_config(
        "demo_melody", data_dir=tmp_path / "tfds",
        **{"demo.max_pieces": 3, "demo.collections": "corelli,schoenberg,webern", "demo.cache_dir": os.fspath(cache)},
    ))
    check_common(dataset_dir, tasks.NOTE)
    records = [r for r in manifest.Manifest.load(dataset_dir).records if r.status == "ok"]
    assert {r.path.split("/")[0] for r in records} == {"corelli", "schoenberg", "webern"}
    labels = np.concatenate([e["labels"] for s in ("train", "validation", "test") for e in read_split(dataset_dir, s)])
    # The first part of each score is the melody: its notes are the first track of the converted MIDI.
    first_part = 0
    for r in records:
        pm = tokenizer.load_midi(_cached_midi(cache, r.path))
        first_part += len(pm.instruments[0].notes)
    assert np.sum(labels == 0) == first_part and np.sum(labels == 1) > 0


def _cached_midi(cache: pathlib.Path, key: str) -> pathlib.Path:
    from midibert_jax.data import demo_corpus

    source, _, number = key.partition("#")
    return cache / demo_corpus.Work(source, int(number) if number else None).midi_path


def test_pipeline_batches_carry_labels(pop909_root, tmp_path):
    note_dir = prepare.prepare(data_config("melody", pop909_root, tmp_path))
    source = pipeline.load_split(note_dir, "train")
    batch = next(pipeline.train_iterator(source, global_batch_size=4, seed=0, process_index=0, process_count=1))
    assert batch["labels"].shape == (4, MAX_LEN) and batch["labels"].dtype == np.int32
    by_index = {int(source[i]["index"]): source[i]["labels"] for i in range(len(source))}
    for index, labels in zip(batch["index"], batch["labels"]):
        np.testing.assert_array_equal(labels, by_index[int(index)])
    batches = list(pipeline.eval_iterator(source, global_batch_size=len(source) + 3, process_index=0, process_count=1))
    assert len(batches) == 1 and np.all(batches[0]["labels"][~batches[0]["valid"]] == -1)

    root = tmp_path / "seq"
    make_label_folder(root, labels=("a", "b"), per_label=4)
    seq_dir = prepare.prepare(data_config("folder_sequence", root, tmp_path / "tfds2"))
    source = pipeline.load_split(seq_dir, "train")
    batches = list(pipeline.eval_iterator(source, global_batch_size=4, process_index=1, process_count=2))
    for b in batches:
        assert b["label"].shape == (2,) and b["label"].dtype == np.int32
        assert np.all(b["label"][~b["valid"]] == -1) and np.all(b["label"][b["valid"]] >= 0)
