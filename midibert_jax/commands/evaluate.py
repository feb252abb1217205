"""`midibert-jax evaluate --workdir DIR [--split test]`: metrics of a trained run, written into DIR.

Fine-tuning runs: accuracy, macro-F1, per-class precision / recall / F1 and the confusion matrix on
the split (sequence tasks also per piece, window probabilities averaged), in DIR/eval_<split>.json
and DIR/eval_<split>_confusion.png. Pre-training runs: per-field masked-token accuracy on the
validation split, in DIR/eval_validation.json. The best checkpoint (by validation accuracy) is used
unless --step says otherwise.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a fine-tuning or pre-training run folder")
    parser.add_argument("--split", default=None, choices=("train", "validation", "test"),
                        help="fine-tuning: which split (default test); pre-training runs use validation")
    parser.add_argument("--step", default="best", help="checkpoint: best (default), latest or a step number")
    parser.add_argument("--max-batches", type=int, default=0, help="evaluate at most this many batches (0: all)")
    parser.add_argument("--views", type=int, default=None,
                        help="note-level tasks: predict every note in this many windows, cut at different offsets, "
                             "and average (default: the run's train.eval_views)")


def _print_finetune(result: dict, workdir: str) -> None:
    split = result["split"]
    print(f"[evaluate] {result['task']} {split} (step {result['step']}): accuracy {result['accuracy']:.4f}, "
          f"macro-F1 {result['macro_f1']:.4f} over {result['count']} "
          f"{'windows' if 'piece_accuracy' in result else 'notes'}"
          + (f", {result['eval_views']} views a note" if result.get("eval_views", 1) > 1 else ""))
    if "piece_accuracy" in result:
        print(f"[evaluate] piece accuracy {result['piece_accuracy']:.4f}, piece macro-F1 "
              f"{result['piece_macro_f1']:.4f} over {result['num_pieces']} pieces")
    width = max(len(n) for n in result["per_class"])
    print(f"  {'class':<{width}}  precision  recall     f1  support")
    for name, m in result["per_class"].items():
        print(f"  {name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {m['support']:7d}")
    print(f"[evaluate] wrote {workdir}/eval_{split}.json and eval_{split}_confusion.png")


def run(args: argparse.Namespace) -> int:
    from midibert_jax import distributed  # pylint: disable=import-outside-toplevel

    distributed.initialize_from_environment()
    from midibert_jax import evaluate  # pylint: disable=import-outside-toplevel
    from midibert_jax.run import canonical_metric  # pylint: disable=import-outside-toplevel

    result = evaluate.evaluate_workdir(args.workdir, args.split, which=args.step, max_batches=args.max_batches,
                                       views=getattr(args, "views", None))
    if result.get("kind") == "pretrain":
        scalars = {canonical_metric(k): v for k, v in result.items() if isinstance(v, float)}
        fields = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in scalars.items() if k.startswith("eval/accuracy/"))
        print(f"[evaluate] pre-training run, validation (step {result['step']}): masked-token accuracy "
              f"{scalars['eval/accuracy']:.4f} ({fields}); wrote {args.workdir}/eval_validation.json")
    else:
        _print_finetune(result, args.workdir)
    return 0
