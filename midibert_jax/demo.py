"""The README's main job, end to end, no download: what `midibert-jax demo` runs.

1. builds the demo tasks' datasets, then the demo corpus (scores shipped with music21) without the
   tasks' validation and test pieces, and pre-trains a tiny model on it with adversarial masking
   (configs/pretrain.py:tiny,runlocal);
2. fine-tunes the two demo tasks (note level: melody vs accompaniment; sequence level: which
   folk-tune collection) from the pre-trained encoder, and from scratch for comparison;
3. evaluates every fine-tuned model on its test split, writes `demo_summary.json` and prints where
   everything is.
With `random_baseline` it also pre-trains with random masking (the MidiBERT-Piano baseline, same
data, steps and evaluation) and prints both validation curves side by side.

Each stage is an ordinary run (its own workdir, resumable): running again continues or reuses what
is there. The folder may be local or a URL (gs://...): every file goes through `midibert_jax.paths`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from etils import epath

from midibert_jax import analysis, paths
from midibert_jax.data import manifest

TASKS = ("demo_note", "demo_sequence")
PRETRAIN_SPEC = "configs/pretrain.py:tiny,runlocal"
CURVE_METRIC = "eval/accuracy"  # validation masked-note accuracy (random 15% masking, fixed seed)


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What `midibert-jax demo` takes (its flags)."""

    workdir: str = "runs/demo"
    pretrain_steps: int = 1000
    finetune_epochs: int = 5
    max_len: int = 128
    scratch: bool = True  # also fine-tune from scratch, for comparison
    random_baseline: bool = False
    config_overrides: Sequence[tuple[str, str]] = ()  # (key, value) for the pre-training config


def held_out_pieces(dataset_dir: str | os.PathLike) -> set[str]:
    """Keys of the pieces in a built dataset's validation and test splits (from its manifest)."""
    records = manifest.Manifest.load(dataset_dir).records
    return {r.path for r in records if r.split in ("validation", "test")}


def curves(workdirs: dict[str, str], key: str = CURVE_METRIC) -> list[tuple[int, dict[str, float]]]:
    """[(step, {run: value})] of metric `key` (either name, `run.canonical_metric`) over the steps any run evaluated at."""
    series = {name: dict(zip(*analysis.read_metrics(w).get(key, ([], [])))) for name, w in workdirs.items()}
    steps = sorted({int(s) for values in series.values() for s in values})
    return [(step, {name: float(values[step]) for name, values in series.items() if step in values}) for step in steps]


def _pretrain_config(options: DemoOptions, spec: str = PRETRAIN_SPEC):
    from midibert_jax import config_loading  # pylint: disable=import-outside-toplevel

    # Laptop scale: short windows, a thousand steps, evaluation and mask-book updates every 50/100.
    overrides = [("data.max_len", str(options.max_len)), ("train.steps", str(options.pretrain_steps)),
                 ("train.eval_every", "50"), ("train.checkpoint_every", "100"), ("mask_book.every", "100"),
                 ("optim.warmup_steps", "30")] + list(options.config_overrides)
    return config_loading.load_with_overrides(spec, overrides)


def _finetune_config(options: DemoOptions, task: str, init: str, max_len: int, pre_dir: str):
    from midibert_jax import config_loading  # pylint: disable=import-outside-toplevel

    spec = f"configs/finetune.py:{task},runlocal" + (",scratch" if init == "scratch" else "")
    overrides = [("data.max_len", str(max_len)), ("train.epochs", str(options.finetune_epochs))]
    if init == "pretrained":
        overrides.append(("train.init_from", pre_dir))
    return config_loading.load_with_overrides(spec, overrides)


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Runs the three stages (see the module doc), prints the results; returns the summary written."""
    import jax  # pylint: disable=import-outside-toplevel

    from midibert_jax.config_validation import validate_pretrain  # pylint: disable=import-outside-toplevel
    from midibert_jax.data import prepare  # pylint: disable=import-outside-toplevel
    from midibert_jax import evaluate  # pylint: disable=import-outside-toplevel
    from midibert_jax.train import finetune, pretrain  # pylint: disable=import-outside-toplevel

    root = epath.Path(options.workdir)
    pre_dir = os.fspath(root / "pretrain")
    pre_config = _pretrain_config(options)
    validate_pretrain(pre_config, num_devices=jax.device_count(), num_processes=jax.process_count())
    max_len = pre_config.data.max_len

    # The demo tasks' validation and test pieces are held out of the pre-training corpus: the
    # comparison with from-scratch training is then on music that pre-training never saw.
    print("[demo] 0/3 building the demo tasks' datasets (their validation and test pieces stay out of pre-training)")
    held_out = set()
    for task in TASKS:
        held_out |= held_out_pieces(prepare.prepare(_finetune_config(options, task, "scratch", max_len, pre_dir).data))
    pre_config.data.demo.exclude = tuple(sorted(held_out))
    print(f"[demo] 1/3 pre-training the tiny model on the demo corpus ({len(held_out)} held-out works excluded) -> {pre_dir}")
    pre_result = pretrain.train_and_evaluate(pre_config, pre_dir)
    pre_dirs = {"adversarial": pre_dir}
    if options.random_baseline:
        random_dir = os.fspath(root / "pretrain_random")
        random_config = _pretrain_config(options, PRETRAIN_SPEC + ",masking=random")
        random_config.data.demo.exclude = pre_config.data.demo.exclude
        print(f"[demo] 1/3 baseline: the same pre-training with random masking -> {random_dir}")
        pretrain.train_and_evaluate(random_config, random_dir)
        pre_dirs["random"] = random_dir

    runs = {}
    for task in TASKS:
        for init in ("pretrained",) + (("scratch",) if options.scratch else ()):
            workdir = os.fspath(root / "finetune" / f"{task}_{init}")
            print(f"[demo] 2/3 fine-tuning {task} ({init}) -> {workdir}")
            finetune.train_and_evaluate(_finetune_config(options, task, init, max_len, pre_dir), workdir)
            result = evaluate.evaluate_workdir(workdir, "test")
            runs[f"{task}_{init}"] = {"workdir": workdir, **{k: result[k] for k in ("task", "accuracy", "macro_f1")},
                                      **({"piece_accuracy": result["piece_accuracy"]} if "piece_accuracy" in result else {})}

    pre_curves = curves(pre_dirs)
    adversarial = [v["adversarial"] for _, v in pre_curves if "adversarial" in v]
    eval_acc = (adversarial[0], adversarial[-1]) if adversarial else None
    summary = {"pretrain": {"workdir": pre_dir, "eval_acc_first_last": eval_acc, "final": pre_result,
                            "eval_acc_curves": {name: {str(step): v[name] for step, v in pre_curves if name in v}
                                                for name in pre_dirs}},
               "finetune": runs}
    summary_path = root / paths.DEMO_SUMMARY
    paths.write_json(summary_path, summary)
    _print_results(summary, pre_dirs, pre_curves, os.fspath(summary_path))
    return summary


def _print_results(summary: dict[str, Any], pre_dirs: dict[str, str], pre_curves, summary_path: str) -> None:
    pre_dir, eval_acc, runs = summary["pretrain"]["workdir"], summary["pretrain"]["eval_acc_first_last"], summary["finetune"]
    print("\n[demo] 3/3 results")
    if eval_acc:
        print(f"  pre-training: masked-note accuracy (validation) {eval_acc[0]:.3f} at the first evaluation -> "
              f"{eval_acc[1]:.3f} at the last")
    print(f"    checkpoints {pre_dir}/{paths.CHECKPOINTS}, metrics {pre_dir}/{paths.METRICS_FILE} "
          f"(TensorBoard: {pre_dir}/{paths.TENSORBOARD_DIR})")
    if len(pre_dirs) > 1:
        print("    validation masked-note accuracy (random 15% masking, fixed seed), per evaluation:")
        print("      step  " + "  ".join(f"{name:>11s}" for name in pre_dirs))
        for step, values in pre_curves:
            print(f"    {step:6d}  " + "  ".join(f"{values[n]:11.3f}" if n in values else " " * 11 for n in pre_dirs))
    print("  fine-tuning (test split):")
    for name, r in runs.items():
        piece = f", piece accuracy {r['piece_accuracy']:.3f}" if "piece_accuracy" in r else ""
        print(f"    {name:28s} accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}{piece}   "
              f"{r['workdir']}/{paths.eval_file('test')}")
    print(f"  summary: {summary_path}")
    print(f"  try: midibert-jax predict --workdir {runs[f'{TASKS[0]}_pretrained']['workdir']} your_song.mid -o tracks.mid")
