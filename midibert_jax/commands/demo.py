"""`midibert-jax demo --workdir runs/demo`: the README's main job, end to end, no download.

Pre-trains a tiny model on the demo corpus (scores shipped with music21), fine-tunes the two demo
tasks from it (and from scratch, for comparison), evaluates them and prints where everything is
(midibert_jax/demo.py). `--config.*` overrides go to the pre-training config.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="folder of all the demo's runs (default: %(default)s)")
    parser.add_argument("--pretrain-steps", type=int, default=1000, help="pre-training steps (default: %(default)s)")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="fine-tuning epochs (default: %(default)s)")
    parser.add_argument("--max-len", type=int, default=128, help="notes per window (default: %(default)s)")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch comparison runs")
    parser.add_argument("--random-baseline", action="store_true",
                        help="also pre-train with random masking (MidiBERT-Piano's MLM) on the same data and steps, "
                             "and print both validation curves side by side")


def run(args: argparse.Namespace) -> int:
    from midibert_jax import demo, distributed  # pylint: disable=import-outside-toplevel

    distributed.initialize_from_environment()
    demo.run_demo(demo.DemoOptions(
        workdir=args.workdir, pretrain_steps=args.pretrain_steps, finetune_epochs=args.finetune_epochs,
        max_len=args.max_len, scratch=not args.no_scratch, random_baseline=args.random_baseline,
        config_overrides=tuple(args.config_overrides),
    ))
    return 0
