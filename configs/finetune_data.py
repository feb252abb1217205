r"""Fine-tuning data: which task, where its data are, how they are cut and split.

The fine-tuning config builds its `data` block with `task_data_config(task)`; the trainer calls
`midibert_jax.data.prepare.prepare(config.data)` and reads the splits with
`pipeline.load_split(dataset_dir, 'train' | 'validation' | 'test')`.

    from configs import finetune_data
    data = finetune_data.task_data_config("melody")      # then e.g. data.root = "~/data/POP909-Dataset"
    dataset_dir = prepare.prepare(data)

Standalone (this file's get_config), e.g. to build a dataset ahead of training:
    get_config("demo_collection")            # no download needed
    get_config("composer,runlocal")          # runlocal: 256-row windows (and a small demo selection)

Tasks: melody, velocity (POP909), composer (Pianist8), emotion (EMOPIA), folder_sequence,
folder_note (your data), demo_melody, demo_collection (music21 demo corpus). Where to download
the standard datasets and the folder layouts expected: docs/datasets.md.
"""

from __future__ import annotations

import ml_collections

from configs.prepare import add_build_fields
from midibert_jax.data import tasks

MODIFIERS = ("runlocal",)


def task_data_config(task: str, *, runlocal: bool = False) -> ml_collections.ConfigDict:
    """The data block of a fine-tuning run on `task` (every field plain data, overridable)."""
    spec = tasks.get_task(task)
    config = ml_collections.ConfigDict()
    # Task name (midibert_jax.data.tasks.TASKS): decides the level, the classes and the builder.
    config.task = task
    # Dataset folder (TFDS manual_dir): your download of POP909 / Pianist8 / EMOPIA, or your own data
    # (folder_* tasks). Ignored by the demo tasks.
    config.root = ""
    # TFDS config name; empty -> derived from the fields below (split, max_len and a hash of the rest).
    config.name = ""

    # Rows (notes) per window; must equal the model's max_len.
    config.max_len = 1024
    # Split source: 'official' (MidiBERT-Piano's file lists; standard tasks), 'file' (<root>/split.json:
    # {"train": [...], "valid": [...], "test": [...]} of paths relative to root), 'seeded' (seeded split of the
    # unique files, stratified by class for sequence tasks), 'auto' ('file' if <root>/split.json exists, else 'seeded').
    config.split = spec.default_split
    # Seeded split: fraction of unique pieces in 'validation'.
    config.valid_fraction = 0.1
    # Seeded split: fraction of unique pieces in 'test'.
    config.test_fraction = 0.1
    # Seed of the seeded split (and of the demo tasks' work selection).
    config.seed = 0

    # Note tasks labelled by track name: "TRACK[=class],...", matched case-insensitively with * ? wildcards,
    # first match wins; "TRACK" alone makes a class named after the track (POP909: "MELODY,BRIDGE,PIANO").
    config.track_map = spec.default_track_map
    # Class names in label order, comma-separated; empty -> the task's own, or for folder_sequence the
    # label folders sorted by name, for folder_note the classes of track_map in order of appearance.
    config.class_names = ""
    # Note tasks: notes on tracks that track_map maps to no class: 'error' (the build fails, naming the
    # tracks and files) or 'ignore' (label -1: kept in the input, left out of loss and accuracy).
    config.unmapped_tracks = spec.default_unmapped
    # Velocity task: set the input's velocity field to PAD (it is the label); False reproduces the
    # reference's leak (REFERENCE.md §8, item 2).
    config.blank_velocity = True

    # The demo tasks (music21 corpus; bach, palestrina, monteverdi and trecento are never used).
    config.demo = ml_collections.ConfigDict()
    # Works to take, balanced across collections (seeded by `seed`); 0 -> all works of `collections`.
    # demo_collection: 400 tunes (100 per collection); demo_melody: all ~75 multi-part scores.
    config.demo.max_pieces = 400 if task == "demo_collection" else 0
    # Comma-separated music21 collections; empty -> the task's default (demo_collection: the classes
    # airdsAirs, essenFolksong, oneills1850, ryansMammoth; demo_melody: the multi-part classical collections).
    config.demo.collections = ""
    # Score -> MIDI writer: 'fast' (ties merged, repeats not expanded) or 'music21' (slow on large scores).
    config.demo.writer = "fast"

    # data_dir, workers, timeouts, progress, overwrite, lock_timeout, demo conversion (configs/prepare.py).
    add_build_fields(config)

    if runlocal:
        config.max_len = 256
        # Enough pieces that a fifth of them makes a test split whose accuracy means something
        # (about 80 tunes / 12 scores), still a few minutes of fine-tuning on a laptop.
        if task == "demo_collection":
            config.demo.max_pieces = 400
            config.test_fraction = 0.2
        elif task == "demo_melody":
            config.demo.max_pieces = 60
            config.test_fraction = 0.2
    return config


def get_config(arg: str = "demo_collection") -> ml_collections.ConfigDict:
    """`task[,runlocal]` -> the data config of that task."""
    parts = [p.strip() for p in (arg or "demo_collection").split(",") if p.strip()]
    task, modifiers = parts[0], parts[1:]
    for m in modifiers:
        if m not in MODIFIERS:
            raise ValueError(f"unknown finetune_data modifier {m!r}; choose from {MODIFIERS}")
    return task_data_config(task, runlocal="runlocal" in modifiers)


def unread_fields(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Fields the task of this data block does not read -> what reads them.

    `midibert_jax.config_loading` refuses an override of one of them in one line (a `root` given to a
    demo task would otherwise be ignored and the music21 pieces used instead).
    """
    task = tasks.get_task(config.task)
    unread = {}
    if task.dataset == "demo":
        unread["root"] = ("the demo tasks read music21's corpus, not a folder: for your MIDI files use the "
                          "folder_sequence or folder_note task")
    else:
        unread["demo"] = "only the demo tasks (demo_melody, demo_collection) read the demo block"
    if task.level != tasks.NOTE:
        unread["track_map"] = unread["unmapped_tracks"] = f"only note tasks read it; {task.name} is a sequence task"
    if task.name != "velocity":
        unread["blank_velocity"] = ("only the velocity task's labelling reads it (augment.blank_velocity blanks "
                                    "the input of any task)")
    if config.split in ("official", "file"):
        unread["valid_fraction"] = unread["test_fraction"] = (
            f"split={config.split!r} takes the splits from a list; only split='seeded' (or 'auto' without a "
            "split.json) reads it")
    return unread
