"""The README's main job, end to end, no download: what `midibert-jax demo` runs.

A small experiment (midibert_jax/experiment.py) on the demo corpus, the whole of music21's corpus
except the four collections kept for evaluation:
1. builds the demo tasks' datasets, then the demo corpus without the tasks' validation and test
   pieces, and pre-trains the mini model on it with adversarial masking (one pre-training seed);
2. fine-tunes the two demo tasks (note level: melody vs accompaniment; sequence level: which folk-tune
   collection) from the pre-trained encoder and from a random one ('none'), three fine-tuning seeds
   each, with a tenth of the training pieces (the low-label setting, where pre-training should matter
   most), as a probe: the head trained on the frozen encoder (`protocols` adds full fine-tuning);
3. evaluates every run's best checkpoint (chosen on validation) on the test split, prints mean ± sd per
   arm and the pre-trained - none margin beside the seed spread, and says plainly where pre-training did
   not pay. Writes experiment.json/.png and demo_summary.json.
With `random_baseline` it also pre-trains with random masking (the MidiBERT-Piano baseline, same
data, steps and evaluation), fine-tunes it the same way and prints both validation curves side by side.

Each stage is an ordinary run (its own workdir, resumable): running again continues or reuses what
is there. The folder may be local or a URL (gs://...): every file goes through `midibert_jax.paths`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import ml_collections
from etils import epath

from midibert_jax import analysis, paths

TASKS = ("demo_note", "demo_sequence")
CURVE_METRIC = "eval/accuracy"  # validation masked-note accuracy (random 15% masking, fixed seed)
VERDICT_METRIC = "accuracy"
ALPHA = 0.05  # a verdict other than 'unclear' needs the paired t-test's p below this


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What `midibert-jax demo` takes (its flags)."""

    workdir: str = "runs/demo"
    pretrain_steps: int = 800  # what the 25-minute budget allows; validation accuracy is still rising there
    seeds: int = 3  # fine-tuning seeds per arm
    max_len: int = 128
    # The probe (the head on the frozen encoder) measures what pre-training learned most directly and
    # costs half a full fine-tuning run; add 'finetune' for full fine-tuning too (12 more runs of ~45 s
    # each on the 2-core AVX2 machine of docs/experiment.md: about 9 more minutes).
    protocols: Sequence[str] = ("probe",)
    scratch: bool = True  # the 'none' arm (a random encoder), for comparison
    random_baseline: bool = False
    config_overrides: Sequence[tuple[str, str]] = ()  # (key, value) for the experiment config


def curves(workdirs: dict[str, str], key: str = CURVE_METRIC) -> list[tuple[int, dict[str, float]]]:
    """[(step, {run: value})] of metric `key` (either name, `run.canonical_metric`) over the steps any run evaluated at."""
    series = {name: dict(zip(*analysis.read_metrics(w).get(key, ([], [])))) for name, w in workdirs.items()}
    steps = sorted({int(s) for values in series.values() for s in values})
    return [(step, {name: float(values[step]) for name, values in series.items() if step in values}) for step in steps]


def demo_config(options: DemoOptions) -> ml_collections.ConfigDict:
    """The experiment the demo runs (configs/experiment.py:runlocal, cut to the demo's budget)."""
    from midibert_jax import config_loading  # pylint: disable=import-outside-toplevel

    config = config_loading.load_config("configs/experiment.py:runlocal")
    with config.unlocked():
        config.arms = ("adversarial",) + (("random",) if options.random_baseline else ()) + (
            ("none",) if options.scratch else ())
        config.seeds = tuple(range(options.seeds))
        config.pretrain_seeds = (0,)
        # The low-label protocols (a tenth of the training pieces): where pre-training matters most.
        config.fractions = (0.1,)
        config.protocols = tuple(options.protocols)
        config.pretrain.overrides.train.steps = options.pretrain_steps
        config.pretrain.overrides.data.max_len = options.max_len
    for key, value in options.config_overrides:
        config_loading.apply_override(config, key, value)
    return config


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Runs the experiment (see the module doc), prints the verdict; returns the summary written."""
    from midibert_jax import experiment  # pylint: disable=import-outside-toplevel

    root = epath.Path(options.workdir)
    print("[demo] a small experiment: adversarial pre-training of the mini model on the demo corpus, then the two "
          "demo tasks fine-tuned from it and from a random encoder, several seeds each")
    report = experiment.run_experiment(demo_config(options), options.workdir)
    pre_dirs = {r["arm"]: r["workdir"] for r in report["pretrain"]}
    pre_curves = curves(pre_dirs)
    summary = {"experiment": os.fspath(root / paths.EXPERIMENT_FILE), "plot": os.fspath(root / paths.EXPERIMENT_PLOT),
               "pretrain": {arm: {"workdir": w, "eval_acc_curve": {str(s): v[arm] for s, v in pre_curves if arm in v}}
                            for arm, w in pre_dirs.items()},
               "verdict": verdicts(report), "complete": report["complete"]}
    summary_path = root / paths.DEMO_SUMMARY
    paths.write_json(summary_path, summary)
    _print_results(summary, report, pre_curves, os.fspath(summary_path))
    return summary


def verdicts(report: dict[str, Any], metric: str = VERDICT_METRIC) -> list[dict[str, Any]]:
    """Per task x protocol x fraction and pre-trained arm: its margin over 'none' against the seed spread.

    'helps' when the mean paired margin exceeds the larger of the two arms' seed sd and the paired t-test
    gives p < ALPHA, 'hurts' when it is below minus that spread with p < ALPHA, else 'unclear' (within the
    seed spread, or too few seeds to tell it from noise)."""
    sd = {(r["task"], r["protocol"], r["fraction"], r["arm"]): r["sd"] or 0.0
          for r in report["summary"] if r["metric"] == metric}
    means = {(r["task"], r["protocol"], r["fraction"], r["arm"]): r["mean"]
             for r in report["summary"] if r["metric"] == metric}
    out = []
    for p in report["paired"]:
        if p["metric"] != metric or p["b"] != "none":
            continue
        key = (p["task"], p["protocol"], p["fraction"])
        spread = max(sd.get(key + (p["a"],), 0.0), sd.get(key + ("none",), 0.0))
        margin = p["mean_diff"]
        significant = p["p"] is not None and p["p"] < ALPHA
        word = ("helps" if margin > spread and significant else
                "hurts" if margin < -spread and significant else "unclear")
        out.append({"task": key[0], "protocol": key[1], "fraction": key[2], "arm": p["a"], "metric": metric,
                     "pretrained": means.get(key + (p["a"],)), "none": means.get(key + ("none",)), "margin": margin,
                     "sd_margin": p["sd_diff"], "seed_spread": spread, "n": p["n"], "p": p["p"], "verdict": word})
    return out


def _print_results(summary: dict[str, Any], report: dict[str, Any], pre_curves, summary_path: str) -> None:
    print("\n[demo] results")
    for arm, info in summary["pretrain"].items():
        curve = list(info["eval_acc_curve"].values())
        if curve:
            print(f"  pre-training ({arm}): validation masked-note accuracy {curve[0]:.3f} at the first evaluation -> "
                  f"{curve[-1]:.3f} at the last; {info['workdir']}")
    if len(summary["pretrain"]) > 1:
        names = list(summary["pretrain"])
        print("    validation masked-note accuracy (random 15% masking, fixed seed), per evaluation:")
        print("      step  " + "  ".join(f"{name:>11s}" for name in names))
        for step, values in pre_curves:
            print(f"    {step:6d}  " + "  ".join(f"{values[n]:11.3f}" if n in values else " " * 11 for n in names))
    rows = summary["verdict"]
    if rows:
        print(f"  does pre-training pay? test {VERDICT_METRIC}, mean ± sd over fine-tuning seeds; margin = paired "
              "mean difference; 'helps' only when the margin exceeds the larger seed sd "
              f"and p < {ALPHA:g} (paired t-test):")
        for v in rows:
            sd = f" ± {v['sd_margin']:.3f}" if v["sd_margin"] is not None else ""
            p = f", p={v['p']:.2g}" if v["p"] is not None else ""
            print(f"    {v['task']:14s} {v['protocol']:8s} {v['fraction']:4g} of the pieces: {v['arm']} "
                  f"{v['pretrained']:.3f} vs none {v['none']:.3f}: margin {v['margin']:+.3f}{sd} "
                  f"(seed spread {v['seed_spread']:.3f}, n={v['n']}{p}) -> {v['verdict']}")
        helped = [v for v in rows if v["verdict"] == "helps"]
        if len(helped) == len(rows):
            print("  pre-training paid off in every task and protocol of this demo.")
        else:
            others = ", ".join(f"{v['task']} {v['protocol']} {v['fraction']:g} ({v['verdict']})" for v in rows
                               if v["verdict"] != "helps")
            print(f"  pre-training paid off in {len(helped)} of {len(rows)} comparisons; it did NOT clearly pay in: "
                  f"{others}. At this scale (minutes of pre-training on a laptop) that is an honest result, "
                  "not a hidden one; longer pre-training: --pretrain-steps; full fine-tuning too: "
                  "--protocols probe,finetune; or `midibert-jax experiment`.")
    if not report["complete"]:
        print(f"  PARTIAL: {report['finished_runs']} of {report['planned_runs']} runs finished; run the same command "
              "again to continue")
    print(f"  table and plot: {summary['experiment']}, {summary['plot']}")
    print(f"  summary: {summary_path}")
    candidates = [r for r in report["runs"] if r["task"] == TASKS[0] and r["arm"] != "none"]
    best = next((r["workdir"] for r in sorted(candidates, key=lambda r: r["protocol"] != "finetune")), None)
    if best:
        print(f"  try: midibert-jax predict --workdir {best} your_song.mid -o tracks.mid")
