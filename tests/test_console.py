"""What long work prints (midibert_jax.console): bars on a terminal, a few lines anywhere else."""

import io
import logging

import pytest
import tqdm
from absl import logging as absl_logging

from midibert_jax import cli, console
from midibert_jax.data.builders import corpus


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _stage(total, seconds_per_step, **kwargs):
    """Runs a fake stage of `total` steps through `console.Lines`; returns what it printed."""
    clock, out = Clock(), io.StringIO()
    lines = console.Lines(total, "pretrain", out=out, clock=clock, **kwargs)
    for _ in range(total):
        clock.now += seconds_per_step
        lines.update(1)
        lines.set_postfix(loss="0.500")
    lines.close()
    return out.getvalue()


def test_rate_meter_steps_per_second_and_eta():
    clock = Clock()
    meter = console.RateMeter(total=100, initial=10, clock=clock)
    clock.now += 10.0
    r = meter.update(30)
    assert r["steps_per_sec"] == pytest.approx(2.0) and r["eta_sec"] == pytest.approx(35.0)


def test_a_long_stage_prints_a_few_lines_with_rate_and_time_left():
    text = _stage(1000, 1.2, initial=0)  # 20 minutes
    assert "\r" not in text
    lines = text.splitlines()
    # After 1, 2, 4, 8 and 16 minutes (then every 10), and at the end.
    assert len(lines) == 6, lines
    assert lines[0] == "  pretrain: 50/1000 steps (5%) after 1 min 00 s, 0.833 steps/s, about 19 min 00 s left, loss=0.500"
    assert [line.split(" after ")[1].split(",")[0] for line in lines[:5]] == [
        "1 min 00 s", "2 min 00 s", "4 min 00 s", "8 min 00 s", "16 min 00 s"]
    assert lines[-1] == "  pretrain: 1000/1000 steps in 20 min 00 s (0.833 steps/s), loss=0.500"


def test_a_short_stage_is_one_line_or_none_when_its_caller_reports_it():
    assert _stage(100, 0.1).splitlines() == ["  pretrain: 100/100 steps in 10 s (10 steps/s), loss=0.500"]
    assert _stage(100, 0.1, leave=False) == ""  # e.g. one fine-tuning run of an experiment
    assert len(_stage(100, 1.0, leave=False).splitlines()) == 2  # ran long enough to report: closed too
    assert _stage(100, 0.1, enabled=False) == ""  # another process than 0
    assert _stage(0, 0.1) == ""  # nothing done (a finished run resumed)


def test_the_mode_follows_the_terminal_unless_the_environment_says(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv(console.PROGRESS_ENV, raising=False)
    assert console.mode(Terminal()) == "bars" and console.mode(io.StringIO()) == "lines"
    monkeypatch.setenv(console.PROGRESS_ENV, "off")
    assert console.mode(Terminal()) == "off"
    off = console.progress(10, "quiet")
    assert isinstance(off, console.Lines) and off.disable
    monkeypatch.setenv(console.PROGRESS_ENV, "bars")
    assert isinstance(console.progress(10, "bar", enabled=False), tqdm.std.tqdm)
    monkeypatch.setenv(console.PROGRESS_ENV, "sometimes")
    with pytest.raises(console.ProgressModeError, match="MIDIBERT_JAX_PROGRESS='sometimes': must be one of bars, lines, off"):
        console.mode()


def test_seconds_read_as_people_say_them():
    assert [console.format_seconds(s) for s in (4.25, 42, 185, 7620, float("inf"))] == [
        "4.2 s", "42 s", "3 min 05 s", "2 h 07 min", "?"]


def test_only_the_named_notice_is_dropped_and_only_inside_the_block(caplog):
    with caplog.at_level(logging.WARNING):
        with console.dropped_log_messages("absl", "Using custom data configuration"):
            absl_logging.warning("Using custom data configuration: %s", "Config(a very long repr)")
            absl_logging.warning("something else")
        absl_logging.warning("Using custom data configuration: %s", "after the block")
    assert [r.getMessage() for r in caplog.records] == [
        "something else", "Using custom data configuration: after the block"]


def test_a_builder_with_a_custom_config_prints_no_config_repr(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        corpus.MidiFolder(config=corpus.folder_config(str(tmp_path), max_len=32), data_dir=tmp_path / "tfds")
    assert not [r for r in caplog.records if "custom data configuration" in r.getMessage()]


def test_a_build_outside_a_terminal_prints_a_few_lines_and_no_redraws(midi_corpus, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(console.PROGRESS_ENV, raising=False)
    folder, _ = midi_corpus
    argv = ["prepare", "--config", "configs/prepare.py:folder", f"--config.folder={folder}",
            f"--config.data_dir={tmp_path}", "--config.num_workers=1", "--config.max_len=16"]  # progress on (default)
    assert cli.main(argv) == 0
    out, err = capfd.readouterr()  # both file descriptors: workers and third-party loggers included
    assert "\r" not in out + err and "\x1b[" not in out + err  # no redraws, no terminal colours
    assert "custom data configuration" not in err and "Downloading and preparing" not in out
    lines = out.splitlines()
    assert lines[0].startswith("Building midi_folder/") and lines[1].startswith("  Tokenizing midi_folder: 13/13 files in ")
    assert lines[2].startswith("midi_folder/") and "9 of 15 files tokenized" in lines[2]  # the build's summary
    assert lines[3].endswith(": 15 input files") and err == "", out  # then the command's full summary, once
    assert out.count("ok 9, skipped 4, duplicate 1, ignored 1") == 1
