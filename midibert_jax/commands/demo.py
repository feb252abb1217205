"""`midibert-jax demo --workdir runs/demo`: the README's main job, end to end, no download.

1. builds the demo tasks' datasets, then the demo corpus (scores shipped with music21) without the
   tasks' validation and test pieces, and pre-trains the tiny model on it with adversarial masking
   (configs/pretrain.py:tiny,runlocal);
2. fine-tunes the two demo tasks (note level: melody vs accompaniment; sequence level: which
   folk-tune collection) from the pre-trained encoder, and from scratch for comparison;
3. evaluates every fine-tuned model on its test split and prints where everything is.
With `--random-baseline` it also pre-trains with random masking (the MidiBERT-Piano baseline, same
data, steps and evaluation) and prints both validation curves side by side.

Each stage is an ordinary run (its own workdir, resumable): rerunning the command continues or
reuses what is there. `--config.*` overrides go to the pre-training config.
"""

from __future__ import annotations

import argparse
import json
import os

TASKS = ("demo_note", "demo_sequence")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="folder of all the demo's runs (default: %(default)s)")
    parser.add_argument("--pretrain-steps", type=int, default=1000, help="pre-training steps (default: %(default)s)")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="fine-tuning epochs (default: %(default)s)")
    parser.add_argument("--max-len", type=int, default=128, help="notes per window (default: %(default)s)")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch comparison runs")
    parser.add_argument("--random-baseline", action="store_true",
                        help="also pre-train with random masking (MidiBERT-Piano's MLM) on the same data and steps, "
                             "and print both validation curves side by side")


def held_out_pieces(dataset_dir) -> set[str]:
    """Keys of the pieces in a built dataset's validation and test splits (from its manifest)."""
    with open(os.path.join(os.fspath(dataset_dir), "manifest.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["path"] for r in rows if r.get("split") in ("validation", "test")}


def _curves(workdirs: dict[str, str], key: str = "eval/accuracy") -> list[tuple[int, dict[str, float]]]:
    """[(step, {run: value})] of `key` over the steps any run evaluated at."""
    from midibert_jax import analysis  # pylint: disable=import-outside-toplevel

    series = {name: dict(zip(*analysis.read_metrics(w).get(key, ([], [])))) for name, w in workdirs.items()}
    steps = sorted({int(s) for values in series.values() for s in values})
    return [(step, {name: float(values[step]) for name, values in series.items() if step in values}) for step in steps]


def run(args: argparse.Namespace) -> int:
    from midibert_jax import config_loading, distributed  # pylint: disable=import-outside-toplevel

    distributed.initialize_from_environment()
    import jax  # pylint: disable=import-outside-toplevel

    from midibert_jax import evaluate  # pylint: disable=import-outside-toplevel
    from midibert_jax.config_validation import validate_pretrain  # pylint: disable=import-outside-toplevel
    from midibert_jax.data import tasks  # pylint: disable=import-outside-toplevel
    from midibert_jax.train import finetune, pretrain  # pylint: disable=import-outside-toplevel

    root = args.workdir
    pre_dir = os.path.join(root, "pretrain")
    # Laptop scale: short windows, a thousand steps, evaluation and mask-book updates every 50/100.
    overrides = [("data.max_len", str(args.max_len)), ("train.steps", str(args.pretrain_steps)),
                 ("train.eval_every", "50"), ("train.checkpoint_every", "100"), ("mask_book.every", "100"),
                 ("optim.warmup_steps", "30")] + list(args.config_overrides)
    pre_config = config_loading.load_with_overrides("configs/pretrain.py:tiny,runlocal", overrides)
    validate_pretrain(pre_config, num_devices=jax.device_count(), num_processes=jax.process_count())

    def finetune_config(task: str, init: str):
        spec = f"configs/finetune.py:{task},runlocal" + (",scratch" if init == "scratch" else "")
        ft_overrides = [("data.max_len", str(pre_config.data.max_len)), ("train.epochs", str(args.finetune_epochs))]
        if init == "pretrained":
            ft_overrides.append(("train.init_from", pre_dir))
        return config_loading.load_with_overrides(spec, ft_overrides)

    # The demo tasks' validation and test pieces are held out of the pre-training corpus: the
    # comparison with from-scratch training is then on music that pre-training never saw.
    print("[demo] 0/3 building the demo tasks' datasets (their validation and test pieces stay out of pre-training)")
    held_out = set()
    for task in TASKS:
        held_out |= held_out_pieces(tasks.prepare_task(finetune_config(task, "scratch").data))
    pre_config.data.demo.exclude = tuple(sorted(held_out))
    print(f"[demo] 1/3 pre-training the tiny model on the demo corpus ({len(held_out)} held-out works excluded) -> {pre_dir}")
    pre_result = pretrain.train_and_evaluate(pre_config, pre_dir)
    pre_dirs = {"adversarial": pre_dir}
    if args.random_baseline:
        random_dir = os.path.join(root, "pretrain_random")
        random_config = config_loading.load_with_overrides("configs/pretrain.py:tiny,runlocal,masking=random", overrides)
        random_config.data.demo.exclude = pre_config.data.demo.exclude
        print(f"[demo] 1/3 baseline: the same pre-training with random masking -> {random_dir}")
        pretrain.train_and_evaluate(random_config, random_dir)
        pre_dirs["random"] = random_dir

    runs = {}
    for task in TASKS:
        for init in ("pretrained",) + (() if args.no_scratch else ("scratch",)):
            config = finetune_config(task, init)
            workdir = os.path.join(root, "finetune", f"{task}_{init}")
            print(f"[demo] 2/3 fine-tuning {task} ({init}) -> {workdir}")
            finetune.train_and_evaluate(config, workdir)
            result = evaluate.evaluate_workdir(workdir, "test")
            runs[f"{task}_{init}"] = {"workdir": workdir, **{k: result[k] for k in ("task", "accuracy", "macro_f1")},
                                      **({"piece_accuracy": result["piece_accuracy"]} if "piece_accuracy" in result else {})}

    curves = _curves(pre_dirs)
    adversarial = [v["adversarial"] for _, v in curves if "adversarial" in v]
    eval_acc = (adversarial[0], adversarial[-1]) if adversarial else None
    summary = {"pretrain": {"workdir": pre_dir, "eval_acc_first_last": eval_acc, "final": pre_result,
                            "eval_acc_curves": {name: {str(step): v[name] for step, v in curves if name in v}
                                                for name in pre_dirs}},
               "finetune": runs}
    with open(os.path.join(root, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    print("\n[demo] 3/3 results")
    if eval_acc:
        print(f"  pre-training: masked-note accuracy (validation) {eval_acc[0]:.3f} at the first evaluation -> "
              f"{eval_acc[1]:.3f} at the last")
    print(f"    checkpoints {pre_dir}/checkpoints, metrics {pre_dir}/metrics.jsonl (TensorBoard: {pre_dir}/tensorboard)")
    if len(pre_dirs) > 1:
        print("    validation masked-note accuracy (random 15% masking, fixed seed), per evaluation:")
        print("      step  " + "  ".join(f"{name:>11s}" for name in pre_dirs))
        for step, values in curves:
            print(f"    {step:6d}  " + "  ".join(f"{values[n]:11.3f}" if n in values else " " * 11 for n in pre_dirs))
    print("  fine-tuning (test split):")
    for name, r in runs.items():
        piece = f", piece accuracy {r['piece_accuracy']:.3f}" if "piece_accuracy" in r else ""
        print(f"    {name:28s} accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}{piece}   {r['workdir']}/eval_test.json")
    print(f"  summary: {os.path.join(root, 'demo_summary.json')}")
    print(f"  try: midibert-jax predict --workdir {runs[f'{TASKS[0]}_pretrained']['workdir']} your_song.mid -o tracks.mid")
    return 0
