"""`midibert-jax import-torch`: a published PyTorch checkpoint, or an export -> our orbax checkpoint + config.json.

    midibert-jax import-torch --checkpoint pretrain_model.pth --kind pretrain --out imported/pretrain
    midibert-jax import-torch --checkpoint exported/melody --out imported/melody

A state-dict file (.pth, .bin, .safetensors): the sizes (layers, hidden, FFN, max_len, position type)
are read from the weights; the rest of the config comes from configs/model.py's variant with the same
hidden size (base when none matches). The head count is not stored in a state dict: it defaults to
hidden // 64 (true of tiny/base/large). A folder written by `midibert-jax export` brings its kind and
its whole model config (heads, layer layout included) in its config.json.
"""

from __future__ import annotations

import argparse
import os

from midibert_jax.errors import UserError
from midibert_jax.torch_layouts import KINDS


class ImportTorchError(UserError):
    """Arguments that do not fit the checkpoint given."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a .pth/.bin or .safetensors state dict (bare or {'state_dict': ...}), or an export folder")
    parser.add_argument("--kind", choices=KINDS, default=None,
                        help="module layout of the checkpoint (required for a file; an export folder records it)")
    parser.add_argument("--out", required=True, help="output directory (params/ + config.json)")
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads (default: hidden // 64)")
    parser.add_argument(
        "--no-scan-layers", action="store_true", help="store one subtree per layer instead of stacked layers"
    )


def _base_config(state, kind):
    from midibert_jax.model import config_io, torch_import  # pylint: disable=import-outside-toplevel

    prefix = "" if kind == "encoder" else "midibert."
    state = torch_import.strip_module_prefix(state)
    if prefix + "in_linear.weight" not in state:
        raise SystemExit(f"{prefix}in_linear.weight not found: is this a '{kind}' checkpoint?")
    hidden = int(state[prefix + "in_linear.weight"].shape[0])
    size = next((name for name, s in config_io.model_sizes().items() if s[1] == hidden), "base")
    return config_io.default_model_config(size)


def _convert(args: argparse.Namespace):
    from midibert_jax.model import torch_export, torch_import  # pylint: disable=import-outside-toplevel

    if os.path.isdir(args.checkpoint):
        state, meta = torch_export.read_export(args.checkpoint)
        if args.kind not in (None, meta["kind"]):
            raise ImportTorchError(f"{args.checkpoint}: an export of kind '{meta['kind']}', not '{args.kind}'")
        if args.num_heads is not None:
            raise ImportTorchError(f"{args.checkpoint}: an export records its heads; drop --num-heads")
        return torch_export.convert_export(state, meta, path=args.checkpoint,
                                           scan_layers=False if args.no_scan_layers else None)
    if args.kind is None:
        raise ImportTorchError(f"{args.checkpoint}: --kind is required for a state-dict file (choose from {KINDS})")
    state = torch_import.load_state_dict(args.checkpoint)
    base = _base_config(state, args.kind)
    base.scan_layers = not args.no_scan_layers
    return torch_import.convert(state, args.kind, base, args.num_heads)


def run(args: argparse.Namespace) -> int:
    import jax  # pylint: disable=import-outside-toplevel,unused-import

    from midibert_jax.model import imported  # pylint: disable=import-outside-toplevel

    conversion = _convert(args)
    out = imported.save_imported(
        args.out,
        conversion.params,
        conversion.config,
        kind=conversion.kind,
        num_classes=conversion.num_classes,
        ignored=conversion.ignored,
        source=str(args.checkpoint),
    )
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(conversion.params))
    c = conversion.config
    print(
        f"imported {conversion.kind} ({c.size}: {c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, "
        f"{c.position_embedding}, max_len {c.max_len}; {n_params:,} parameters) -> {out}"
    )
    for name in conversion.ignored:
        print(f"  note: ignored unused entry {name}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="midibert-jax import-torch", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
