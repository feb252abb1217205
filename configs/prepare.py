r"""Dataset preparation: which corpus, how it is cut into windows, how the build runs.

Run:
  midibert-jax prepare                                   # demo corpus (music21 scores), default settings
  midibert-jax prepare --config configs/prepare.py:demo,runlocal
  midibert-jax prepare --config configs/prepare.py:folder --config.folder=/data/my_midis
  midibert-jax prepare --config configs/prepare.py:tasks --config.task_roots.pop909=/data/POP909 \
      --config.task_roots.pianist8=/data/Pianist8 --config.extra_folders="('/data/POP1K7',)"
  midibert-jax prepare --config configs/prepare.py:folder,beam --config.folder=/data/lakh \
      --config.beam_options="--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp"

`get_config(arg)` takes a variant, then comma-separated modifiers:
  demo | folder | tasks  which builder: music21_demo, midi_folder, or task_train_corpus (the training
                         splits of task datasets plus extra folders; their validation and test files,
                         and any byte-identical copy of them, never enter: the paper's corpus, leak-free)
  runlocal               laptop-sized windows (256 rows)
  reference              the reference's packing across pieces (REFERENCE.md §1.3)
  beam                   build with Apache Beam (DirectRunner unless beam_options say otherwise)

Every field is plain data; `midibert_jax.commands.prepare` reads it. Dataset identity
(max_len, packing, valid_fraction, seed, and the demo selection) decides the TFDS config name,
so datasets built with different settings sit side by side under data_dir.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("demo", "folder", "tasks")
MODIFIERS = ("runlocal", "reference", "beam")


def add_build_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """How a build runs (not part of a dataset's identity): the fields every data block shares
    (this file's and configs/finetune_data.py's). `config.demo` must exist."""
    # Root folder of the TFDS datasets (TFDS's own default, so tfds.data_source finds them without data_dir).
    config.data_dir = "~/tensorflow_datasets"
    # Tokenizer / converter processes; 0 -> every CPU this process may use.
    config.num_workers = 0
    # Seconds one MIDI file may take to tokenize before its worker is killed and the file skipped.
    config.timeout = 60.0
    # Address-space limit of each worker process in MiB (0 -> none).
    config.memory_limit_mb = 4096
    # Show progress bars (rate and ETA).
    config.progress = True
    # Delete and rebuild a dataset that already exists (otherwise it is reused and its summary printed).
    config.overwrite = False
    # Seconds to wait while another process builds the same dataset (it holds the lock file next to
    # the dataset); 0 -> as long as that process lives. Then its dataset is reused.
    config.lock_timeout = 0.0
    # Seconds one music21 score may take to parse and convert (demo datasets).
    config.demo.convert_timeout = 120.0
    # Cache of converted MIDI files (demo datasets); empty -> $MIDIBERT_JAX_CACHE or ~/.cache/midibert_jax.
    config.demo.cache_dir = ""
    return config


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    parts = [p.strip() for p in (arg or "demo").split(",") if p.strip()]
    variant, modifiers = parts[0], parts[1:]
    if variant not in VARIANTS:
        raise ValueError(f"unknown prepare variant {variant!r}; choose one of {VARIANTS}")
    for m in modifiers:
        if m not in MODIFIERS:
            raise ValueError(f"unknown prepare modifier {m!r}; choose from {MODIFIERS}")

    config = ml_collections.ConfigDict()
    # Which builder: 'demo' (music21_demo: scores shipped with music21), 'folder' (midi_folder: your MIDI files)
    # or 'tasks' (task_train_corpus: task datasets' training splits + extra folders).
    config.dataset = variant
    # Folder of MIDI files for dataset='folder' (searched recursively; .mid/.midi/.kar).
    config.folder = ""
    # dataset='tasks': per task dataset, its folder (your download; as the fine-tuning configs' data.root);
    # the official training split of each one set enters the corpus, empty ones are not used.
    config.task_roots = ml_collections.ConfigDict({"pop909": "", "pianist8": "", "emopia": ""})
    # dataset='tasks': folders of MIDI files taken whole, e.g. ('/data/POP1K7',) (the paper's corpus).
    config.extra_folders = ()
    # TFDS config name; empty -> derived from the corpus and the identity fields below
    # ('default' for the demo corpus with default settings).
    config.name = ""

    # Rows (notes) per window; the model's max_len.
    config.max_len = 1024
    # 'piece': windows inside one piece, bars re-based per window, last window PAD-padded (ours).
    # 'reference': 256-bar chunks + EOS, all pieces concatenated and cut (the reference's pre-training packing).
    config.packing = "piece"
    # Reference packing only: also add the reference's all-PAD window when the stream is a multiple of max_len.
    config.extra_pad_window = False
    # Fraction of unique pieces (by file content) put in the 'validation' split.
    config.valid_fraction = 0.1
    # Seed of the piece-level train/validation split (and of the demo corpus' work selection).
    config.seed = 0

    # Build with Apache Beam instead of local worker processes (for 10^5-file corpora on a cluster).
    config.beam = False
    # Beam pipeline options as one command-line string, e.g. "--runner=DataflowRunner --project=...";
    # empty -> the in-process DirectRunner.
    config.beam_options = ""

    # The demo corpus (dataset='demo').
    config.demo = ml_collections.ConfigDict()
    # Works to take, balanced across collections (a seeded draw); 0 -> all of them (~13,000 works: the folk-song
    # books' tunes one by one, and every classical score; converted once, then cached).
    config.demo.max_pieces = 0
    # Comma-separated music21 collections; empty -> all but demos/theoryExercises.
    # bach, palestrina, monteverdi and trecento are held out for evaluation and refused.
    config.demo.collections = ""
    # Score -> MIDI writer: 'fast' (own, ties merged, repeats not expanded) or 'music21' (slow on large scores).
    config.demo.writer = "fast"
    # Work keys (e.g. 'airdsAirs/book1.abc#83') never taken: the demo command puts the demo tasks'
    # validation and test pieces here, so pre-training never sees them.
    config.demo.exclude = ()

    add_build_fields(config)

    if "runlocal" in modifiers:
        config.max_len = 256
    if "reference" in modifiers:
        config.packing = "reference"
    if "beam" in modifiers:
        config.beam = True
    return config


# How to choose the variant that reads a field, in this file's terms (configs/pretrain.py has its own).
READERS = {
    "folder": "a folder of MIDI files needs the folder variant: --config configs/prepare.py:folder --config.folder=DIR",
    "demo": "only the demo corpus reads the demo block (configs/prepare.py:demo)",
    "beam": "only Beam builds read it: add the beam modifier (e.g. configs/prepare.py:folder,beam)",
    "reference": "only the reference packing reads it: add the reference modifier (e.g. configs/prepare.py:folder,"
                 "reference)",
    "tasks": "only the tasks variant reads it (configs/prepare.py:tasks)",
}


def unread_fields(config: ml_collections.ConfigDict, readers: dict[str, str] | None = None) -> dict[str, str]:
    """Fields this config's variant does not read -> what reads them.

    `midibert_jax.config_loading` refuses an override of one of them in one line: with the demo
    variant, `folder` would otherwise build the whole demo corpus. `readers` words the variants for a
    config that embeds this block (configs/pretrain.py's data=... modifiers); default READERS.
    """
    readers = {**READERS, **(readers or {})}
    unread = {}
    if config.dataset != "folder":
        unread["folder"] = readers["folder"]
    if config.dataset != "demo":
        unread["demo"] = readers["demo"]
    if not config.beam:
        unread["beam_options"] = readers["beam"]
    if config.packing != "reference":
        unread["extra_pad_window"] = readers["reference"]
    if config.dataset != "tasks":  # the fields of the tasks variant, where this file has it
        unread.update({key: readers["tasks"] for key in ("task_roots", "extra_folders") if key in config})
    return unread
