"""The `midibert-jax` console commands, run in-process through `cli.main`."""

import json

import numpy as np
import pretty_midi

from midibert_jax import cli
from midibert_jax.tokenizer import encode, load_midi


def _song(path):
    pm = pretty_midi.PrettyMIDI(resolution=96)
    for program in (0, 40):
        inst = pretty_midi.Instrument(program)
        inst.notes = [pretty_midi.Note(90, 60 + program % 12 + i % 7, 0.25 * i, 0.25 * i + 0.2) for i in range(40)]
        pm.instruments.append(inst)
    pm.write(str(path))
    return path


def test_tokenize_then_detokenize_round_trips(tmp_path, capsys):
    song = _song(tmp_path / "song.mid")
    assert cli.main(["tokenize", str(song), "-o", str(tmp_path / "song.npy")]) == 0
    rows = np.load(tmp_path / "song.npy")
    np.testing.assert_array_equal(rows, encode(load_midi(song)))
    assert cli.main(["detokenize", str(tmp_path / "song.npy"), "-o", str(tmp_path / "back.mid")]) == 0
    np.testing.assert_array_equal(encode(load_midi(tmp_path / "back.mid")), rows)
    out = capsys.readouterr().out
    assert "80 notes" in out and "back.mid" in out


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not midi at all")
    assert cli.main(["tokenize", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.mid" in err and "not a Standard MIDI File" in err and "Traceback" not in err
    junk = tmp_path / "junk.npy"
    np.save(junk, np.zeros((4, 3), np.int32))
    assert cli.main(["detokenize", str(junk)]) == 2
    assert "junk.npy" in capsys.readouterr().err


def test_commands_import_no_jax_until_they_run():
    """`--devices` of compile-check must be set before jax loads; building the parser must not load it."""
    import subprocess
    import sys

    code = "import sys; from midibert_jax import cli; cli.build_parser(); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_demo_lines_up_the_adversarial_and_random_curves(tmp_path):
    from midibert_jax import demo  # pylint: disable=import-outside-toplevel

    # The adversarial run logged the old metric names, the random one the new: both line up.
    for name, key, points in (("adv", "eval/acc/mean", [(50, 0.3), (100, 0.5)]),
                              ("rnd", "eval/accuracy", [(50, 0.2), (100, 0.4), (150, 0.45)])):
        (tmp_path / name).mkdir()
        lines = [f'{{"step": {s}, "{key}": {v}}}' for s, v in points] + ['{"step": 60, "loss/total": 1.0}']
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    curves = demo.curves({"adversarial": str(tmp_path / "adv"), "random": str(tmp_path / "rnd")})
    assert curves == [(50, {"adversarial": 0.3, "random": 0.2}), (100, {"adversarial": 0.5, "random": 0.4}),
                      (150, {"random": 0.45})]


def test_the_tasks_validation_and_test_pieces_are_held_out(tmp_path):
    from midibert_jax import experiment  # pylint: disable=import-outside-toplevel

    rows = [{"path": "a/x.abc#1", "split": "train"}, {"path": "a/x.abc#2", "split": "validation"},
            {"path": "b/y.mxl", "split": "test"}, {"path": "b/z.mxl", "split": None}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps({"piece_id": i, **r}) + "\n" for i, r in enumerate(rows)))
    assert experiment.held_out_pieces(tmp_path) == {"a/x.abc#2", "b/y.mxl"}


def test_user_errors_of_every_layer_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import pytest

    from midibert_jax.commands import tokenize
    from midibert_jax.config_loading import ConfigError
    from midibert_jax.data import errors
    from midibert_jax.tokenizer import MidiReadError

    def failing(error):
        def run(args):
            raise error
        return run

    user_errors = [ConfigError("unknown key train.stepz"), errors.DatasetNotFoundError("POP909: folder /x is missing"),
                   errors.DatasetBusyError("dataset /d is being built by pid 7"), MidiReadError("truncated", "/a.mid"),
                   errors.SplitNotFoundError("/d: no split 'test'")]
    for error in user_errors:
        monkeypatch.setattr(tokenize, "run", failing(error))
        assert cli.main(["tokenize", "a.mid"]) == 2
        err = capsys.readouterr().err
        assert err == f"midibert-jax tokenize: error: {error}\n"
    monkeypatch.setattr(tokenize, "run", failing(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["tokenize", "a.mid"])
