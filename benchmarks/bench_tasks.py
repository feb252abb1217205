r"""The paper's tasks on their real data, from scratch with a task's shipped config: accuracy, time, curves.

    python benchmarks/bench_tasks.py --tasks melody,velocity --seeds 0,1,2 --workdir runs/bench_tasks
    python benchmarks/bench_tasks.py --tasks composer,emotion --modifiers cpu --workdir runs/bench_tasks

For each task and seed: `finetune --config configs/finetune.py:<task>,<modifiers>,scratch` with only
`seed`, `data.root` (from --roots, default ../shared/data beside the checkout) and the workdir set, then
`evaluate --split test` on the best validation step. Every run is an ordinary workdir, resumed or reused
when the script runs again. Prints per task: test accuracy (window and piece accuracy for sequence tasks)
mean ± sd over the seeds, each run's wall time (compilation, training, validation), the baselines on the
same test split (majority, skyline, feature classifier) and the published numbers; writes the JSON
(every run, its validation accuracy against wall-clock seconds) and a time-to-accuracy plot, with the
CPU's ISA flags. Nothing here is a timed unit test: the figures are this machine's.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cpu_info import cpu_info, describe  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from results_io import write_results  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
DEFAULT_ROOTS = {"pop909": SHARED / "POP909", "pianist8": SHARED / "Pianist8", "emopia": SHARED / "EMOPIA_1.0"}
TASK_DATASETS = {"melody": "pop909", "velocity": "pop909", "composer": "pianist8", "emotion": "emopia"}


def run_task(task: str, seed: int, root: str, workdir: pathlib.Path, modifiers: str, overrides) -> dict:
    """Trains (or resumes / reuses) one run and evaluates its best step on the test split."""
    from midibert_jax import analysis, evaluate, paths  # pylint: disable=import-outside-toplevel
    from midibert_jax.config_loading import apply_override, load_config  # pylint: disable=import-outside-toplevel
    from midibert_jax.train import finetune  # pylint: disable=import-outside-toplevel

    spec = f"configs/finetune.py:{task}" + (f",{modifiers}" if modifiers else "") + ",scratch"
    config = load_config(spec)
    config.seed = seed
    config.data.root = root
    for key, value in overrides:
        apply_override(config, key, value)
    start = time.monotonic()
    result = finetune.train_and_evaluate(config, str(workdir))
    test_path = paths.resolve(workdir) / paths.eval_file("test")
    test = evaluate.evaluate_workdir(str(workdir), "test") if not test_path.exists() else paths.read_json(test_path)
    note_level = "piece_accuracy" not in test
    if test.get("step") != result["best_step"] or note_level and test.get("eval_views", 1) != config.train.eval_views:
        test = evaluate.evaluate_workdir(str(workdir), "test")  # another step, or views (evaluations before views: 1)
    seconds, accuracy = analysis.time_to_accuracy(str(workdir))
    return {"task": task, "seed": seed, "spec": spec, "workdir": str(workdir), "best_step": result["best_step"],
            "validation_best_accuracy": result["best_accuracy"], "stopped": result["stopped"],
            "test": {k: test[k] for k in ("accuracy", "macro_f1", "piece_accuracy", "piece_macro_f1", "eval_views")
                     if k in test},
            "confusion_matrix": test.get("confusion_matrix"),
            "run_seconds": float(seconds[-1]) if len(seconds) else None,
            "this_invocation_seconds": round(time.monotonic() - start, 1),
            "curve": {"seconds": seconds.tolist(), "validation_accuracy": accuracy.tolist()}}


def summarize(runs: list[dict], task: str) -> dict:
    mine = [r for r in runs if r["task"] == task]
    out = {"n": len(mine)}
    for metric in ("accuracy", "macro_f1", "piece_accuracy"):
        values = np.array([r["test"][metric] for r in mine if metric in r["test"]])
        if len(values):
            out[metric] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else None}
    times = [r["run_seconds"] for r in mine if r["run_seconds"] is not None]
    out["run_seconds"] = {"mean": float(np.mean(times)), "max": float(np.max(times))} if times else None
    return out


def task_baselines(workdir: str) -> dict:
    """The baselines of the dataset a run trained on (its config's data block)."""
    from midibert_jax import baselines, run as run_lib  # pylint: disable=import-outside-toplevel
    from midibert_jax.data import prepare  # pylint: disable=import-outside-toplevel

    with run_lib.Run.open(workdir) as run:
        data = run.config.data
    return baselines.evaluate_baselines(os.fspath(prepare.make_builder(data).data_path))


def plot(runs: list[dict], tasks: list[str], machine: str, path: pathlib.Path) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in runs if r["task"] == task):
            ax.plot(np.array(r["curve"]["seconds"]) / 60, r["curve"]["validation_accuracy"], marker="o", markersize=2,
                    label=f"seed {r['seed']}")
        ax.set_title(task)
        ax.set_xlabel("wall-clock minutes")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(machine, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="melody,velocity", help="comma-separated: melody, velocity, composer, emotion")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modifiers", default="cpu", help="configs/finetune.py modifiers after the task (e.g. cpu)")
    parser.add_argument("--workdir", default="runs/bench_tasks")
    parser.add_argument("--root", action="append", default=[], metavar="DATASET=DIR",
                        help="a dataset's folder (pop909, pianist8, emopia); default ../shared/data/...")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tasks.json"))
    args = parser.parse_args(argv)

    roots = {k: str(v) for k, v in DEFAULT_ROOTS.items()}
    roots.update(dict(r.split("=", 1) for r in args.root))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if unknown := set(tasks) - set(TASK_DATASETS):
        parser.error(f"unknown task(s) {sorted(unknown)}; choose from {sorted(TASK_DATASETS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = [tuple(s.split("=", 1)) for s in args.set]
    info = cpu_info()
    machine = describe(info)
    print(f"[bench_tasks] {machine}")
    runs = []
    for task in tasks:
        for seed in seeds:
            workdir = pathlib.Path(args.workdir) / f"{task}_{args.modifiers or 'default'}_s{seed}"
            print(f"[bench_tasks] {task} seed {seed} -> {workdir}", flush=True)
            runs.append(run_task(task, seed, roots[TASK_DATASETS[task]], workdir, args.modifiers, overrides))
    from midibert_jax.baselines import PUBLISHED  # pylint: disable=import-outside-toplevel

    report = {"machine": info, "modifiers": args.modifiers, "overrides": args.set, "runs": runs, "tasks": {}}
    print(f"\n[bench_tasks] test accuracy, mean ± sd over seeds {seeds}; {machine}")
    for task in tasks:
        s = summarize(runs, task)
        b = task_baselines(next(r["workdir"] for r in runs if r["task"] == task))
        report["tasks"][task] = {"summary": s, "baselines": b["baselines"], "published": PUBLISHED.get(task, {})}
        acc = s["accuracy"]
        piece = f", piece {s['piece_accuracy']['mean']:.4f}" if "piece_accuracy" in s else ""
        sd = f" ± {acc['sd']:.4f}" if acc["sd"] is not None else ""
        print(f"  {task:9s} {acc['mean']:.4f}{sd}{piece} (n={s['n']}); run time mean {s['run_seconds']['mean'] / 60:.1f} "
              f"min, max {s['run_seconds']['max'] / 60:.1f} min")
        print("            baselines: " + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in b["baselines"].items())
              + "; published: " + ", ".join(f"{k} {v:.2f}%" for k, v in PUBLISHED.get(task, {}).items()))
    out = write_results(args.out, report)
    plot(runs, tasks, machine, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
