"""Inference on MIDI files (midibert_jax/inference.py) and the predict command.

The workdirs are written directly (a tiny classifier with random weights saved as a checkpoint):
predict's plumbing does not need a trained model.
"""

import argparse
import json
import os

import ml_collections
import numpy as np
import pretty_midi
import pytest

import midi_factory
from midibert_jax import config_loading, inference, tokenizer
from midibert_jax.run import NoCheckpointError
from midibert_jax.commands import predict
from midibert_jax.data import labels, tasks, workers
from midibert_jax.train import augment, checkpointing, finetune

L = 32
NUM_NOTES = 82  # write_song: 10 bars x (2 + 2 + 3) notes + 12 drum hits
MELODY = finetune.TaskInfo("melody", "note", tasks.MELODY_CLASSES)
COMPOSER = finetune.TaskInfo("composer", "sequence", ("Bethel", "Clayderman", "Einaudi"))


def tiny_config(arg: str) -> ml_collections.ConfigDict:
    config = config_loading.load_config("configs/finetune.py:" + arg)
    config.unlock()
    m = config.model
    m.num_layers, m.hidden_size, m.num_heads, m.mlp_dim, m.field_embed_dim, m.head_hidden = 2, 32, 2, 64, 8, 16
    m.sequence_pooling.attention_hidden = 8
    config.data.max_len = m.max_len = L
    return config


def random_state(abstract, seed: int = 0):
    """A train state shaped and sharded like `abstract` (random floats, zero integers), made on the host."""
    import jax

    rng = np.random.default_rng(seed)

    def leaf(a):
        value = rng.standard_normal(a.shape) * 0.1 if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape)
        return jax.device_put(value.astype(a.dtype), a.sharding)

    return jax.tree_util.tree_map(leaf, abstract)


def make_workdir(path, task: finetune.TaskInfo, arg: str) -> str:
    """A fine-tuning workdir holding one checkpoint of a tiny classifier with random weights."""
    config = finetune.resolve_config(tiny_config(arg), task, str(path))
    trainer = finetune.FinetuneTrainer(config, task)
    with checkpointing.Checkpointer(os.path.join(path, "checkpoints"), save_every=1, keep_last=1,
                                    best_metric=finetune.BEST_METRIC) as ckpt:
        ckpt.save_now(1, state=random_state(trainer.abstract_state), mask_book=np.zeros((1, 1), np.uint8), data={"next_index": 1},
                      config=config.to_dict(), metrics={finetune.BEST_METRIC: 0.5})
    return str(path)


def write_song(path) -> str:
    """A multi-track song: MELODY, BRIDGE and PIANO tracks (named as in POP909) and drums; 3+ windows of 32."""
    rng = np.random.default_rng(0)
    pm = pretty_midi.PrettyMIDI(initial_tempo=100.0, resolution=220)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    beat = 0.6
    tracks = {
        "MELODY": (pretty_midi.Instrument(0, name="MELODY"), (72, 84)),
        "BRIDGE": (pretty_midi.Instrument(0, name="BRIDGE"), (60, 71)),
        "PIANO": (pretty_midi.Instrument(0, name="PIANO"), (36, 59)),
    }
    for bar in range(10):
        for name, (inst, (lo, hi)) in tracks.items():
            for k in range(3 if name == "PIANO" else 2):
                start = (bar * 4 + k * 1.5 + rng.integers(0, 3) * 0.25) * beat
                inst.notes.append(pretty_midi.Note(int(rng.integers(20, 120)), int(rng.integers(lo, hi + 1)),
                                                   start, start + beat * float(rng.choice([0.5, 1.0, 2.0]))))
    drums = pretty_midi.Instrument(0, is_drum=True, name="Drums")
    drums.notes = [pretty_midi.Note(90, 36 + (i % 3) * 2, i * beat, i * beat + 0.1) for i in range(12)]
    pm.instruments = [t for t, _ in tracks.values()] + [drums]
    pm.write(str(path))
    return str(path)


def _notes(pm):
    """Sorted (pitch, start, end, velocity, is_drum) of every note."""
    return sorted((n.pitch, round(n.start, 9), round(n.end, 9), n.velocity, inst.is_drum)
                  for inst in pm.instruments for n in inst.notes)


@pytest.fixture(scope="module")
def melody_workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("melody"), MELODY, "melody,scratch")


def _args(**kwargs):
    defaults = dict(output=None, json=False, top=3, step="best", config_overrides=[])
    return argparse.Namespace(**{**defaults, **kwargs})


def test_predict_tokenizes_exactly_as_the_dataset_builders(tmp_path):
    import pathlib

    song = write_song(tmp_path / "song.mid")
    tok = inference.tokenize(song, L)
    assert len(tok.windows) >= 3 and tok.num_notes == NUM_NOTES
    # Sequence tasks and pre-training (workers.tokenize_piece) ...
    np.testing.assert_array_equal(tok.windows, workers.tokenize_piece(song, max_len=L, packing="piece").windows)
    # ... and the note tasks' labelling builder (labels.label_note_piece).
    patterns = tasks.parse_track_map("MELODY,BRIDGE,PIANO").patterns
    built = labels.label_note_piece(song, max_len=L, mode="track", patterns=patterns, unmapped="ignore")
    np.testing.assert_array_equal(tok.windows, built.windows)
    # The velocity task's input: blanked in the dataset and at the model input alike.
    velocity = labels.label_note_piece(song, max_len=L, mode="velocity", blank_velocity=True)
    np.testing.assert_array_equal(np.asarray(augment.blank_velocity(tok.windows)), velocity.windows)
    # Bytes and a parsed file give the same.
    np.testing.assert_array_equal(inference.tokenize(pathlib.Path(song).read_bytes(), L).windows, tok.windows)
    # note_order puts every row on its note: the track of each row's note is the builder's label.
    pm = tok.pm
    order = inference.note_order(pm, tok.rows)
    assert sorted(order) == sorted((i, j) for i, inst in enumerate(pm.instruments) for j in range(len(inst.notes)))
    names = {"MELODY": 0, "BRIDGE": 1, "PIANO": 2}
    track_labels = [names.get(pm.instruments[i].name, -1) for i, _ in order]
    np.testing.assert_array_equal(track_labels, tok.to_notes(built.labels))


def test_predict_melody_writes_every_note_once(tmp_path, melody_workdir, capsys):
    song = write_song(tmp_path / "song.mid")
    out = tmp_path / "tracks.mid"
    assert predict.run(_args(midi=__import__("pathlib").Path(song), workdir=melody_workdir, output=out)) == 0
    assert f"{NUM_NOTES} notes" in capsys.readouterr().out
    written = tokenizer.load_midi(out)  # a valid MIDI file
    names = {inst.name.removesuffix(" (drums)") for inst in written.instruments}
    assert names <= set(MELODY.class_names)
    assert all(inst.is_drum == inst.name.endswith("(drums)") for inst in written.instruments)
    assert _notes(written) == _notes(tokenizer.load_midi(song))  # every input note, exactly once
    # JSON summary; the class counts add up to the notes.
    assert predict.run(_args(midi=__import__("pathlib").Path(song), workdir=melody_workdir, output=out, json=True)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "melody" and sum(summary["class_counts"].values()) == summary["notes"] == NUM_NOTES


def test_predict_with_views_averages_the_shifted_cuts(tmp_path, melody_workdir):
    """views=2: each note's probabilities are the mean of the stored cut's and of a cut starting half a window in."""
    from midibert_jax.data import windows as windows_lib  # pylint: disable=import-outside-toplevel

    song = write_song(tmp_path / "song.mid")
    one = inference.Predictor.load(melody_workdir, views=1)
    two = inference.Predictor.load(melody_workdir, views=2)
    tok, plain = one.note_probabilities(song)
    _, averaged = two.note_probabilities(song)
    shifted = np.zeros_like(plain)
    for start, end in windows_lib.view_bounds(tok.rows[:, 0], L, L // 2):
        rows = tok.rows[start:end].copy()
        rows[:, 0] -= rows[0, 0]
        shifted[start:end] = one._run(one._probs, one.params, windows_lib.pad_window(rows, L)[None])[0, : end - start]
    np.testing.assert_allclose(averaged, (plain + shifted) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(averaged, plain)  # the second cut changes something


def test_split_tracks_and_velocities_follow_the_predictions(tmp_path):
    song = write_song(tmp_path / "song.mid")
    tok = inference.tokenize(song, L)
    order = inference.note_order(tok.pm, tok.rows)
    classes = np.arange(tok.num_notes) % 3
    split = inference.split_tracks(tok, classes, MELODY.class_names)
    expected = {}
    for (i, j), c in zip(order, classes):
        n = tok.pm.instruments[i].notes[j]
        expected.setdefault((MELODY.class_names[c], tok.pm.instruments[i].is_drum), []).append((n.pitch, n.start))
    for inst in split.instruments:
        got = sorted((n.pitch, n.start) for n in inst.notes)
        assert got == sorted(expected[(inst.name.removesuffix(" (drums)"), inst.is_drum)])

    values = inference.velocity_values(6)
    np.testing.assert_array_equal(values, [16, 40, 56, 72, 88, 112])
    np.testing.assert_array_equal(labels.velocity_class(values), np.arange(6))  # each value is in its class
    classes = np.arange(tok.num_notes) % 6
    pm = inference.with_velocities(tok, values[classes])
    for (i, j), c in zip(order, classes):
        assert pm.instruments[i].notes[j].velocity == values[c]
        assert pm.instruments[i].notes[j].start == tok.pm.instruments[i].notes[j].start
    assert [inst.name for inst in pm.instruments] == [inst.name for inst in tok.pm.instruments]


def test_predict_sequence_task_top_classes_and_embed(tmp_path, capsys):
    workdir = make_workdir(tmp_path / "composer", COMPOSER, "composer,scratch")
    song = __import__("pathlib").Path(write_song(tmp_path / "song.mid"))
    assert predict.run(_args(midi=song, workdir=workdir, json=True)) == 0
    summary = json.loads(capsys.readouterr().out)
    probs = [p["probability"] for p in summary["predictions"]]
    assert [p["class"] for p in summary["predictions"]] != [] and probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5) and summary["windows"] >= 3
    assert predict.run(_args(midi=song, workdir=workdir, top=2)) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3

    # embed: one hidden vector per note, in sorted-note order, the same every call.
    hidden = inference.embed(str(song), workdir)
    assert hidden.shape == (NUM_NOTES, 32) and hidden.dtype == np.float32 and np.isfinite(hidden).all()
    predictor = inference.Predictor.load(workdir)
    np.testing.assert_array_equal(predictor.embed(str(song)), hidden)
    tok = predictor.tokenize(str(song))
    first = np.asarray(predictor._hidden(predictor.params["encoder"], tok.windows[:1]))[0]
    np.testing.assert_allclose(hidden[: tok.bounds[0][1]], first[: tok.bounds[0][1]], rtol=1e-5, atol=1e-5)
    with pytest.raises(inference.NotAClassifierError, match="sequence-level"):
        predictor.note_probabilities(str(song))


def test_bad_inputs_are_clear_errors(tmp_path, melody_workdir):
    noteless = midi_factory.write_noteless(tmp_path / "silent.mid")
    with pytest.raises(tokenizer.EmptyMidiError, match=r"silent\.mid: no notes"):
        predict.run(_args(midi=noteless, workdir=melody_workdir))
    with pytest.raises(FileNotFoundError, match="nothing.mid: no such file"):
        predict.run(_args(midi=tmp_path / "nothing.mid", workdir=melody_workdir))
    song = __import__("pathlib").Path(write_song(tmp_path / "song.mid"))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(NoCheckpointError, match="empty_run: no checkpoint found"):
        predict.run(_args(midi=song, workdir=str(tmp_path / "empty_run")))
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        inference.embed(str(song), str(tmp_path / "no_such_run"))
