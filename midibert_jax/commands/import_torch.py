"""`midibert-jax import-torch`: a published PyTorch checkpoint -> our orbax checkpoint + config.json.

    midibert-jax import-torch --checkpoint pretrain_model.pth --kind pretrain --out imported/pretrain

The sizes (layers, hidden, FFN, max_len, position type) are read from the weights; the rest of the
config comes from configs/model.py's variant with the same hidden size (base when none matches).
The head count is not stored in a state dict: it defaults to hidden // 64 (true of tiny/base/large).
"""

from __future__ import annotations

import argparse

from midibert_jax.torch_layouts import KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="PyTorch .pth file (a state dict or {'state_dict': ...})")
    parser.add_argument("--kind", required=True, choices=KINDS, help="module layout of the checkpoint")
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


def run(args: argparse.Namespace) -> int:
    import jax  # pylint: disable=import-outside-toplevel,unused-import

    from midibert_jax.model import imported, torch_import  # pylint: disable=import-outside-toplevel

    state = torch_import.load_state_dict(args.checkpoint)
    base = _base_config(state, args.kind)
    base.scan_layers = not args.no_scan_layers
    conversion = torch_import.convert(state, args.kind, base, args.num_heads)
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
        f"imported {args.kind} ({c.size}: {c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, "
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
