r"""Fine-tuning Adversarial-MidiBERT on a note-level or sequence-level task.

Run:
  midibert-jax finetune --config configs/finetune.py:melody --workdir runs/melody \
      --config.train.init_from=runs/pretrain_base
  midibert-jax finetune --config configs/finetune.py:composer --workdir runs/composer \
      --config.train.init_from=imported/pretrain            # an `import-torch` output
  midibert-jax finetune --config configs/finetune.py:folder --workdir runs/mine \
      --config.data.root=/data/my_labelled_midis --config.train.init_from=runs/pretrain_base
  midibert-jax finetune --config configs/finetune.py:demo_sequence,runlocal,scratch --workdir runs/demo
  midibert-jax evaluate --workdir runs/melody --split test
  midibert-jax predict --workdir runs/melody song.mid -o song_tracks.mid

`get_config(arg)`: a task, then comma-separated modifiers:
  melody | velocity          POP909 note tasks (melody / bridge / accompaniment; 6 velocity classes)
  composer | emotion         Pianist8 (8 composers) and EMOPIA (4 quadrants) sequence tasks
  folder | folder_sequence   your MIDI files, one class per sub-folder of --config.data.root
  folder_note                your MIDI files, one class per track name (note task)
  demo_note | demo_sequence  small tasks built from the demo corpus, no download (= demo_melody: first part
                             vs. the others per note; demo_collection: which folk-tune collection)
  size=mini|tiny|base|large  the model size (with init_from, the source's architecture is used instead)
  runlocal                   laptop size: tiny model, short windows, small batches, few epochs
  cpu                        the recipe measured on a 2-core CPU for the four paper tasks (docs/results/
                             pop909.md, paper_tasks.md): the mini model with rotary positions, note tasks on
                             128-note windows (32 a step, transposition, no dropout), sequence tasks on 512
                             (8 a step; transposition for composer), lr 1e-3 (warmup, cosine), no mask
                             fine-tuning, a fixed step budget (under 30 minutes a run there), the best
                             validation step kept
  reference                  the reference's quirks (REFERENCE.md §7-8): masking and pitch shift also at
                             evaluation, 80% MASK of 15% of all positions, the last-example loss-mask bug,
                             pads in the sequence pooling, stop when neither accuracy nor loss improve
  scratch                    no pre-trained weights (otherwise train.init_from must be set)
  probe                      train only the task head on the frozen encoder (train.freeze_encoder)

Every field is plain data with its meaning above it; the code that reads a block names it.
"""

from __future__ import annotations

import ml_collections

from configs.model import get_model_config
from configs.optim import get_optim_config

# Config names -> task registry names (midibert_jax.data.tasks.TASKS).
TASKS = {
    "melody": "melody", "velocity": "velocity", "composer": "composer", "emotion": "emotion",
    "folder": "folder_sequence", "folder_sequence": "folder_sequence", "folder_note": "folder_note",
    "demo_note": "demo_melody", "demo_melody": "demo_melody",
    "demo_sequence": "demo_collection", "demo_collection": "demo_collection",
}
MODIFIERS = ("size", "runlocal", "cpu", "reference", "scratch", "probe")


def _parse(arg: str | None) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in (arg or "demo_note").split(",") if p.strip()]
    options = {}
    for p in parts[1:]:
        key, _, value = p.partition("=")
        options[key] = value or "True"
    return parts[0], options


def _data_config(task: str, runlocal: bool) -> ml_collections.ConfigDict:
    """The task's data block: configs/finetune_data.py (dataset location, windows, split, labels)."""
    from configs.finetune_data import task_data_config  # pylint: disable=import-outside-toplevel

    return task_data_config(task, runlocal=runlocal)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    task, options = _parse(arg)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} in config arg {arg!r}; choose one of {sorted(TASKS)}")
    task = TASKS[task]
    if unknown := set(options) - set(MODIFIERS):
        raise ValueError(f"unknown config modifier(s) {sorted(unknown)} in {arg!r}; known: {sorted(MODIFIERS)}")
    reference = options.get("reference") == "True"
    runlocal = options.get("runlocal") == "True"
    scratch = options.get("scratch") == "True"
    cpu = options.get("cpu") == "True"
    if cpu and runlocal:
        raise ValueError(f"choose one of the cpu and runlocal modifiers in {arg!r}")
    size = options.get("size", "tiny" if runlocal else "mini" if cpu else "base")

    config = ml_collections.ConfigDict()
    # Root of every random choice (init of the head, dropout, augmentation, data order).
    config.seed = 0

    config.task = ml_collections.ConfigDict()
    # Which task (midibert_jax.data.tasks): its level (note / sequence), classes and dataset.
    config.task.name = task
    # Level ('note' | 'sequence') and class names; empty -> from the task (recorded here at run time).
    config.task.level = ""
    config.task.class_names = ()

    # The encoder and heads (configs/model.py). With train.init_from and train.model_from_init, the
    # architecture fields are replaced by the source's at run time (dropout, dtype, remat stay).
    config.model = get_model_config(size)
    # Reference quirk: PAD rows take part in the sequence head's attention pooling.
    config.model.sequence_pooling.include_pads = reference

    # Device mesh: size of each axis, -1 = all remaining devices. Batches shard over data x fsdp.
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    # The task's dataset (configs/finetune_data.py; built on first use by midibert_jax.data.prepare.prepare).
    config.data = _data_config(task, runlocal)
    # Examples (windows) per step over all processes; the reference uses 8 (12 for MidiBERT-Piano).
    config.data.batch_size = 8
    # Examples per evaluation step (all processes).
    config.data.eval_batch_size = 16
    # Threads reading examples per process (grain ReadOptions) and batches prefetched.
    config.data.read_threads = 2
    config.data.prefetch = 2

    # Input transforms (midibert_jax/train/augment.py). Training only, unless the eval_* switches say otherwise.
    config.augment = ml_collections.ConfigDict()
    # Mask fine-tuning: this fraction of the non-pad notes (all positions with `reference`) is selected per
    # example; note tasks skip the selected notes in loss and accuracy. 0 disables it.
    config.augment.mask_ratio = 0.15
    # Of the selected notes, this fraction (rounded count) becomes the MASK row; the rest stay unchanged.
    config.augment.mask_prob = 0.8 if reference else 1.0
    # Pitch shift: one transposition per example within +-this many semitones, kept inside 0..127; 0 disables it.
    config.augment.pitch_shift = 11
    # Set the Velocity field to PAD at the model input (always for the velocity task: it is the answer).
    config.augment.blank_velocity = task == "velocity"
    # Reference quirk: masking and pitch shift also at evaluation (with a fixed key, so still repeatable).
    config.augment.eval_mask = reference
    config.augment.eval_pitch_shift = reference
    # Seed of the evaluation transforms (used only with eval_mask / eval_pitch_shift).
    config.augment.eval_seed = 4321
    # Reference quirk: mask candidates are all positions, pads included.
    config.augment.reference_pads_as_candidates = reference
    # Reference bug: only the last example's masked notes are excluded from every example's loss.
    config.augment.reference_last_example_only = reference

    # Optimizer (configs/optim.py): AdamW after global-norm clipping (the reference: 2e-5, wd 0.01, clip 3).
    # total_steps 0 -> the run's step budget (train.steps or train.epochs x steps per epoch).
    config.optim = get_optim_config(2e-5)

    # The training loop (midibert_jax/train/finetune.py).
    config.train = ml_collections.ConfigDict()
    # Most epochs over the training windows (the reference has no cap and relies on early stopping).
    config.train.epochs = 100
    # Optimizer steps in total; 0 -> epochs x steps per epoch.
    config.train.steps = 0
    # Evaluate on the validation split (clean, deterministic) every N steps; 0 -> once per epoch.
    # Every evaluation also saves a checkpoint; the best by validation accuracy is always kept.
    config.train.eval_every = 0
    # At most this many evaluation batches (0: the whole validation split).
    config.train.eval_batches = 0
    # Note-level tasks: the evaluation of a finished run (`evaluate`, the experiment's test runs) predicts
    # every note in this many windows, the piece cut at max_len * k / views notes (k = 0 .. views-1), and
    # averages the probabilities, so that no note is judged only from one side of it (1: the stored windows).
    # The validation runs during training, which choose the checkpoint, stay at 1 (they are many).
    config.train.eval_views = 1
    # Early stopping: stop after this many evaluations without improvement (0: never stop early).
    config.train.patience = 10
    # What counts as improvement: 'accuracy' (validation accuracy rises) or 'accuracy_or_loss' (the
    # reference: validation accuracy rises or validation loss falls).
    config.train.improvement = "accuracy_or_loss" if reference else "accuracy"
    # Write training metrics every N steps (TensorBoard + metrics.jsonl in the workdir).
    config.train.log_every = 50
    # Checkpoints kept besides the best one.
    config.train.keep_checkpoints = 2
    # Pre-trained weights when the workdir holds no checkpoint: a pre-training (or fine-tuning) workdir,
    # or an imported checkpoint folder. Only the encoder is taken.
    config.train.init_from = ""
    # Which step of an init_from workdir: 'best' (by its evaluation accuracy), 'latest' or a step number.
    config.train.init_step = "best"
    # Take the encoder architecture (sizes, positions, max_len) from init_from's recorded model config.
    config.train.model_from_init = True
    # Allow training without init_from (random encoder): the 'scratch' modifier.
    config.train.from_scratch = scratch
    # Train only the task head; the encoder keeps its initial (pre-trained or random) weights: a probe of
    # what the encoder learned (the 'probe' modifier).
    config.train.freeze_encoder = options.get("probe") == "True"
    # Train on this fraction of the training split's pieces (a seeded draw by `seed`, whole pieces; 1.0 = all):
    # the low-label protocol. Validation and test splits are unchanged.
    config.train.piece_fraction = 1.0

    if runlocal:
        config.data.batch_size = 8
        config.data.eval_batch_size = 16
        config.train.epochs = 20
        config.train.log_every = 10
        config.train.patience = 5
        config.optim.learning_rate = 1e-4
    if cpu:
        _cpu_recipe(config)
    config.model.max_len = config.data.max_len
    return config


# The 2-core CPU recipe (docs/results/pop909.md: what held accuracy at skyline level, and what fixed it).
# Steps sized so one run fits 30 minutes on a 2-core Zen 4 EPYC. Note tasks: 128-note windows, 32 a step
# (the notes of 8 windows of 512 at less than half the cost: a note's accuracy does not depend on where it sits
# in its window); sequence tasks: MidiBERT-Piano's 512-note segments, 8 a step.
CPU_STEPS = {"note": 3600, "sequence": 1500}
CPU_WINDOWS = {"note": (128, 32), "sequence": (512, 8)}  # (rows per window, windows per step)
# Transposition by up to this many semitones: it regularised melody late in the run and lifted composer (63.9 %
# against 59.7 % on test, one seed; paper_tasks.md); not yet measured for emotion, where it stays off.
CPU_PITCH_SHIFT = {"note": 5, "composer": 5}
# AdamW weight decay (0.01 otherwise): melody over-fits late in the run (validation loss rises after step 2,400);
# 0.1 kept its validation loss lower (0.308 against 0.321 at the best step) for the same accuracy (pop909.md).
CPU_WEIGHT_DECAY = {"melody": 0.1}
# Evaluation views (train.eval_views): 128-note windows leave many notes near an edge. Chosen on validation
# (docs/results/pop909.md, 3 seeds each: melody 88.50 / 88.86 / 89.00 / 89.02 % at 1 / 2 / 4 / 8 views, velocity
# 46.26 / 47.09 % at 1 / 4).
CPU_EVAL_VIEWS = {"note": 4}


def _per_task(table: dict, task: str, level: str, default):
    """A recipe table's value for a task: its own entry, else its level's (note / sequence), else the default."""
    return table.get(task, table.get(level, default))


def _cpu_recipe(config: ml_collections.ConfigDict) -> None:
    """Rotary positions; a learning rate and schedule for a from-scratch run of minutes; every note scored (mask
    fine-tuning slows learning here). Note tasks: more updates on shorter windows, no dropout but transposition
    (it regularises late in the run, dropout did not); melody: more weight decay; composer: transposition too."""
    from midibert_jax.data import tasks  # pylint: disable=import-outside-toplevel

    level = tasks.get_task(config.task.name).level
    config.data.max_len, config.data.batch_size = CPU_WINDOWS[level]
    config.model.position_embedding = "rope"
    config.augment.mask_ratio = 0.0
    config.augment.pitch_shift = _per_task(CPU_PITCH_SHIFT, config.task.name, level, 0)
    if level == "note":
        config.model.dropout_rate = config.model.attention_dropout_rate = config.model.head_dropout = 0.0
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = _per_task(CPU_WEIGHT_DECAY, config.task.name, level, config.optim.weight_decay)
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_steps = 100
    config.train.epochs = 0
    config.train.steps = CPU_STEPS[level]
    config.train.eval_every = 400 if level == "note" else 100
    config.train.eval_views = _per_task(CPU_EVAL_VIEWS, config.task.name, level, 1)
    config.train.patience = 0
    config.train.log_every = 50


def unread_fields(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Fields this config's task and options do not read -> what reads them (config_loading refuses
    overriding them)."""
    from configs.finetune_data import unread_fields as unread_data_fields  # pylint: disable=import-outside-toplevel

    unread = {f"data.{key}": why for key, why in unread_data_fields(config.data).items()}
    if not config.train.init_from:
        why = "read only with train.init_from (a pre-trained encoder)"
        unread["train.init_step"] = unread["train.model_from_init"] = why
    from midibert_jax.data import tasks  # pylint: disable=import-outside-toplevel

    try:
        level = tasks.get_task(config.task.name).level
    except tasks.TaskConfigError:
        level = ""  # an unknown task: the config's validation names it
    if level and level != "note":
        unread["train.eval_views"] = "read only by note-level tasks (a sequence task scores whole windows)"
    if not (config.augment.eval_mask or config.augment.eval_pitch_shift):
        unread["augment.eval_seed"] = "read only with augment.eval_mask or augment.eval_pitch_shift"
    return unread
