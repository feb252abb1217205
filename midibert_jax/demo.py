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

from midibert_jax import flags, paths
from midibert_jax.errors import UserError
from midibert_jax import experiment_report
from midibert_jax.experiment_report import PROTOCOLS

TASKS = ("demo_note", "demo_sequence")
CURVE_METRIC = "eval/accuracy"  # validation masked-note accuracy (random 15% masking, fixed seed)
VERDICT_METRIC = "accuracy"
ALPHA = experiment_report.ALPHA  # a verdict other than 'unclear' needs the paired t-test's p below this
# The integer flags: (smallest, largest, multiple of). Steps: the step counter is int32. Seeds: each
# adds a fine-tuning run per arm, task and protocol; more than 10 belong to `midibert-jax experiment`.
# Notes per window: the mask book packs 8 notes a byte; 1024 is the published models' window.
LIMITS = {"pretrain_steps": (1, 2**31 - 1, 1), "seeds": (1, 10, 1), "max_len": (8, 1024, 8)}
# For a real answer: every arm, 3 seeds, both protocols, 2 label fractions (README, "The experiment").
NEXT_COMMAND = "midibert-jax experiment --config configs/experiment.py --workdir runs/experiment"


class DemoOptionError(UserError):
    """A demo flag with a value it cannot take; the message names the flag and what it takes."""


def flag(field: str) -> str:
    """The command-line flag of a `DemoOptions` field: 'pretrain_steps' -> '--pretrain-steps'."""
    return "--" + field.replace("_", "-")


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


def check_options(options: DemoOptions) -> None:
    """Raises DemoOptionError (one line naming the flag and what it takes) before anything is built."""
    for field, limits in LIMITS.items():
        problem = flags.int_problem(getattr(options, field), *limits)
        if problem:
            raise DemoOptionError(f"{flag(field)}: {problem}")
    protocols = tuple(options.protocols)
    if not protocols or set(protocols) - set(PROTOCOLS) or len(set(protocols)) != len(protocols):
        raise DemoOptionError(f"--protocols {','.join(protocols)!r}: must be {' or '.join(PROTOCOLS)} or both, "
                              "comma-separated")
    paths.check_workdir(options.workdir)


def curves(workdirs: dict[str, str], key: str = CURVE_METRIC) -> list[tuple[int, dict[str, float]]]:
    """[(step, {run: value})] of metric `key` (either name, `run.canonical_metric`) over the steps any run evaluated at."""
    from midibert_jax import analysis  # pylint: disable=import-outside-toplevel

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

    check_options(options)
    root = epath.Path(options.workdir)
    versus = " and from a random encoder" if options.scratch else ""
    masking = "adversarial and random masking" if options.random_baseline else "adversarial masking"
    print(f"[demo] a small experiment: the mini model pre-trained {options.pretrain_steps} steps with {masking} "
          f"on the demo corpus, then the two demo tasks fine-tuned ({', '.join(options.protocols)}) from "
          f"it{versus}, {options.seeds} seed{'s' if options.seeds > 1 else ''} each")
    report = experiment.run_experiment(demo_config(options), options.workdir, table=False)
    pre_dirs = {r["arm"]: r["workdir"] for r in report["pretrain"]}
    pre_curves = curves(pre_dirs)
    summary = {"experiment": os.fspath(root / paths.EXPERIMENT_FILE), "plot": os.fspath(root / paths.EXPERIMENT_PLOT),
               "pretrain": {arm: {"workdir": w, "eval_acc_curve": {str(s): v[arm] for s, v in pre_curves if arm in v}}
                            for arm, w in pre_dirs.items()},
               "verdict": verdicts(report), "complete": report["complete"]}
    summary_path = root / paths.DEMO_SUMMARY
    paths.write_json(summary_path, summary)
    _print_results(summary, report, pre_curves, os.fspath(summary_path))
    _print_verdict(summary, options)
    return summary


def verdicts(report: dict[str, Any], metric: str = VERDICT_METRIC) -> list[dict[str, Any]]:
    """Per task x protocol x fraction and pre-trained arm: its margin over 'none' against the seed spread.

    The experiment's verdicts (`experiment_report.verdicts`: beyond the larger seed sd and p < ALPHA) of the
    pairs (arm, none), in the demo's words: 'helps', 'hurts' or 'unclear'."""
    words = {"better": "helps", "worse": "hurts", "unclear": "unclear"}
    pairs = tuple((arm, "none") for arm in experiment_report.ARMS if arm != "none")
    return [{"task": v["task"], "protocol": v["protocol"], "fraction": v["fraction"], "arm": v["a"], "metric": metric,
             "pretrained": v["mean_a"], "none": v["mean_b"], "margin": v["margin"], "sd_margin": v["sd_margin"],
             "seed_spread": v["seed_spread"], "n": v["n"], "p": v["p"], "verdict": words[v["verdict"]]}
            for v in experiment_report.verdicts(report, metric, pairs)]


def _print_results(summary: dict[str, Any], report: dict[str, Any], pre_curves, summary_path: str) -> None:
    print("[demo] results")
    for arm, info in summary["pretrain"].items():
        curve = list(info["eval_acc_curve"].items())
        if curve:
            (first_step, first), (last_step, last) = curve[0], curve[-1]
            trend = (f"{first:.3f} at step {first_step} -> {last:.3f} at step {last_step}" if len(curve) > 1 else
                     f"{last:.3f} at step {last_step} (its only evaluation)")
            print(f"  pre-training ({arm}): validation masked-note accuracy {trend}; {info['workdir']}")
    if len(summary["pretrain"]) > 1:
        names = list(summary["pretrain"])
        print("    validation masked-note accuracy (random 15% masking, fixed seed), per evaluation:")
        print("      step  " + "  ".join(f"{name:>11s}" for name in names))
        for step, values in pre_curves:
            print(f"    {step:6d}  " + "  ".join(f"{values[n]:11.3f}" if n in values else " " * 11 for n in names))
    if not report["complete"]:
        print(f"  PARTIAL: {report['finished_runs']} of {report['planned_runs']} runs finished; run the same command "
              "again to continue")
    print(f"  every run's test metrics: {summary['experiment']} (plot: {summary['plot']}); verdict: {summary_path}")
    candidates = [r for r in report["runs"] if r["task"] == TASKS[0] and r["arm"] != "none"]
    best = next((r["workdir"] for r in sorted(candidates, key=lambda r: r["protocol"] != "finetune")), None)
    if best:
        print(f"  try it: midibert-jax predict --workdir {best} your_song.mid -o tracks.mid")


def caveats(summary: dict[str, Any], options: DemoOptions) -> list[str]:
    """Why this run's verdict cannot be the last word: what is small about it, each with the flag that changes it."""
    out = []
    seeds = min((v["n"] for v in summary["verdict"]), default=options.seeds)
    if seeds < 2:
        out.append("one seed: no paired test (--seeds 3 or more)")
    elif any(v["verdict"] == "unclear" for v in summary["verdict"]):
        out.append(f"{seeds} seeds: the paired test calls only margins well above the seed spread")
    default_steps = DemoOptions.pretrain_steps
    if options.pretrain_steps < default_steps:
        out.append(f"{options.pretrain_steps} pre-training steps (the demo's default: {default_steps})")
    for arm, info in summary["pretrain"].items():
        curve = list(info["eval_acc_curve"].values())
        if len(curve) > 1 and curve[-1] > curve[-2]:
            out.append(f"the {arm} encoder's validation accuracy was still rising at its last evaluation "
                       "(--pretrain-steps)")
    if "finetune" not in options.protocols:
        out.append("the probe only (--protocols probe,finetune adds full fine-tuning)")
    out.append(f"the mini model on {options.max_len}-note windows, trained for minutes: far below the paper's scale")
    return out


def _print_verdict(summary: dict[str, Any], options: DemoOptions) -> None:
    """Whether pre-training paid, why this run cannot settle it, and the command that can (the last line)."""
    rows = summary["verdict"]
    if rows:
        print(f"[demo] does pre-training pay? test {VERDICT_METRIC}, mean over fine-tuning seeds; margin = paired mean "
              f"difference; 'helps' only when the margin exceeds the larger seed sd and p < {ALPHA:g} (paired t-test):")
        for v in rows:
            sd = f" ± {v['sd_margin']:.3f}" if v["sd_margin"] is not None else ""
            p = f", p={v['p']:.2g}" if v["p"] is not None else ""
            print(f"    {v['task']:14s} {v['protocol']:8s} {v['fraction']:4g} of the pieces: {v['arm']} "
                  f"{v['pretrained']:.3f} vs none {v['none']:.3f}: margin {v['margin']:+.3f}{sd} "
                  f"(seed spread {v['seed_spread']:.3f}, n={v['n']}{p}) -> {v['verdict']}")
        helped = [v for v in rows if v["verdict"] == "helps"]
        others = "; ".join(f"{v['task']} {v['protocol']}: {v['verdict']}" for v in rows if v["verdict"] != "helps")
        print(f"  verdict: pre-training paid off in {len(helped)} of {len(rows)} comparisons"
              + (f" (not clearly in {others})" if others else ""))
    elif not options.scratch:
        print("[demo] no verdict: --no-scratch leaves no random-encoder arm to compare with")
    else:
        print("[demo] no verdict yet: no fine-tuning runs of both arms finished (run the same command again)")
    print("  why this run is not the last word: " + "; ".join(caveats(summary, options)))
    print("  for a real answer (every arm, 3 seeds, both protocols, two label fractions: about an hour on 2 CPU "
          "cores; the results so far: docs/experiment.md), run:")
    print(f"    {NEXT_COMMAND}")
