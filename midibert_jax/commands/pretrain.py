"""`midibert-jax pretrain --config configs/pretrain.py:tiny --workdir DIR [--config.KEY=VALUE ...]`.

Resumes automatically from DIR's checkpoints. Multi-process runs are joined from the launcher's
environment (midibert_jax.distributed) before any device is touched.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/pretrain.py:tiny", help="PATH[:ARG] (default: %(default)s)")
    parser.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics (local or gs://)")
    parser.epilog = "Override any config field with --config.KEY=VALUE, e.g. --config.train.steps=1000."


def run(args: argparse.Namespace) -> int:
    from midibert_jax import config_loading, distributed  # pylint: disable=import-outside-toplevel

    config = config_loading.load_with_overrides(args.config, args.config_overrides)
    distributed.initialize_from_environment()
    from midibert_jax.train import pretrain  # pylint: disable=import-outside-toplevel

    result = pretrain.train_and_evaluate(config, args.workdir)
    if "eval/accuracy" in result:
        print(f"[pretrain] done: eval accuracy {result['eval/accuracy']:.4f}; checkpoints in "
              f"{args.workdir}/checkpoints, metrics in {args.workdir}/metrics.jsonl")
    return 0
