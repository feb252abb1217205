"""TFDS builders: manifests over broken folders, Beam == local, the demo corpus, `prepare`."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from conftest import TEST_MAX_LEN
from midibert_jax import cli, tokenizer
from midibert_jax.commands import prepare
from midibert_jax.data import demo_corpus, manifest, windows, workers
from midibert_jax.data.builders import common, corpus, task_kinds
from midibert_jax.data.errors import BuildError
from midibert_jax.tokenizer import vocab

import midi_factory


# -- the worker pool -------------------------------------------------------------------------


def pool_task(x):
    """Module-level so that spawned workers can import it."""
    if x == "hang":
        time.sleep(60)
    if x == "die":
        os._exit(3)
    if x == "raise":
        raise ValueError("bad item")
    return x * 2


def test_worker_pool_survives_hangs_crashes_and_exceptions():
    items = ["a", "hang", "b", "die", "raise", "c"]
    start = time.monotonic()
    with workers.WorkerPool(pool_task, num_workers=2, timeout=3) as pool:
        outcomes = list(pool.imap(items))
        assert pool.replaced == 2
        assert pool.run("z").value == "zz"  # replaced workers keep serving
    assert time.monotonic() - start < 30
    assert [o.item for o in outcomes] == items  # in input order
    by_item = {o.item: o for o in outcomes}
    assert by_item["a"].value == "aa" and by_item["c"].value == "cc"
    assert by_item["hang"].error == workers.TIMEOUT and "3 s" in by_item["hang"].message
    assert by_item["die"].error == workers.WORKER_CRASH and "exit code 3" in by_item["die"].message
    assert by_item["raise"].error == workers.EXCEPTION and "ValueError: bad item" in by_item["raise"].message


def test_failed_outcomes_become_skipped_records():
    inp = common.InputFile(piece_id=3, name="x.mid", path="/x.mid", sha256="ab", size=1, split="train")
    for error, kind in [(workers.TIMEOUT, "timeout"), (workers.WORKER_CRASH, "worker_crash"), (workers.EXCEPTION, "internal_error")]:
        record, result = common.record_from_outcome(inp, workers.Outcome("/x.mid", error=error, message="boom\ntrace"), "piece")
        assert result is None and record.status == "skipped" and record.error_kind == kind and record.reason == "boom"
        assert record.path == "x.mid" and record.piece_id == 3


# -- the folder builder ----------------------------------------------------------------------


def test_folder_build_writes_a_complete_manifest(built_folder_dataset, midi_corpus):
    folder, expected = midi_corpus
    built = manifest.Manifest.load(built_folder_dataset.data_path)
    assert {r.path: r.status for r in built.records} == expected  # every input file, nothing silent
    assert [r.piece_id for r in built.records] == list(range(len(expected)))
    for r in built.records:
        if r.status == "ok":
            assert r.sha256 and r.split in ("train", "validation") and r.num_windows > 0 and r.num_notes > 0
        else:
            assert r.reason and r.error_kind, r
    kinds = {r.path: r.error_kind for r in built.records}
    assert kinds["broken/empty.mid"] == "unreadable" and kinds["broken/noteless.MID"] == "no_notes"
    by_path = {r.path: r for r in built.records}
    assert by_path["copies/same_as_piece_00.mid"].reason == "identical to b/piece_00.mid"
    assert by_path["copies/same_as_piece_00.mid"].split == by_path["b/piece_00.mid"].split
    assert any("300 bars" in n for n in by_path["long.midi"].notes)
    summary = built_folder_dataset.summary
    assert summary["status"] == {"ok": 9, "skipped": 4, "duplicate": 1, "ignored": 1}
    assert summary["examples"] == {s: summary["splits"][s]["windows"] for s in ("train", "validation")}
    text = manifest.format_summary(summary)
    assert "skipped 4" in text and "validation" in text
    assert (built_folder_dataset.data_path / manifest.SUMMARY_FILENAME).exists()


def test_a_split_past_the_writer_buffer_spills_to_disk_without_tensorflow(built_folder_dataset, midi_corpus,
                                                                          tmp_path, monkeypatch):
    # TFDS moves a split's examples to bucket files past its memory buffer, through tf.io.gfile: without
    # TensorFlow a large build died there. A zero buffer spills every example; the shards must not change.
    import importlib.util

    from tensorflow_datasets.core import shuffle

    assert importlib.util.find_spec("tensorflow") is None  # the project's install has no TensorFlow
    spilled = []
    add = shuffle._Bucket.add  # pylint: disable=protected-access
    monkeypatch.setattr(shuffle._Bucket, "add", lambda self, key, data: (spilled.append(key), add(self, key, data)))
    monkeypatch.setattr(common, "WRITER_BUFFER_MB", 0)
    folder, _ = midi_corpus
    builder = corpus.MidiFolder(config=corpus.folder_config(folder, max_len=TEST_MAX_LEN, valid_fraction=0.3, seed=0),
                                data_dir=tmp_path, options=common.BuildOptions(num_workers=1, timeout=30, progress=False))
    builder.download_and_prepare()
    assert len(spilled) == sum(built_folder_dataset.summary["examples"].values())
    assert shuffle.MAX_MEM_BUFFER_SIZE == 1000 << 20 and shuffle.tf is not common._PLAIN_FILE_TF  # restored
    for split in ("train", "validation"):
        ours, reference = (common.load_data_source(b.data_path, split) for b in (builder, built_folder_dataset))
        assert len(ours) == len(reference)
        for i in range(len(ours)):
            assert all(np.array_equal(ours[i][k], reference[i][k]) for k in ("tokens", "index", "piece_id", "window"))


def test_a_byte_copy_of_a_skipped_file_is_reported_skipped_by_its_own_name():
    # Two identical corrupt files: the second must not hide behind "duplicate" (nothing tokenized it, but it
    # is just as broken, and a user looks for it by name); a copy of a good file stays a duplicate.
    records = [
        manifest.FileRecord(0, "corrupt/empty_1.mid", sha256="e", status="skipped", reason="empty file",
                            error_kind="unreadable"),
        manifest.FileRecord(1, "good.mid", sha256="g"),
        manifest.FileRecord(2, "corrupt/empty_2.mid", sha256="e", status="duplicate",
                            reason="identical to corrupt/empty_1.mid", error_kind="duplicate"),
        manifest.FileRecord(3, "copy_of_good.mid", sha256="g", status="duplicate", reason="identical to good.mid",
                            error_kind="duplicate"),
    ]
    built = manifest.Manifest(records)
    by_path = {r.path: r for r in built.records}
    assert by_path["corrupt/empty_2.mid"].status == "skipped"
    assert by_path["corrupt/empty_2.mid"].reason == "empty file (a byte copy of corrupt/empty_1.mid)"
    assert by_path["corrupt/empty_2.mid"].error_kind == "unreadable"
    assert by_path["copy_of_good.mid"].status == "duplicate"
    assert built.summary()["status"] == {"ok": 1, "skipped": 2, "duplicate": 1, "ignored": 0}


def test_folder_build_examples(built_folder_dataset, midi_corpus):
    folder, _ = midi_corpus
    records = {r.piece_id: r for r in manifest.Manifest.load(built_folder_dataset.data_path).records}
    for split in ("train", "validation"):
        source = common.load_data_source(built_folder_dataset.data_path, split)
        examples = sorted((source[i] for i in range(len(source))), key=lambda e: int(e["index"]))
        assert [int(e["index"]) for e in examples] == list(range(len(source)))
        tokens = np.stack([e["tokens"] for e in examples])
        assert tokens.shape == (len(source), TEST_MAX_LEN, 8) and tokens.dtype == np.int32
        real = ~np.all(tokens == vocab.PAD_ROW, axis=-1)
        assert np.all(tokens[..., 0][real] < vocab.MAX_BARS)
        assert np.all(tokens < np.asarray(vocab.VOCAB_SIZES))
        # (piece_id, window) runs in order and matches the tokenizer's windows of that file.
        keys = [(int(e["piece_id"]), int(e["window"])) for e in examples]
        assert keys == sorted(keys)
        for piece_id in {k[0] for k in keys}:
            record = records[piece_id]
            assert record.split == split
            expect = windows.piece_windows(tokenizer.encode_file(folder / record.path), TEST_MAX_LEN)
            got = np.stack([e["tokens"] for e in examples if int(e["piece_id"]) == piece_id])
            np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("packing", ["piece", "reference"])
def test_beam_direct_runner_build_equals_local_build(midi_corpus, tmp_path, packing):
    import apache_beam as beam
    import tensorflow_datasets as tfds

    folder, _ = midi_corpus
    config = corpus.folder_config(folder, max_len=TEST_MAX_LEN, packing=packing, valid_fraction=0.3, seed=0)
    options = common.BuildOptions(num_workers=2, timeout=30, progress=False)
    local = corpus.MidiFolder(config=config, data_dir=tmp_path / "local", options=options)
    local.download_and_prepare()
    on_beam = corpus.MidiFolder(config=config, data_dir=tmp_path / "beam", options=options)
    on_beam.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            beam_runner=beam.runners.DirectRunner(), beam_options=beam.options.pipeline_options.PipelineOptions([])
        )
    )
    for split in ("train", "validation"):
        a = common.load_data_source(local.data_path, split)
        b = common.load_data_source(on_beam.data_path, split)
        assert len(a) == len(b) > 0
        ea = sorted((a[i] for i in range(len(a))), key=lambda e: int(e["index"]))
        eb = sorted((b[i] for i in range(len(b))), key=lambda e: int(e["index"]))
        for x, y in zip(ea, eb):
            for key in ("tokens", "index", "piece_id", "window"):
                np.testing.assert_array_equal(x[key], y[key])
    assert not [p.name for p in on_beam.data_path.iterdir() if p.name.startswith("_")]  # temporary files removed
    strip = lambda m: [dict(vars(r), seconds=0) for r in m.records]  # noqa: E731 (timings differ)
    assert strip(manifest.Manifest.load(local.data_path)) == strip(manifest.Manifest.load(on_beam.data_path))
    if packing == "reference":
        source = common.load_data_source(local.data_path, "train")
        eos = sum(int(np.all(source[i]["tokens"] == vocab.EOS_ROW, axis=-1).sum()) for i in range(len(source)))
        train_ok = [r for r in manifest.Manifest.load(local.data_path).records if r.status == "ok" and r.split == "train"]
        assert eos == len(train_ok) + 1  # one EOS per 256-bar chunk; the 300-bar piece has two chunks


def flaky_tokenize(path, **kwargs):
    """The real task, except that files named hang*/crash* hang or kill their worker."""
    name = os.path.basename(path)
    if name.startswith("hang"):
        time.sleep(60)
    if name.startswith("crash"):
        os._exit(11)
    return workers.tokenize_piece(path, **kwargs)


class FlakyFolder(corpus.MidiFolder):
    """A folder builder whose workers misbehave on purpose (test-only dataset name)."""

    tokenize_task = staticmethod(flaky_tokenize)


def test_a_hanging_or_crashing_file_is_skipped_and_the_build_completes(tmp_path):
    for name in ("a.mid", "hang.mid", "b.mid", "crash.mid", "c.mid"):
        midi_factory.write_piece(tmp_path / "corpus" / name, seed=len(name) + ord(name[0]))
    config = corpus.folder_config(tmp_path / "corpus", max_len=TEST_MAX_LEN, valid_fraction=0.0)
    builder = FlakyFolder(
        config=config, data_dir=tmp_path / "tfds", options=common.BuildOptions(num_workers=2, timeout=3, progress=False)
    )
    builder.download_and_prepare()
    records = {r.path: r for r in manifest.Manifest.load(builder.data_path).records}
    assert records["hang.mid"].status == "skipped" and records["hang.mid"].error_kind == "timeout"
    assert "3 s" in records["hang.mid"].reason
    assert records["crash.mid"].status == "skipped" and records["crash.mid"].error_kind == "worker_crash"
    assert "exit code 11" in records["crash.mid"].reason
    assert [records[n].status for n in ("a.mid", "b.mid", "c.mid")] == ["ok"] * 3
    assert builder.summary["examples"] == {"train": 3}


def test_split_is_seeded_by_content_and_keeps_both_splits(tmp_path):
    midi_factory.make_corpus(tmp_path, num_good=5, broken=False, extra_files=False)
    def splits(seed):
        inputs = common.hash_and_split(common.list_folder(tmp_path), 0.1, seed, progress=False)
        return {i.name: i.split for i in inputs}
    assert splits(0) == splits(0)
    assert list(splits(0).values()).count("validation") in (1, 2)  # 1 piece (+ its duplicate)
    assert any(splits(s) != splits(0) for s in range(1, 6))


def test_the_folder_listing_streams_the_sorted_listing(tmp_path):
    for rel in ("a.mid", "a/x.mid", "a-b.mid", "a b/y.mid", "a/b/z.MID", "a0.mid", "a/b.mid", "Z.mid", "a/b/c.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    listing = common.FolderListing(tmp_path)
    rels = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert len(listing) == len(rels) and not isinstance(iter(listing), list)
    assert [(i.piece_id, i.name) for i in listing] == list(enumerate(rels))  # a folder "a" sorts as "a/"
    assert [i.name for i in listing if i.status == "ignored"] == ["a/b/c.txt"]


def test_the_record_spool_writes_the_manifest_of_its_records_in_any_order(tmp_path):
    rng = np.random.default_rng(0)
    records = [manifest.FileRecord(piece_id=i, path=f"d{i % 3}/f{i}.mid", sha256=f"{i:064x}", size=i, split="train",
                                   num_notes=i, num_windows=2, window_bars=[0, 4], seconds=float(rng.integers(0, 3)))
               for i in range(40)]
    records[5].status, records[5].reason, records[5].error_kind = "skipped", "empty file", "empty"
    records[9] = manifest.FileRecord(piece_id=9, path="z.mid", sha256=records[5].sha256, status="duplicate",
                                     reason="identical to d2/f5.mid", error_kind="duplicate")
    records[7].status, records[7].error_kind = "ignored", "extension"
    spool = manifest.RecordSpool(str(tmp_path / "records.jsonl"))
    for i in rng.permutation(len(records)):  # tokenized files come after the listed ones
        spool.add(manifest.FileRecord.from_dict(json.loads(records[i].to_json())))
    summary = spool.write_manifest(tmp_path / "spooled", {"dataset": "x"})
    manifest.Manifest(records, {"dataset": "x"}).write(tmp_path / "listed")
    listed = (tmp_path / "listed" / manifest.MANIFEST_FILENAME).read_text()
    assert (tmp_path / "spooled" / manifest.MANIFEST_FILENAME).read_text() == listed
    assert "a byte copy of d2/f5.mid" in listed  # the copy of a skipped file is skipped by its own name
    assert json.loads(json.dumps(summary)) == json.loads((tmp_path / "listed" / manifest.SUMMARY_FILENAME).read_text())
    spool.add(records[3])
    with pytest.raises(ValueError, match="piece_id 3"):
        spool.write_manifest(tmp_path / "again", {})
    spool.close()


def test_the_default_folder_config_reads_manual_dir(tmp_path, capsys):
    import tensorflow_datasets as tfds

    midi_factory.make_corpus(tmp_path / "corpus", num_good=3, broken=False)
    builder = corpus.MidiFolder(config="default", data_dir=tmp_path / "tfds", options=common.BuildOptions(num_workers=1))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=tmp_path / "corpus"))
    assert builder.summary["status"]["ok"] == 3 and builder.summary["source"] == str(tmp_path / "corpus")
    lines = capsys.readouterr().out.splitlines()  # what is built where, the tokenizing stage, the summary
    assert lines[0] == f"Building midi_folder/default in {builder.data_path}" and len(lines) == 3, lines
    assert lines[1].startswith("  Tokenizing midi_folder: 3/3 files in ")
    assert lines[2].startswith("midi_folder/default: 3 of 5 files tokenized (1 duplicate, 1 ignored); windows: train")
    assert common.load_data_source(builder.data_path, "train")[0]["tokens"].shape == (1024, 8)


def test_an_unprepared_builder_neither_asks_the_tfds_bucket_nor_leaves_temporary_directories(tmp_path, monkeypatch):
    import tempfile

    from tensorflow_datasets.core.utils import gcs_utils

    def no_bucket(*args, **kwargs):
        raise AssertionError("looked up gs://tfds-data")

    monkeypatch.setattr(gcs_utils, "gcs_dataset_info_files", no_bucket)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    corpus.MidiFolder(config="default", data_dir=tmp_path / "tfds")
    task_kinds.DemoMelody(config="default", data_dir=tmp_path / "tfds")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_missing_folder_is_a_typed_error(tmp_path):
    with pytest.raises(BuildError, match="does not exist"):
        common.list_folder(tmp_path / "nope")


# -- the demo corpus -------------------------------------------------------------------------


def test_demo_works_exclude_the_held_out_collections():
    works = demo_corpus.list_works()
    collections = {w.collection for w in works}
    assert not collections & set(demo_corpus.EXCLUDED_COLLECTIONS)
    assert {"essenFolksong", "beethoven", "mozart"} <= collections
    assert len(works) > 10_000 and len({w.key for w in works}) == len(works)
    for held_out in demo_corpus.EXCLUDED_COLLECTIONS:
        with pytest.raises(demo_corpus.DemoCorpusError, match="held out"):
            demo_corpus.list_works([held_out])
    chosen = demo_corpus.select_works(works, 300, seed=0)
    assert chosen == demo_corpus.select_works(works, 300, seed=0) and len(chosen) == 300
    assert {"beethoven", "haydn", "joplin"} <= {w.collection for w in chosen}  # small collections kept whole
    assert demo_corpus.Work("essenFolksong/altdeu10.abc", 3).midi_path == "essenFolksong/altdeu10/00003.mid"


def test_demo_builder_converts_caches_and_builds(tmp_path):
    config = corpus.demo_config(max_pieces=4, collections=("airdsAirs",), max_len=TEST_MAX_LEN, valid_fraction=0.25)
    assert config.name != "default"
    options = common.BuildOptions(num_workers=2, progress=False, cache_dir=str(tmp_path / "cache"))
    builder = corpus.Music21Demo(config=config, data_dir=tmp_path / "tfds", options=options)
    builder.download_and_prepare()
    records = manifest.Manifest.load(builder.data_path).records
    assert len(records) == 4 and all(r.path.startswith("airdsAirs/") and "#" in r.path for r in records)
    assert builder.summary["status"]["ok"] == 4 and set(builder.summary["examples"]) == {"train", "validation"}
    index = json.loads((tmp_path / "cache" / demo_corpus.CONVERSIONS_FILENAME).read_text())
    assert len(index) == 4 and all(v["status"] == "ok" for v in index.values())
    works = demo_corpus.select_works(demo_corpus.list_works(["airdsAirs"]), 4, 0)
    again = demo_corpus.materialize(works, str(tmp_path / "cache"), progress=False)
    assert all(c.cached and c.status == "ok" for c in again)
    # Excluded works (a downstream task's held-out pieces) are never taken; the selection fills up from the rest.
    excluded = records[0].path
    config_x = corpus.demo_config(max_pieces=4, collections=("airdsAirs",), max_len=TEST_MAX_LEN, valid_fraction=0.25,
                                    exclude=(excluded,))
    assert config_x.name != config.name
    inputs = corpus.Music21Demo(config=config_x, data_dir=tmp_path / "tfds", options=options)._list_inputs(None)
    assert len(inputs) == 4 and excluded not in {i.name for i in inputs}


def test_a_beam_build_short_of_examples_fails_by_split():
    # The DirectRunner lost windows of a 10^5-file build without an error; the manifest says what must be there.
    from midibert_jax.data.builders import beam

    records = [manifest.FileRecord(0, "a.mid", split="train", num_windows=3, num_stream_rows=70),
               manifest.FileRecord(1, "b.mid", split="train", num_windows=2, num_stream_rows=58),
               manifest.FileRecord(2, "c.mid", split="validation", num_windows=1, num_stream_rows=20)]
    built = manifest.Manifest(records)
    piece = corpus.folder_config("/x", max_len=32, packing="piece")
    reference = corpus.folder_config("/x", max_len=32, packing="reference")
    assert beam.expected_examples(built.summary()["splits"], piece) == {"train": 5, "validation": 1}
    assert beam.expected_examples(built.summary()["splits"], reference) == {"train": 4, "validation": 1}  # 128 rows: 4 windows of 32
    beam.check_examples(built.summary()["splits"], {"train": 5, "validation": 1}, piece)
    with pytest.raises(BuildError, match=r"train: 4 examples in the shards, 5 in the manifest"):
        beam.check_examples(built.summary()["splits"], {"train": 4, "validation": 1}, piece)


@pytest.mark.parametrize("flags, warns", [
    ("", False),  # no options: TFDS's DirectRunner, in_memory
    ("--runner=DirectRunner --direct_num_workers=2", False),
    ("--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing", True),
    ("--direct_running_mode=multi_threading", True),
    ("--runner=DataflowRunner --direct_running_mode=multi_processing", False),
])
def test_the_direct_runner_modes_that_dropped_examples_are_named_before_the_build(flags, warns):
    from apache_beam.options.pipeline_options import PipelineOptions

    from midibert_jax.data import prepare

    warning = prepare.direct_runner_warning(PipelineOptions(flags.split()))
    assert bool(warning) == warns
    if warns:
        assert "in_memory" in warning and flags.split("=")[-1] in warning


def test_fast_conversion_skips_beaming_without_changing_the_midi(tmp_path):
    """The worker parses without music21's beaming and pickle cache; the MIDI is byte for byte the same."""
    from music21 import converter

    for work in (demo_corpus.Work("airdsAirs/book1.abc", 2), demo_corpus.Work("essenFolksong/altdeu10.abc", 4)):
        source = os.path.join(demo_corpus.corpus_root(), work.source)
        out = tmp_path / "fast.mid"
        result = demo_corpus.convert_work(demo_corpus.ConvertTask(source, work.number, str(out), "fast"))
        assert result["status"] == "ok"
        demo_corpus._score_to_midi_fast(converter.parse(source, number=work.number, forceSource=True), str(tmp_path / "ref.mid"))
        assert out.read_bytes() == (tmp_path / "ref.mid").read_bytes()


def test_summary_counts_per_top_level_folder():
    records = [manifest.FileRecord(piece_id=i, path=p, status=st, num_notes=n, num_windows=w, split="train")
               for i, (p, st, n, w) in enumerate([("folk/a.mid", "ok", 100, 1), ("folk/b.mid", "ok", 50, 1),
                                                   ("classical/c.mid", "ok", 900, 8), ("folk/d.mid", "skipped", 0, 0),
                                                   ("folk/e.mid", "duplicate", 0, 0), ("folk/f.txt", "ignored", 0, 0)])]
    summary = manifest.Manifest(records).summary()
    assert summary["groups"] == {
        "classical": {"pieces": 1, "windows": 8, "notes": 900, "skipped": 0, "duplicate": 0, "ignored": 0},
        "folk": {"pieces": 2, "windows": 2, "notes": 150, "skipped": 1, "duplicate": 1, "ignored": 1}}
    text = manifest.format_summary(summary)
    assert "classical" in text and text.index("classical") < text.index("folk")  # largest first


def test_registered_demo_configs_are_found_by_fields():
    assert corpus.demo_config().name == "default"
    assert corpus.demo_config(packing="reference").name == "reference"
    assert corpus.demo_config(max_len=512).name == "n1000_fast-piece512-v10-s0"


# -- the prepare command ---------------------------------------------------------------------


def _prepare(argv):
    return cli.main(["prepare", *argv])


def test_prepare_command_builds_a_folder_and_reuses_it(midi_corpus, tmp_path, capsys):
    folder, expected = midi_corpus
    argv = ["--config", f"{prepare.DEFAULT_CONFIG}:folder", f"--config.folder={folder}", f"--config.data_dir={tmp_path}",
            "--config.progress=False", "--config.num_workers=2", "--config.max_len=16", "--config.valid_fraction=0.2"]
    assert _prepare(argv) == 0
    out = capsys.readouterr().out
    assert "ok 9, skipped 4, duplicate 1, ignored 1" in out
    # Every file left out is named, with its status, kind and reason.
    left_out = [line for line in out.splitlines()
                if line.startswith(("  skipped ", "  duplicate ", "  ignored ")) and " by reason: " not in line]
    named = {line.split(": ", 1)[0].split()[-1] for line in left_out}
    assert named == {path for path, status in expected.items() if status != "ok"}
    assert "  duplicate copies/same_as_piece_00.mid: identical to b/piece_00.mid" in out
    assert "  ignored (extension) README.txt: extension not in" in out and "  skipped (" in out
    assert "piece16-v20-s0" in out
    assert _prepare(argv) == 0
    assert "Reusing" in capsys.readouterr().out


def test_prepare_command_reports_bad_requests_in_one_line(tmp_path, capsys):
    def error_line(argv):
        assert _prepare(argv) == 2
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and captured.err.count("\n") == 1
        return captured.err

    folder = ["--config", f"{prepare.DEFAULT_CONFIG}:folder", f"--config.data_dir={tmp_path}", "--config.progress=False"]
    assert "does not exist" in error_line([*folder, f"--config.folder={tmp_path / 'missing'}"])
    assert "needs data.folder" in error_line(folder)
    assert "held out" in error_line(["--config.demo.collections=bach", f"--config.data_dir={tmp_path}", "--config.progress=False"])
    assert "max_len" in error_line(["--config.max_len=abc", f"--config.data_dir={tmp_path}"])
    assert "nope" in error_line(["--config", f"{prepare.DEFAULT_CONFIG}:nope", f"--config.data_dir={tmp_path}"])
    assert "no_such_field" in error_line(["--config.no_such_field=1"])
