"""The paper's task datasets on real files (../shared/data): bad inputs named in the build summary, and
`configs/experiment.py:paper` end to end on three or four files per task.

Every file a build leaves out (skipped, duplicate, ignored) and every listed file it did not find is
named with its reason in `midibert-jax prepare`'s output, up to ten per kind (the rest counted, all of
them in manifest.jsonl / task_info.json); a folder with nothing usable fails with exit status 2 and
an error line that names what it found.

The experiment: one seed of the adversarial and none arms, a tiny encoder on 32-note windows, 4
pre-training and 2 fine-tuning steps, on the train / validation / test files of each task plus one
POP1K7 cover; 95-110 s of CPU (about 100 s of wall time on 2 cores).
"""

from __future__ import annotations

import json
import pathlib
import resource
import shutil
import subprocess
import sys

import pytest

import pretrain_helpers as ph
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


# ----------------------------------------------------------------------------- the paper experiment, end to end


PAPER_CONFIG = '''
"""configs/experiment.py:paper at smoke size on a few real files per task (written by tests/test_paper_tasks.py)."""
from configs.experiment import get_config as experiment_config


def get_config(arg=None):
    config = experiment_config("paper,quick")  # one seed, fraction 1.0
    config.arms = ("adversarial", "none")
    for dataset, root in {roots!r}.items():
        config.roots[dataset] = root
    config.pretrain.extra_folders = ({extra!r},)
    tiny = {{"hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64, "field_embed_dim": 16,
            "head_hidden": 32}}
    pre = config.pretrain.overrides
    pre.model.update(tiny)
    pre.data.update({{"max_len": 32, "data_dir": {data_dir!r}, "num_workers": 1, "progress": False, "batch_size": 8,
                     "eval_batch_size": 8, "read_threads": 1, "prefetch": 1, "valid_fraction": 0.2}})
    pre.train.update({{"steps": 4, "eval_every": 4, "checkpoint_every": 4, "log_every": 2}})
    ft = config.finetune.overrides
    ft.train.update({{"steps": 2, "eval_every": 2, "log_every": 1}})
    ft.data.update({{"batch_size": 4, "eval_batch_size": 8, "read_threads": 1, "prefetch": 1, "data_dir": {data_dir!r},
                    "num_workers": 1, "progress": False}})
    return config
'''
# Per task dataset, the real files copied (listed names, small ones): every split of every task has one, and
# the sequence tasks' training splits two classes.
PAPER_FILES = {
    "pop909": {"train": ["098.mid", "331.mid"], "valid": ["447.mid"], "test": ["161.mid"]},
    "pianist8": {"train": ["Einaudi/Einaudi_Canzone_popolare.mid", "Ryuichi/Ryuichi_Tamago_2004.mid"],
                 "valid": ["Ryuichi/Ryuichi_Women_Without_Name.mid"], "test": ["Ryuichi/Ryuichi_Aoneko_no_Torso.mid"]},
    "emopia": {"train": ["Q3_BzqX-9TA-GY_0.mid", "Q4_ldCQ6N9G6Mk_0.mid"], "valid": ["Q3_pbVGv_g4n50_0.mid"],
               "test": ["Q4_ltxNPJda7zE_0.mid"]},
}
PAPER_TASKS = {"melody": "pop909", "velocity": "pop909", "composer": "pianist8", "emotion": "emopia"}


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    roots = {}
    for dataset, splits in PAPER_FILES.items():
        for split, names in splits.items():
            assert set(names) <= set(SPLITS[dataset][split]), (dataset, split)
            roots[dataset] = str(copy_release(root / dataset, dataset, names))
    extra = root / "POP1K7"
    extra.mkdir()
    shutil.copy(shared_data("POP1K7", "midi_synchronized", "src_001", "0.mid"), extra / "0.mid")
    config = root / "paper_smoke.py"
    config.write_text(PAPER_CONFIG.format(roots=roots, extra=str(extra), data_dir=str(root / "tfds")))
    workdir = root / "exp"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # 95-110 s of CPU (empty compilation cache); the timeout only stops a hung run.
    result = subprocess.run([sys.executable, "-m", "midibert_jax.cli", "experiment", "--config", str(config),
                             "--workdir", str(workdir)], env=ph.subprocess_env(1, root / "jax_cache"),
                            capture_output=True, text=True, timeout=1800, cwd=str(ph.REPO))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    log = f"{result.stdout}{result.stderr}\nCPU seconds: {cpu:.1f}\n"
    (root / "experiment.log").write_text(log, encoding="utf-8")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"report": json.loads((workdir / "experiment.json").read_text()), "out": result.stdout,
            "workdir": workdir, "data_dir": root / "tfds", "roots": roots, "extra": str(extra)}


@pytest.mark.slow
def test_the_paper_experiment_runs_end_to_end_on_real_files(paper):
    report, out = paper["report"], paper["out"]
    assert (report["planned_runs"], report["finished_runs"], report["complete"], report["stopped"]) == (8, 8, True, "")
    assert report["missing"] == [] and "PARTIAL" not in out
    arms = ("adversarial", "none")
    assert {(r["task"], r["arm"]) for r in report["runs"]} == {(t, a) for t in PAPER_TASKS for a in arms}
    for r in report["runs"]:
        assert (r["seed"], r["protocol"], r["fraction"], r["best_step"]) == (0, "finetune", 1.0, 2)
        assert 0.0 <= r["test"]["accuracy"] <= 1.0
        assert ("piece_accuracy" in r["test"]) == (tasks.get_task(r["task"]).level == tasks.SEQUENCE)
        # Each task read its dataset from `roots`, on the pre-trained encoder's architecture and windows.
        config = json.loads(pathlib.Path(r["workdir"], "config.json").read_text())
        assert config["data"]["root"] == paper["roots"][PAPER_TASKS[r["task"]]]
        assert (config["model"]["hidden_size"], config["data"]["max_len"]) == (32, 32)
    [pre] = report["pretrain"]
    assert (pre["arm"], pre["finished"], pre["steps"]) == ("adversarial", True, 4)
    data = json.loads(pathlib.Path(pre["workdir"], "experiment_run.json").read_text())["config"]["data"]
    assert (data["dataset"], data["task_roots"], data["extra_folders"]) == ("tasks", paper["roots"], [paper["extra"]])
    # The baselines of every task on its test split: majority everywhere, the skyline for melody, the
    # per-window feature classifier for the sequence tasks.
    for task in PAPER_TASKS:
        names = set(report["baselines"][task]["baselines"])
        expected = {"majority"} | ({"skyline"} if task == "melody" else set()) | (
            {"features"} if tasks.get_task(task).level == tasks.SEQUENCE else set())
        assert names == expected, task
        assert 0.0 <= report["baselines"][task]["baselines"]["majority"]["accuracy"] <= 1.0
    assert {(v["task"], v["a"], v["b"]) for v in report["verdicts"]} == {(t, *arms) for t in PAPER_TASKS}
    assert "verdicts (test accuracy" in out and "baselines on the same test split: majority" in out
    for name in ("experiment.png", "experiment_time.png"):
        assert (paper["workdir"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_paper_pretraining_corpus_holds_no_validation_or_test_file(paper):
    [corpus] = list((paper["data_dir"] / "task_train_corpus").glob("*/1.0.0"))
    records = {r.path: r for r in manifest.Manifest.load(corpus).records}
    ok = {path for path, r in records.items() if r.status == "ok"}
    train = {f"{d}/{inner_path(d, n)}" for d, splits in PAPER_FILES.items() for n in splits["train"]}
    assert ok == train | {"POP1K7/0.mid"}
    for dataset, splits in PAPER_FILES.items():
        for split in ("valid", "test"):
            for name in splits[split]:
                r = records[f"{dataset}/{inner_path(dataset, name)}"]
                assert (r.status, r.error_kind) == ("ignored", "held_out"), r
    # Cross-checked with the fine-tuning datasets the experiment built: none of their validation or test
    # pieces (by content) is in the corpus, and every one of them is held out.
    evaluated = set()
    for builder in ("pop909_melody", "pop909_velocity", "pianist8_composer", "emopia_emotion"):
        [dataset_dir] = list((paper["data_dir"] / builder).glob("*/1.0.0"))
        records_ = manifest.Manifest.load(dataset_dir).records
        evaluated |= {r.sha256 for r in records_ if r.split in ("validation", "test")}
    assert len(evaluated) == 6
    assert not evaluated & {r.sha256 for r in records.values() if r.status == "ok"}
    assert evaluated == {r.sha256 for r in records.values() if r.error_kind == "held_out"}
