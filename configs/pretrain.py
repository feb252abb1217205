r"""Adversarial-MidiBERT pre-training (and the random-mask MLM baseline, same trainer).

Run:
  midibert-jax pretrain --config configs/pretrain.py:tiny --workdir runs/tiny
  midibert-jax pretrain --config configs/pretrain.py:tiny,masking=random --workdir runs/tiny_random
  midibert-jax pretrain --config configs/pretrain.py:base --workdir gs://bucket/runs/base \
      --config.data.batch_size=256 --config.mesh.fsdp=8

`get_config(arg)`: a size (mini | tiny | base | large), then comma-separated modifiers:
  masking=adversarial|random   the masking policy (random: MidiBERT-Piano's 15% baseline, no masker)
  masker=shared|separate       the masker runs on the recoverer's encoder (reference) or has its own tiny one
  reference                    every quirk of the reference implementation on (REFERENCE.md §6, §8)
  data=demo|folder             the corpus (folder: set --config.data.folder=DIR)
  runlocal                     laptop size: short windows, small batches, few steps (the README's demo job)
  v4_32 | v5e_256              mesh and per-device batch for those TPU slices (see docs/scaling.md)

Every field is plain data with its meaning above it; the code that reads a block names it.
"""

from __future__ import annotations

import ml_collections

from configs.model import get_model_config
from configs.optim import get_optim_config
from configs.prepare import get_config as get_prepare_config
from configs.prepare import unread_fields as unread_data_fields

SIZES = ("mini", "tiny", "base", "large")


def _parse(arg: str | None) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in (arg or "tiny").split(",") if p.strip()]
    options = {}
    for p in parts[1:]:
        key, _, value = p.partition("=")
        options[key] = value or "True"
    return parts[0], options


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size, options = _parse(arg)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} in config arg {arg!r}; choose one of {SIZES}")
    known = {"masking", "masker", "reference", "data", "runlocal", "v4_32", "v5e_256"}
    if unknown := set(options) - known:
        raise ValueError(f"unknown config modifier(s) {sorted(unknown)} in {arg!r}; known: {sorted(known)}")
    reference = options.get("reference") == "True"
    runlocal = options.get("runlocal") == "True"

    config = ml_collections.ConfigDict()
    # Root of every random choice (init, dropout, masking, data order, mask-book updates).
    config.seed = 0

    # The encoder and heads (configs/model.py): sizes, positions, dtype, remat, masker mode, sharding rules.
    config.model = get_model_config(size, masker=options.get("masker", "shared"))

    # Device mesh: size of each axis, -1 = all remaining devices. Batches shard over data x fsdp.
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    # The dataset (configs/prepare.py; built on first use under data.data_dir).
    config.data = get_prepare_config(options.get("data", "demo"))
    # Examples per step over all processes (must divide by the number of processes and the data x fsdp size).
    config.data.batch_size = 8
    # Examples per evaluation step (all processes).
    config.data.eval_batch_size = 16
    # Threads reading examples per process (grain ReadOptions) and batches prefetched.
    config.data.read_threads = 2
    config.data.prefetch = 2

    # Masking policy (midibert_jax/train/masking.py).
    config.masking = ml_collections.ConfigDict()
    # 'adversarial': the masker's top-k eligible notes; 'random': 15% of non-pad notes uniformly (baseline).
    config.masking.policy = options.get("masking", "adversarial")
    # Per example, k_b = min(floor(u_b * #eligible_b), floor(cap * L)) with u_b ~ U(ratio_min, ratio_max).
    config.masking.ratio_min = 0.1
    config.masking.ratio_max = 0.3
    config.masking.cap = 0.15
    # Fraction of non-pad notes selected by the random policy and by evaluation.
    config.masking.random_ratio = 0.15
    # Of the selected notes: MASK row with this probability, a random row with the next, else unchanged.
    config.masking.mask_prob = 0.8
    config.masking.random_prob = 0.1
    # Seed of the fixed evaluation masking (the same notes every evaluation).
    config.masking.eval_seed = 1234
    # Reference quirks: pads are candidates and count in #eligible; random rows may hold special tokens.
    config.masking.reference_pads_as_candidates = reference
    config.masking.reference_random_any_token = reference

    # Losses (midibert_jax/train/losses.py).
    config.loss = ml_collections.ConfigDict()
    # Field weights of the recoverer loss: 'inverse_accuracy' (w_f ∝ 1/acc_f of the last evaluation) or 'uniform'.
    config.loss.field_weights = "inverse_accuracy"
    # Per example, floor(fraction * k_b) hardest and easiest replaced notes get masker targets 1 and 0.
    config.loss.masker_target_fraction = 0.3
    # Weight of the full-sequence reconstruction term over non-pad notes (the reference uses 1, over all positions).
    config.loss.full_sequence_weight = 1.0 if reference else 0.0
    # Reference bug: the masker targets of odd examples are inverted.
    config.loss.reference_sign_flip = reference
    # Reference quirk: the full-sequence term averages over every position, pads included.
    config.loss.reference_full_sequence_includes_pads = reference

    # The mask book (midibert_jax/train/mask_book.py): notes frozen because they cannot be inferred.
    config.mask_book = ml_collections.ConfigDict()
    # Update every `every` units ('epoch' or 'step'); 0 disables the book.
    config.mask_book.every = 5
    config.mask_book.unit = "epoch"
    # Per window: freeze the top floor(U(freeze_min, freeze_max) * #unfrozen) notes by masker score ...
    config.mask_book.freeze_min = 0.1
    config.mask_book.freeze_max = 0.3
    # ... then unfreeze each frozen note with probability u ~ U(0, unfreeze_max), u drawn per window.
    config.mask_book.unfreeze_max = 0.1
    # Reference quirk: pads can be frozen and count in #unfrozen.
    config.mask_book.reference_pads_as_candidates = reference

    # Optimizer (configs/optim.py, midibert_jax/train/optim.py): AdamW after global-norm clipping.
    config.optim = get_optim_config(1e-4, ml_collections.FieldReference(0))  # total_steps set below to train.steps

    # The training loop (midibert_jax/train/pretrain.py).
    config.train = ml_collections.ConfigDict()
    # Optimizer steps in total.
    config.train.steps = 100_000
    # Write metrics every N steps (TensorBoard + metrics.jsonl in the workdir).
    config.train.log_every = 50
    # Evaluate (fixed random 15% masking on the validation split) every N steps and at the end.
    config.train.eval_every = 2_000
    # At most this many evaluation batches (0: the whole validation split).
    config.train.eval_batches = 0
    # Save every N steps (asynchronously), keep the last N and the best by evaluation accuracy.
    config.train.checkpoint_every = 2_000
    config.train.keep_checkpoints = 3
    # Warm start when the workdir holds no checkpoint: a pre-training workdir or an imported checkpoint dir.
    config.train.init_from = ""
    config.optim.total_steps = config.train.get_ref("steps")

    if runlocal:
        config.data = get_prepare_config(options.get("data", "demo") + ",runlocal")
        config.data.batch_size = 8
        config.data.eval_batch_size = 16
        config.data.read_threads = 2
        config.data.prefetch = 2
        config.train.steps = 600
        config.train.log_every = 20
        config.train.eval_every = 100
        config.train.eval_batches = 8
        config.train.checkpoint_every = 200
        config.mask_book.every = 100
        config.mask_book.unit = "step"
        config.optim.learning_rate = 5e-4
        config.optim.schedule = "warmup_cosine"
        config.optim.warmup_steps = 50
        config.optim.end_learning_rate = 5e-5
    if "v4_32" in options or "v5e_256" in options:
        # Pod slices (docs/scaling.md): recompute each layer in the backward pass and compute in
        # bfloat16, so 16 (v4, 32 GiB HBM) or 8 (v5e, 16 GiB) windows of 1,024 notes fit per chip.
        config.model.remat = "full"
        config.model.dtype = "bfloat16"
    if "v4_32" in options:  # 16 chips on 4 hosts
        config.mesh.update({"data": -1, "fsdp": 4, "tensor": 1})
        config.data.batch_size = 256
    if "v5e_256" in options:  # 256 chips on 64 hosts
        config.mesh.update({"data": -1, "fsdp": 16, "tensor": 1})
        config.data.batch_size = 2048
        # Evaluation and mask-book batches must split over the 256 batch shards as well: 8 per chip.
        config.data.eval_batch_size = 2048
    if config.masking.policy == "random":
        config.mask_book.every = 0  # the random baseline has no mask book (only the adversarial policy reads it)
    # The model's max_len follows the windows' (a reference: overriding data.max_len changes both).
    config.model.max_len = config.data.get_ref("max_len")
    return config


# How to choose the variant that reads a data field, in this file's terms.
DATA_READERS = {
    "folder": "a folder of MIDI files needs the data=folder modifier (e.g. configs/pretrain.py:tiny,data=folder)",
    "demo": "only the demo corpus reads data.demo (the data=demo modifier, the default)",
    "beam": "only Beam builds read it: set --config.data.beam=True",
    "reference": "only the reference packing reads it: set --config.data.packing=reference",
    "tasks": "only the tasks corpus reads it (the data=tasks modifier)",
}
# Fields only the adversarial policy reads (the masker, its loss, the mask book).
ADVERSARIAL_ONLY = ("masking.ratio_min", "masking.ratio_max", "masking.cap", "loss.masker_target_fraction",
                    "loss.reference_sign_flip", "mask_book")


def unread_fields(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Fields this config's variant does not read -> what reads them (config_loading refuses overriding them)."""
    unread = {f"data.{key}": why for key, why in unread_data_fields(config.data, DATA_READERS).items()}
    if config.masking.policy != "adversarial":
        for key in ADVERSARIAL_ONLY:
            unread[key] = (f"masking.policy={config.masking.policy!r} has no masker: only the adversarial policy "
                           "reads it")
    return unread
