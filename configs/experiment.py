r"""The paper's claim as an experiment: adversarial masking vs. random masking vs. no pre-training.

Run:
  midibert-jax experiment --config configs/experiment.py --workdir runs/experiment
  midibert-jax experiment --config configs/experiment.py --workdir runs/experiment \
      --config.seeds="(0,)" --config.fractions="(1.0,)" --config.pretrain.overrides.train.steps=300
  midibert-jax experiment --config configs/experiment.py:tpu --workdir gs://bucket/runs/experiment

Every arm x seed is one pre-training run (`pretrain/<arm>_s<seed>/`; the `none` arm has none), and
every arm x seed x task x protocol x fraction one fine-tuning run
(`finetune/<task>/<arm>_s<seed>_<protocol>_f<fraction>/`), evaluated on the task's test split; model
selection is on validation only. All runs are ordinary, resumable runs: running again continues
where it stopped and reuses the finished ones (midibert_jax/experiment.py).

`get_config(arg)`: a variant, then comma-separated modifiers:
  runlocal   (default) laptop size: the mini model on 128-note windows of the demo corpus, 600
             pre-training steps, 100-step fine-tuning runs on the two demo tasks (no download)
  tpu        the base model (configs/pretrain.py:base) on 1,024-note windows, 20,000 steps with
             256-window batches, 10 fine-tuning epochs (see README: for an accelerator slice)
  pop909     melody and velocity on POP909 (--config.roots.pop909=DIR), pre-trained on its training songs
             only; 2 pre-training runs and 36 fine-tuning runs of 300 steps, 2 h 44 min on 2 CPU cores
             (measured: docs/results/pop909.md)
  paper      all four tasks (roots.pop909, roots.pianist8, roots.emopia), pre-trained on the three training
             splits (+ pretrain.extra_folders); 2 pre-training runs and 72 fine-tuning runs of 200 steps,
             about 3.5 h on 2 CPU cores (measured: docs/results/paper_tasks.md)
  quick      one seed and one fraction (1.0): a first look in a fraction of the time
  melody, velocity, composer, emotion
             with pop909 or paper: only these of the variant's tasks (e.g. `paper,composer,emotion`)

Overrides: `pretrain.overrides`, `finetune.overrides`, `protocol_overrides.<protocol>` and
`task_overrides.<task>` mirror the fine-tuning / pre-training configs' own keys (e.g.
`--config.pretrain.overrides.train.steps=300`); a key not listed here is added in a copy of this file.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("runlocal", "tpu", "pop909", "paper")
TASK_NAMES = ("melody", "velocity", "composer", "emotion")
MODIFIERS = ("quick", "tpu") + TASK_NAMES
# The task datasets a user downloads (docs/datasets.md); `roots` holds their folders.
DATASETS = ("pop909", "pianist8", "emopia")


def _parse(arg: str | None) -> tuple[str, set[str]]:
    parts = [p.strip() for p in (arg or "runlocal").split(",") if p.strip()]
    return parts[0], set(parts[1:])


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, modifiers = _parse(arg)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} in config arg {arg!r}; choose one of {VARIANTS}")
    if unknown := modifiers - set(MODIFIERS):
        raise ValueError(f"unknown config modifier(s) {sorted(unknown)} in {arg!r}; known: {list(MODIFIERS)}")
    if "tpu" in modifiers and variant not in ("pop909", "paper"):
        raise ValueError(f"the tpu modifier goes with pop909 or paper ({arg!r}); the demo tasks at scale are `tpu`")
    tpu = variant == "tpu" or "tpu" in modifiers
    only = tuple(t for t in TASK_NAMES if t in modifiers)
    if only and variant not in ("pop909", "paper"):
        raise ValueError(f"task modifiers {list(only)} go with pop909 or paper ({arg!r})")

    config = ml_collections.ConfigDict()
    # Pre-training arms: 'adversarial' (the paper's masker), 'random' (MidiBERT-Piano's 15% MLM: the
    # pre-training config with masking=random) and 'none' (no pre-training: a random encoder).
    config.arms = ("adversarial", "random", "none")
    # Replicates. Seed s is the pre-training config's `seed` and the fine-tuning config's `seed` of
    # replicate s (so paired comparisons across arms share the fine-tuning data order and piece draw).
    config.seeds = (0, 1, 2)
    # Pre-training seeds, taken in turn by the replicates (replicate i: pretrain_seeds[i % n]); empty: each
    # replicate pre-trains with its own seed. Fewer pre-training runs when they are the expensive part;
    # the seed spread then covers fine-tuning (head init, data order, piece draw) and not pre-training.
    config.pretrain_seeds = ()

    config.pretrain = ml_collections.ConfigDict()
    # The pre-training config (PATH:ARG) of the adversarial arm; the random arm is the same plus masking=random.
    config.pretrain.spec = "configs/pretrain.py:base" if tpu else "configs/pretrain.py:mini,runlocal"
    # Values set on the pre-training config (keys as in configs/pretrain.py). The experiment keeps
    # optim.warmup_steps below train.steps (a tenth of them when it would not be). `seed` and
    # `masking.policy` are the experiment's to set.
    config.pretrain.overrides = ml_collections.ConfigDict({
        # Windows (notes) of pre-training and fine-tuning alike; a multiple of 8.
        "data": {"max_len": 1024 if tpu else 128, "batch_size": 256 if tpu else 8},
        # Steps, and how often to evaluate (validation masked-note accuracy) and save.
        "train": {"steps": 20_000 if tpu else 600, "eval_every": 1_000 if tpu else 150,
                  "checkpoint_every": 1_000 if tpu else 150},
        # Mask-book refreshes every N epochs (a refresh reads the whole training split: every epoch at most,
        # so on the demo corpus' 13k windows a laptop run of less than an epoch trains the masker without one).
        "mask_book": {"every": 5 if tpu else 1, "unit": "epoch"},
        # Peak learning rate and warmup.
        "optim": {"learning_rate": 1e-4 if tpu else 5e-4, "warmup_steps": 1_000 if tpu else 50},
    })

    # Fine-tuning tasks (PATH:ARG of configs/finetune.py, any task: folder_sequence on your folder,
    # POP909 melody, ...). A task's name is its ARG's first item; write `NAME=PATH:ARG` to choose another
    # (e.g. two folder tasks). Its data root and other task-specific values go in task_overrides.
    config.tasks = (("configs/finetune.py:demo_note", "configs/finetune.py:demo_sequence") if tpu else
                    ("configs/finetune.py:demo_note,runlocal", "configs/finetune.py:demo_sequence,runlocal"))
    config.finetune = ml_collections.ConfigDict()
    # Values set on every fine-tuning config (keys as in configs/finetune.py). data.max_len and the
    # encoder's architecture follow the pre-training config; `seed`, train.init_from,
    # train.from_scratch, train.freeze_encoder and train.piece_fraction are the experiment's to set.
    config.finetune.overrides = ml_collections.ConfigDict({
        # Most epochs, or (steps > 0) most steps whatever the fraction: a tenth of the pieces gets as many
        # updates as all of them. Validation every eval_every steps (0: each epoch); early stopping after
        # `patience` evaluations without a better validation accuracy.
        "train": {"epochs": 10, "steps": 0, "eval_every": 0, "patience": 5} if tpu else
                 {"epochs": 0, "steps": 100, "eval_every": 20, "patience": 3},
        # Windows per step.
        "data": {"batch_size": 32 if tpu else 8},
    })
    # Per task name: values set on that task's fine-tuning configs (e.g. {"mine": {"data": {"root": DIR}}}).
    config.task_overrides = ml_collections.ConfigDict()

    # 'probe': the task head on the frozen encoder (train.freeze_encoder; for the none arm a frozen
    # random encoder, the standard baseline); 'finetune': every weight trained.
    config.protocols = ("probe", "finetune")
    # Per protocol: values set on its fine-tuning configs (a probe trains only the head: a higher rate).
    config.protocol_overrides = ml_collections.ConfigDict({
        "probe": {"optim": {"learning_rate": 1e-3}},
        "finetune": {"optim": {"learning_rate": 2e-5 if tpu else 3e-4}},
    })
    # Fractions of the training split's pieces (train.piece_fraction: a seeded draw of whole pieces by the
    # replicate's seed, the same for every arm). Validation and test splits are always whole.
    config.fractions = (0.1, 1.0)
    # Test metrics aggregated (those a run's evaluation has; piece_accuracy: sequence tasks only).
    config.metrics = ("accuracy", "macro_f1", "piece_accuracy")

    # Your downloads of the task datasets (docs/datasets.md), one override each, e.g.
    # --config.roots.pop909=/data/POP909-Dataset: every task on that dataset reads it (its data.root), and
    # so does pre-training on task training splits (pretrain.sources).
    config.roots = ml_collections.ConfigDict({name: "" for name in DATASETS})
    # Pre-training on task datasets (a pretrain.spec with data=tasks, configs/prepare.py:tasks): the
    # datasets whose *training* split makes the corpus (their validation and test files, and any byte
    # copy of them, never enter), and extra folders of MIDI files taken whole (e.g. POP1K7).
    config.pretrain.sources = ()
    config.pretrain.extra_folders = ()

    if variant == "pop909":
        _pop909(config, tpu, only)
    elif variant == "paper":
        _paper(config, tpu, only)
    if "quick" in modifiers:
        config.seeds = (0,)
        config.fractions = (1.0,)
        if variant in ("pop909", "paper") and not tpu:  # a first look in the time the docs state
            config.pretrain.overrides.train.update({"steps": 150, "eval_every": 75, "checkpoint_every": 75})
            config.finetune.overrides.train.update({"steps": 200 if variant == "pop909" else 150, "eval_every": 50})
    return config


def _task_data(config: ml_collections.ConfigDict, sources: tuple[str, ...], tasks: tuple[str, ...], tpu: bool,
               only: tuple[str, ...]) -> None:
    """Pre-training on the training splits of `sources`, fine-tuning `tasks` (configs/finetune.py names), or
    those of them named in `only` (the pre-training corpus stays the variant's: its runs are shared)."""
    if unknown := set(only) - set(tasks):
        raise ValueError(f"task modifiers {sorted(unknown)} are not tasks of this variant ({list(tasks)})")
    tasks = tuple(t for t in tasks if not only or t in only)
    config.pretrain.sources = sources
    config.pretrain.spec = "configs/pretrain.py:base,data=tasks" if tpu else "configs/pretrain.py:mini,runlocal,data=tasks"
    config.tasks = tuple(f"configs/finetune.py:{t}" if tpu else f"configs/finetune.py:{t},cpu" for t in tasks)
    if not tpu:  # the cpu recipe's evaluation views were chosen for its 128-note windows; these runs cut 512
        for task in ("melody", "velocity"):
            if task in tasks:
                config.task_overrides[task] = ml_collections.ConfigDict({"train": {"eval_views": 1}})


def _pop909(config: ml_collections.ConfigDict, tpu: bool, only: tuple[str, ...]) -> None:
    """POP909 melody and velocity, pre-trained on POP909's official training songs only (no test song leaks)."""
    _task_data(config, ("pop909",), ("melody", "velocity"), tpu, only)
    _budget(config, tpu, finetune_steps=300)


def _paper(config: ml_collections.ConfigDict, tpu: bool, only: tuple[str, ...]) -> None:
    """The paper's four tasks, pre-trained on the training splits of POP909, Pianist8 and EMOPIA (+ extra_folders)."""
    _task_data(config, DATASETS, TASK_NAMES, tpu, only)
    _budget(config, tpu, finetune_steps=200)


def _budget(config: ml_collections.ConfigDict, tpu: bool, finetune_steps: int) -> None:
    """Windows, steps and protocols of the task-data experiments (full fine-tuning only; pre-training shared by
    the replicates on a CPU): 512-note windows, MidiBERT-Piano's unit, in both. On an accelerator the base model
    (not yet run); on a 2-core CPU the mini model of the `cpu` fine-tuning recipe with short runs (docs/results/
    pop909.md: its cost and what it found). `finetune_steps` sizes the CPU runs to the wall-time budget: 36
    runs of 300 steps for pop909 (2 h 44 min measured, 3.9 min a run), 72 of 200 for paper (about 3.5 h
    measured, 2.5 min a run)."""
    config.protocols = ("finetune",)
    config.pretrain.overrides.data.max_len = 512
    if tpu:
        config.pretrain.overrides.data.batch_size = 64
        config.pretrain.overrides.train = ml_collections.ConfigDict(
            {"steps": 10_000, "eval_every": 500, "checkpoint_every": 500})
        config.finetune.overrides.train = ml_collections.ConfigDict(
            {"epochs": 10, "steps": 0, "eval_every": 0, "patience": 3})
        return
    config.pretrain_seeds = (0,)
    pre = config.pretrain.overrides
    pre.model = ml_collections.ConfigDict({"position_embedding": "rope"})  # the recipe's encoder (fine-tuning follows)
    pre.data.batch_size = 8
    pre.train = ml_collections.ConfigDict({"steps": 600, "eval_every": 150, "checkpoint_every": 150})
    pre.optim = ml_collections.ConfigDict({"learning_rate": 5e-4, "warmup_steps": 50})
    config.finetune.overrides.train = ml_collections.ConfigDict(
        {"epochs": 0, "steps": finetune_steps, "eval_every": 100, "patience": 0})
    config.protocol_overrides.finetune.optim.learning_rate = 1e-3
