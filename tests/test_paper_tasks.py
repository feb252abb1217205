"""The paper's task datasets on real files (../shared/data): bad inputs named in the build summary.

Every file a build leaves out (skipped, duplicate, ignored) and every listed file it did not find is
named with its reason in `midibert-jax prepare`'s output, up to ten per kind (the rest counted, all of
them in manifest.jsonl / task_info.json); a folder with nothing usable fails with exit status 2 and
an error line that names what it found.
"""

from __future__ import annotations

import pathlib
import shutil

from conftest import shared_data
from midibert_jax import cli
from midibert_jax.data import manifest, tasks
from midibert_jax.data.builders import task_base
from real_tasks import SPLITS, copy_release, inner_path, listed, midi_folder


def _prepare(task: str, root: pathlib.Path, tmp_path: pathlib.Path, capsys) -> tuple[int, str, str]:
    """`midibert-jax prepare` of a task dataset in this process: (exit status, stdout, stderr)."""
    code = cli.main(["prepare", "--config", f"configs/finetune_data.py:{task}", f"--config.root={root}",
                     f"--config.data_dir={tmp_path / 'tfds'}", "--config.max_len=64", "--config.progress=False",
                     "--config.num_workers=1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _missing_lines_are_named(out: str, dataset: str, present: set[str]) -> None:
    """The first ten listed files that are not in the folder are named with their split, the rest counted."""
    split_of = {name: task_base.SPLIT_FILE_KEYS[key] for key in ("train", "valid", "test")
                for name in SPLITS[dataset][key]}
    missing = sorted(set(split_of) - present)
    for name in missing[:10]:
        assert f"  missing ({split_of[name]}) {name}: listed in MidiBERT-Piano's official split lists, not in the " \
               "dataset folder\n" in out, name
    assert f"  ... and {len(missing) - 10} more missing (see task_info.json)\n" in out


def _dataset_dir(out: str) -> pathlib.Path:
    return pathlib.Path(next(line for line in out.splitlines() if line.startswith("  manifest: "))
                        .removeprefix("  manifest: ")).parent


def test_left_out_files_are_named_up_to_ten_per_kind():
    """A handful of problems: every one named; thousands (a full POP909 clone's 6,579 non-song files): ten, a count."""
    records = [manifest.FileRecord(i, f"{i:03d}/versions/v.mid", status="ignored", reason="not a POP909 song file",
                                   error_kind="layout") for i in range(6579)]
    records += [manifest.FileRecord(7000 + i, f"bad{i}.mid", status="skipped", reason="empty file",
                                    error_kind="unreadable") for i in range(3)]
    records += [manifest.FileRecord(8000, "copy.mid", status="duplicate", reason="identical to 001/001.mid",
                                    error_kind="duplicate"), manifest.FileRecord(8001, "001/001.mid")]
    lines = manifest.left_out_lines(records, limit=10)
    assert lines[:4] == [f"skipped (unreadable) bad{i}.mid: empty file" for i in range(3)] + [
        "duplicate copy.mid: identical to 001/001.mid"]
    assert lines[4:14] == [f"ignored (layout) {i:03d}/versions/v.mid: not a POP909 song file" for i in range(10)]
    assert lines[14:] == ["... and 6569 more ignored (layout) (see manifest.jsonl)"]
    info = {"split_source": "the lists", "listed_missing_files": [["a.mid", "train"], ["b.mid", "test"]]}
    assert task_base.missing_lines(info) == ["missing (train) a.mid: listed in the lists, not in the dataset folder",
                                             "missing (test) b.mid: listed in the lists, not in the dataset folder"]
    assert task_base.missing_lines({**info, "listed_missing_files": [[f"{i}.mid", "train"] for i in range(12)]})[-1] \
        == "... and 2 more missing (see task_info.json)"
    old_build = {"split_source": "the lists", "listed_missing": 3, "listed_missing_examples": ["a.mid"]}
    assert task_base.missing_lines(old_build) == [
        "missing 3 file(s) listed in the lists (rebuild with --config.overwrite=True to have them named)"]


def test_pop909_bad_inputs_are_reported_by_name(tmp_path, capsys):
    """Real songs, one without its MELODY track, a non-song MIDI, and most listed songs missing."""
    import pretty_midi

    root = tmp_path / "POP909"
    songs = listed("pop909", "train", 2) + listed("pop909", "valid", 1) + listed("pop909", "test", 1)
    copy_release(root, "pop909", songs)
    no_melody = root / inner_path("pop909", songs[1])
    pm = pretty_midi.PrettyMIDI(str(no_melody))
    pm.instruments = [i for i in pm.instruments if i.name.upper() != "MELODY"]
    pm.write(str(no_melody))
    shutil.copy(shared_data("POP1K7", "midi_synchronized", "src_001", "1.mid"), root / "bonus_track.mid")
    code, out, err = _prepare("melody", root, tmp_path, capsys)
    assert code == 0 and "Traceback" not in out + err
    assert (f"  skipped (missing_track) {inner_path('pop909', songs[1])}: no MELODY track with notes "
            "(tracks: ['BRIDGE', 'PIANO'])\n") in out
    assert "  ignored (layout) bonus_track.mid: not a POP909 song file" in out
    assert "861 of the 865 files of MidiBERT-Piano's official split lists are not in" in out
    _missing_lines_are_named(out, "pop909", set(songs))
    assert "ok 3, skipped 1, duplicate 0, ignored 1" in out


def test_pianist8_unknown_composer_empty_and_missing_files_are_named(tmp_path, capsys):
    root = tmp_path / "Pianist8"
    pieces = listed("pianist8", "train", 3, "Einaudi/") + listed("pianist8", "valid", 1, "Einaudi/") + \
        listed("pianist8", "test", 1, "Einaudi/")
    copy_release(root, "pianist8", pieces)
    midi = midi_folder(root, "pianist8")
    (midi / pieces[2]).write_bytes(b"")  # a listed file truncated to nothing
    (midi / "Mozart").mkdir()
    other_piece = shared_data("Pianist8", "midi", listed("pianist8", "train", 1, "Yiruma/")[0])
    shutil.copy(other_piece, midi / "Mozart" / "Mozart_x.mid")
    code, out, err = _prepare("composer", root, tmp_path, capsys)
    assert code == 0 and "Traceback" not in out + err
    assert f"  skipped (unreadable) {pieces[2]}: empty file\n" in out
    assert "  ignored (layout) Mozart/Mozart_x.mid: 'Mozart' is not a composer of this task (Bethel, Clayderman, " \
           "Einaudi, Hancock, Hillsong, Hisaishi, Ryuichi, Yiruma)\n" in out
    _missing_lines_are_named(out, "pianist8", set(pieces))
    assert "  ok 4, skipped 1, duplicate 0, ignored 1\n" in out
    # Nothing dropped silently: every file under the folder has its record; task_info.json has every missing name.
    dataset_dir = _dataset_dir(out)
    records = manifest.Manifest.load(dataset_dir).records
    assert sorted(r.path for r in records) == sorted(str(p.relative_to(midi)) for p in midi.rglob("*") if p.is_file())
    info = tasks.load_task_info(dataset_dir)
    assert info["listed_missing"] == len(info["listed_missing_files"]) == 411 - 5
    assert {p for p, _ in info["listed_missing_files"]}.isdisjoint(pieces)


def test_emopia_clip_without_quadrant_and_empty_clip_are_named(tmp_path, capsys):
    root = tmp_path / "EMOPIA_1.0"
    clips = listed("emopia", "train", 3, "Q4") + listed("emopia", "valid", 1, "Q4") + listed("emopia", "test", 1, "Q4")
    copy_release(root, "emopia", clips)
    midis = midi_folder(root, "emopia")
    (midis / clips[1]).write_bytes(b"")
    unlabelled = listed("emopia", "train", 1, "Q1")[0].removeprefix("Q1_")  # the clip's name without its Q1_ prefix
    shutil.copy(shared_data("EMOPIA_1.0", "midis", "Q1_" + unlabelled), midis / unlabelled)
    code, out, err = _prepare("emotion", root, tmp_path, capsys)
    assert code == 0 and "Traceback" not in out + err
    assert f"  skipped (unreadable) {clips[1]}: empty file\n" in out
    assert f"  ignored (layout) {unlabelled}: not an EMOPIA clip of classes ['Q1', 'Q2', 'Q3', 'Q4']" in out
    _missing_lines_are_named(out, "emopia", set(clips))
    assert "  ok 4, skipped 1, duplicate 0, ignored 1\n" in out


def test_a_folder_with_nothing_usable_fails_in_one_line(tmp_path, capsys):
    """Exit 2 and no traceback; the error's first line names the files found and why none could be used."""
    only_unknown = tmp_path / "unknown"
    (only_unknown / "midi" / "Mozart").mkdir(parents=True)
    piece = shared_data("Pianist8", "midi", listed("pianist8", "train", 1)[0])
    shutil.copy(piece, only_unknown / "midi" / "Mozart" / "K545.mid")
    code, out, err = _prepare("composer", only_unknown, tmp_path, capsys)
    assert code == 2 and "Traceback" not in out + err
    assert err.splitlines()[0] == (
        f"midibert-jax prepare: error: pianist8_composer: no usable MIDI file in {only_unknown / 'midi'} (1 file(s), "
        "none usable: Mozart/K545.mid ('Mozart' is not a composer of this task (Bethel, Clayderman, Einaudi, Hancock, "
        "Hillsong, Hisaishi, Ryuichi, Yiruma))). Expected layout:")

    empty_train = tmp_path / "empty_train"
    train, test = listed("emopia", "train", 2), listed("emopia", "test", 1)
    copy_release(empty_train, "emopia", train + test)
    for name in train:
        (midi_folder(empty_train, "emopia") / name).write_bytes(b"")
    code, out, err = _prepare("emotion", empty_train, tmp_path, capsys)
    assert code == 2 and "Traceback" not in out + err
    assert err == (f"midibert-jax prepare: error: emopia_emotion: no usable piece in the train split of "
                   f"{midi_folder(empty_train, 'emopia')}: {train[0]} (empty file); "
                   f"{train[1]} (identical to {train[0]})\n")

