"""`midibert-jax finetune --config configs/finetune.py:melody --workdir DIR [--config.KEY=VALUE ...]`.

Builds the task's dataset on first use, takes the encoder from `--config.train.init_from` (a
pre-training workdir or an imported checkpoint; the 'scratch' modifier trains without), keeps the
best checkpoint by validation accuracy and stops early. Resumes automatically from DIR.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/finetune.py:melody", help="PATH[:ARG] (default: %(default)s)")
    parser.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics (local or gs://)")
    parser.epilog = (
        "Override any config field with --config.KEY=VALUE, e.g. --config.train.init_from=runs/pretrain "
        "--config.data.root=/data/POP909."
    )


def run(args: argparse.Namespace) -> int:
    from midibert_jax import config_loading, distributed  # pylint: disable=import-outside-toplevel

    config = config_loading.load_with_overrides(args.config, args.config_overrides)
    distributed.initialize_from_environment()
    from midibert_jax.train import finetune  # pylint: disable=import-outside-toplevel

    result = finetune.train_and_evaluate(config, args.workdir)
    if result.get("best_accuracy") is not None:
        how = {"early": "stopped early", "done": "finished", "preempted": "preempted"}.get(result["stopped"], "stopped")
        print(f"[finetune] {how}: best validation accuracy {result['best_accuracy']:.4f} at step {result['best_step']}; "
              f"checkpoints in {args.workdir}/checkpoints. Next: midibert-jax evaluate --workdir {args.workdir} --split test")
    return 0
