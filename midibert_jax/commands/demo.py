"""`midibert-jax demo --workdir runs/demo`: the README's main job, end to end, no download.

A small experiment on the demo corpus (scores shipped with music21): adversarial pre-training of the
mini model, then the two demo tasks fine-tuned from it and from a random encoder over several seeds,
evaluated on their test splits, with the verdict on whether pre-training paid (midibert_jax/demo.py).
`--config.*` overrides go to the experiment config (configs/experiment.py).
"""

from __future__ import annotations

import argparse


def _int_flag(field: str, what: str) -> dict:
    """add_argument's type, default and help of an integer flag: its range (midibert_jax.demo.LIMITS) checked as parsed."""
    from midibert_jax import demo, flags  # pylint: disable=import-outside-toplevel

    limits = demo.LIMITS[field]
    return {"type": flags.int_type(*limits), "default": getattr(demo.DemoOptions, field),
            "help": f"{what}; {flags.range_text(*limits)} (default: %(default)s)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="folder of all the demo's runs (default: %(default)s)")
    parser.add_argument("--pretrain-steps", **_int_flag(
        "pretrain_steps", "pre-training steps (warmup is cut to a tenth of a shorter run; evaluation and checkpoint "
        "intervals longer than the run act at its end)"))
    parser.add_argument("--seeds", **_int_flag("seeds", "fine-tuning seeds per arm (1: no paired test)"))
    parser.add_argument("--max-len", **_int_flag("max_len", "notes per window"))
    parser.add_argument("--protocols", default="probe",
                        help="comma-separated: probe (the head on the frozen encoder), finetune (every weight trained) "
                             "(default: %(default)s)")
    parser.add_argument("--no-scratch", action="store_true",
                        help="skip the comparison with a random encoder (then there is no verdict)")
    parser.add_argument("--random-baseline", action="store_true",
                        help="also pre-train with random masking (MidiBERT-Piano's MLM) on the same data and steps, "
                             "fine-tune it the same way, and print both validation curves side by side")


def run(args: argparse.Namespace) -> int:
    from midibert_jax import demo, distributed  # pylint: disable=import-outside-toplevel

    options = demo.DemoOptions(
        workdir=args.workdir, pretrain_steps=args.pretrain_steps, seeds=args.seeds, max_len=args.max_len,
        protocols=tuple(p.strip() for p in args.protocols.split(",") if p.strip()),
        scratch=not args.no_scratch, random_baseline=args.random_baseline,
        config_overrides=tuple(args.config_overrides),
    )
    distributed.initialize_from_environment()
    demo.run_demo(options)
    return 0
