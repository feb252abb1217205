"""`midibert-jax export --workdir RUN --out DIR`: a run's weights for PyTorch and model hubs.

    midibert-jax export --workdir runs/melody --out exported/melody
    midibert-jax export --workdir runs/pretrain --step 4000 --out exported/pre --format torch --dtype bfloat16

Writes DIR/model.safetensors (or pytorch_model.bin) under the reference's module names, config.json
(BertConfig arguments, task, classes, max_len, vocabulary sizes), vocab.json and a model card,
README.md. RUN is a pre-training or fine-tuning workdir, or an import-torch folder; the step is the
best by validation accuracy unless --step says otherwise. `import-torch --checkpoint DIR` reads DIR back.
"""

from __future__ import annotations

import argparse

from midibert_jax.torch_layouts import EXPORT_DTYPES, EXPORT_FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a pre-training or fine-tuning run, or an import-torch folder")
    parser.add_argument("--step", default="best", help="checkpoint: best (default), latest or a step number")
    parser.add_argument("--out", required=True, help="output folder (must be empty, or an earlier export with --overwrite)")
    parser.add_argument("--format", default="safetensors", choices=EXPORT_FORMATS,
                        help="model.safetensors (default) or a torch.save state dict, pytorch_model.bin")
    parser.add_argument("--dtype", default="float32", choices=EXPORT_DTYPES, help="dtype of the written weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")


def run(args: argparse.Namespace) -> int:
    from midibert_jax import export  # pylint: disable=import-outside-toplevel

    result = export.export_run(args.workdir, args.out, which=args.step, fmt=args.format, dtype=args.dtype,
                               overwrite=args.overwrite)
    meta = result.meta
    step = meta["source"]["step"]
    print(f"exported {meta['kind']} ({' + '.join(meta['architecture'])}{'' if step is None else f', step {step}'}; "
          f"{result.num_parameters:,} parameters, {meta['dtype']}) -> {result.out}/{meta['weights']}")
    for group in meta["left_out"]:
        print(f"  note: left out '{group}': the reference has no counterpart")
    return 0
