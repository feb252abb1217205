"""`midibert-jax`: one console entry point, one module a subcommand.

Each command module in `midibert_jax.commands` exposes `add_arguments(parser)` (cheap: no
jax import) and `run(args) -> int`. Errors the user can fix (`midibert_jax.errors.UserError`,
a missing file, a flag argparse rejects) become one clear line on stderr and exit status 2, not a
traceback or a usage block.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from midibert_jax import console
from midibert_jax.config_loading import split_overrides
from midibert_jax.errors import UserError

# subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("midibert_jax.commands.demo", "the README's main job: pre-train, fine-tune and evaluate on the demo corpus"),
    "tokenize": ("midibert_jax.commands.tokenize", "MIDI file -> Octuple token array (.npy)"),
    "detokenize": ("midibert_jax.commands.detokenize", "Octuple token array (.npy) -> MIDI file"),
    "prepare": ("midibert_jax.commands.prepare", "build a TFDS dataset (demo corpus or a MIDI folder)"),
    "pretrain": ("midibert_jax.commands.pretrain", "adversarial (or random-mask) pre-training"),
    "finetune": ("midibert_jax.commands.finetune", "fine-tune a classifier on a note- or sequence-level task"),
    "experiment": ("midibert_jax.commands.experiment",
                   "adversarial vs. random masking vs. no pre-training: every run, test metrics, paired tests"),
    "evaluate": ("midibert_jax.commands.evaluate", "evaluate a workdir: metrics JSON and confusion matrix"),
    "predict": ("midibert_jax.commands.predict", "run a fine-tuned model on your own MIDI file"),
    "compile-check": ("midibert_jax.commands.compile_check", "compile the training step and print its memory"),
    "import-torch": ("midibert_jax.commands.import_torch", "convert a published PyTorch checkpoint or an export"),
    "export": ("midibert_jax.commands.export",
               "a run's weights for PyTorch: the reference's module names, config.json, vocabulary, model card"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported in one line (the flag and what it takes), not under a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="midibert-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # a command whose module is not part of this build
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    console.line_buffered()
    try:
        argv, overrides = split_overrides(argv)
    except UserError as e:
        print(f"midibert-jax: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    args.config_overrides = overrides
    try:
        return int(args._run(args) or 0)
    except (UserError, FileNotFoundError) as e:
        print(f"midibert-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
