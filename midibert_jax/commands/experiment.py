"""`midibert-jax experiment --config configs/experiment.py --workdir runs/experiment [--config.KEY=VALUE ...]`.

Pre-trains every arm x seed (adversarial and random masking), fine-tunes every arm x seed x task x
protocol x fraction (probe and full fine-tuning, also without pre-training), evaluates each on its
test split, writes experiment.json, experiment.md (the tables as Markdown) and experiment.png, and prints
a table of means and paired differences (midibert_jax/experiment.py). Running again continues where it
stopped.
"""

from __future__ import annotations

import argparse

from midibert_jax import flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/experiment.py", help="PATH[:ARG] (default: %(default)s)")
    parser.add_argument("--workdir", default="runs/experiment",
                        help="folder of all the experiment's runs (local or gs://; default: %(default)s)")
    parser.add_argument("--max-runs", type=flags.int_type(0), default=None,
                        help="go through at most N runs of the plan this time (finished ones count); 0: only "
                             "aggregate the finished runs; an integer >= 0")
    parser.epilog = ("Override any config field with --config.KEY=VALUE, e.g. --config.seeds='(0,1)' "
                     "--config.pretrain.overrides.train.steps=300.")


def run(args: argparse.Namespace) -> int:
    from midibert_jax import config_loading, distributed  # pylint: disable=import-outside-toplevel

    config = config_loading.load_with_overrides(args.config, args.config_overrides)
    distributed.initialize_from_environment()
    from midibert_jax import experiment  # pylint: disable=import-outside-toplevel

    experiment.run_experiment(config, args.workdir, max_runs=args.max_runs)
    return 0
