"""`midibert-jax experiment`: the aggregation and paired tests on synthetic numbers, the plan, the
report's schema, and the command end to end at smoke size (tiny model, 32-note windows, a few steps):
stopped after a few runs, then run again, which reuses the finished runs and completes the report;
then copied without its checkpoints and one run deleted: only that run and its pre-training are redone.

The end-to-end runs go through the CLI in subprocesses with a shared persistent compilation cache
(tests/pretrain_helpers.py's environment): 4 pre-training and 12 fine-tuning runs compile two
pre-training and two fine-tuning programs.
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import pytest

import midi_factory
import pretrain_helpers as ph
from midibert_jax import config_loading, experiment, experiment_report
from midibert_jax.config_loading import ConfigError


def _run(task, arm, seed, protocol, fraction, accuracy, **more):
    return {"task": task, "arm": arm, "seed": seed, "protocol": protocol, "fraction": fraction,
            "test": {"accuracy": accuracy, **more}}


SYNTHETIC = [
    _run("t", "adversarial", 0, "probe", 1.0, 0.8, macro_f1=0.5),
    _run("t", "adversarial", 1, "probe", 1.0, 0.7, macro_f1=0.5),
    _run("t", "adversarial", 2, "probe", 1.0, 0.9, macro_f1=0.5),
    _run("t", "random", 0, "probe", 1.0, 0.6, macro_f1=0.4),
    _run("t", "random", 1, "probe", 1.0, 0.65, macro_f1=0.4),
    _run("t", "random", 2, "probe", 1.0, 0.7, macro_f1=0.4),
    _run("t", "none", 0, "probe", 1.0, 0.5, macro_f1=0.3),
    _run("t", "none", 1, "probe", 1.0, 0.4, macro_f1=0.3),
    _run("t", "adversarial", 0, "probe", 0.1, 0.6),  # one seed only: no sd, no p
    _run("t", "none", 0, "probe", 0.1, 0.5),
]


def _row(rows, **match):
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


# ----------------------------------------------------------------------------- aggregation (pure)


def test_summary_means_and_sds_over_seeds():
    rows = experiment_report.summary_rows(SYNTHETIC, ("accuracy", "macro_f1"))
    adv = _row(rows, arm="adversarial", fraction=1.0, metric="accuracy")
    assert adv["n"] == 3 and adv["mean"] == pytest.approx(0.8) and adv["sd"] == pytest.approx(0.1)
    rnd = _row(rows, arm="random", fraction=1.0, metric="accuracy")
    assert rnd["mean"] == pytest.approx(0.65) and rnd["sd"] == pytest.approx(0.05)
    none = _row(rows, arm="none", fraction=1.0, metric="accuracy")
    assert none["n"] == 2 and none["mean"] == pytest.approx(0.45) and none["sd"] == pytest.approx(math.sqrt(0.005))
    assert _row(rows, arm="random", fraction=1.0, metric="macro_f1")["sd"] == pytest.approx(0.0)
    single = _row(rows, arm="adversarial", fraction=0.1, metric="accuracy")
    assert single["n"] == 1 and single["mean"] == pytest.approx(0.6) and single["sd"] is None
    # Metrics a run lacks (macro_f1 at fraction 0.1, piece_accuracy anywhere) make no row.
    assert not [r for r in rows if r["fraction"] == 0.1 and r["metric"] == "macro_f1"]
    assert [r["arm"] for r in rows if r["fraction"] == 1.0 and r["metric"] == "accuracy"] == list(experiment_report.ARMS)


def test_paired_differences_and_t_test():
    rows = experiment_report.paired_rows(SYNTHETIC, ("accuracy", "macro_f1"))
    ar = _row(rows, a="adversarial", b="random", fraction=1.0, metric="accuracy")
    # Differences 0.2, 0.05, 0.2: mean 0.15, sd sqrt(0.0075), t = 0.15 / (sd / sqrt 3) = 3;
    # two-sided p of Student's t with 2 degrees of freedom: 1 - t / sqrt(t^2 + 2).
    assert ar["n"] == 3 and ar["seeds"] == [0, 1, 2]
    assert ar["mean_diff"] == pytest.approx(0.15) and ar["sd_diff"] == pytest.approx(math.sqrt(0.0075))
    assert ar["t"] == pytest.approx(3.0) and ar["p"] == pytest.approx(1 - 3 / math.sqrt(11))
    # Pairs are the seeds both arms finished (none has seeds 0 and 1): diffs 0.3, 0.3 -> sd 0, no t-test.
    an = _row(rows, a="adversarial", b="none", fraction=1.0, metric="accuracy")
    assert an["n"] == 2 and an["mean_diff"] == pytest.approx(0.3) and an["sd_diff"] == pytest.approx(0.0)
    assert an["t"] is None and an["p"] is None
    rn = _row(rows, a="random", b="none", fraction=1.0, metric="accuracy")
    assert rn["seeds"] == [0, 1] and rn["mean_diff"] == pytest.approx(0.175)
    # Differences 0.1, 0.25: sd 0.15 / sqrt 2, t = 0.175 / (sd / sqrt 2) = 7 / 3; with 1 degree of freedom
    # (Cauchy) the two-sided p is 1 - 2 atan(t) / pi.
    assert rn["sd_diff"] == pytest.approx(0.15 / math.sqrt(2)) and rn["t"] == pytest.approx(7 / 3)
    assert rn["p"] == pytest.approx(1 - 2 * math.atan(7 / 3) / math.pi)
    # One paired seed: a difference, no sd, no p.
    one = _row(rows, a="adversarial", b="none", fraction=0.1, metric="accuracy")
    assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.1) and one["sd_diff"] is None and one["p"] is None
    assert not [r for r in rows if r["fraction"] == 0.1 and r["b"] == "random"]  # random never ran there


def test_report_schema_table_and_plot(tmp_path):
    report = experiment_report.build_report({"metrics": ["accuracy", "macro_f1"]}, SYNTHETIC,
                                     missing=[{"task": "t", "arm": "random", "seed": 0, "protocol": "probe",
                                               "fraction": 0.1, "workdir": "w"}],
                                     machine={"cpu": "x"}, metrics=("accuracy", "macro_f1"),
                                     baselines={"t": {"baselines": {"majority": {"accuracy": 0.25},
                                                                    "skyline": {"accuracy": 0.5, "binary_accuracy": 0.6}},
                                                      "published": {"Bi-LSTM (CP)": 88.66}}})
    assert json.loads(json.dumps(report)) == report  # JSON as it is
    assert set(report) == {"version", "config", "machine", "planned_runs", "finished_runs", "complete", "stopped",
                           "pretrain", "runs", "missing", "summary", "paired", "baselines", "verdicts"}
    assert (report["planned_runs"], report["finished_runs"], report["complete"]) == (11, 10, False)
    assert set(report["summary"][0]) == {"task", "protocol", "fraction", "metric", "arm", "n", "mean", "sd"}
    assert set(report["paired"][0]) == {"task", "protocol", "fraction", "metric", "a", "b", "n", "seeds", "mean_diff",
                                        "sd_diff", "t", "p"}
    table = experiment_report.format_table(report)
    assert table.startswith("PARTIAL: 10 of 11 fine-tuning runs finished")
    assert "0.800 ± 0.100 (n=3)" in table and "0.600 (n=1)" in table
    assert "adversarial - random: +0.150 ± 0.087 accuracy (n=3 paired seeds, t=3.00, p=0.0955)" in table
    assert "baselines on the same test split: majority 0.250, skyline 0.500 (binary 0.600)" in table
    assert table.count("baselines on the same test split") == 1  # once per task
    assert "published (other tokens and windows, cited): Bi-LSTM (CP) 88.66%" in table
    assert "  t probe 1: adversarial - random +0.150 ± 0.087 (seed spread 0.100, n=3, p=0.095) -> unclear" in table
    markdown = experiment_report.format_markdown(report)
    assert markdown.startswith("**Partial**: 10 of 11 fine-tuning runs finished")
    assert "| task | protocol | fraction | adversarial | random | none | baselines (same test split) |" in markdown
    assert ("| t | probe | 1 | 0.800 ± 0.100 (n=3) | 0.650 ± 0.050 (n=3) | 0.450 ± 0.071 (n=2) | "
            "majority 0.250, skyline 0.500 |") in markdown
    assert "| t | probe | 0.1 | 0.600 (n=1) | — | 0.500 (n=1) | majority 0.250, skyline 0.500 |" in markdown
    assert "| t | probe | 1 | 0.500 ± 0.000 (n=3) | 0.400 ± 0.000 (n=3) | 0.300 ± 0.000 (n=2) | – |" in markdown
    assert "Published (other tokens and windows, cited, not recomputed): t: Bi-LSTM (CP) 88.66 %" in markdown
    assert "| t | probe | 1 | adversarial - random | +0.150 ± 0.087 | 0.100 | 3 | 0.095 | unclear |" in markdown
    experiment_report.write_report(report, tmp_path)
    assert json.loads((tmp_path / "experiment.json").read_text()) == report
    assert (tmp_path / "experiment.md").read_text() == markdown
    assert (tmp_path / "experiment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "experiment_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # no curves: says so
    assert experiment_report.load_report(tmp_path) == report
    with pytest.raises(FileNotFoundError, match="midibert-jax experiment"):
        experiment_report.load_report(tmp_path / "nothing")


def test_verdicts_need_the_margin_beyond_the_seed_spread_and_p_below_alpha():
    runs = [_run("t", arm, seed, "finetune", 1.0, acc) for arm, accs in (
        ("adversarial", (0.80, 0.81, 0.82)), ("random", (0.60, 0.70, 0.80)), ("none", (0.70, 0.705, 0.72)))
        for seed, acc in enumerate(accs)]
    report = experiment_report.build_report({}, runs, metrics=("accuracy",))
    words = {(v["a"], v["b"]): v["verdict"] for v in report["verdicts"]}
    # adversarial - none: +0.1 each seed, sd 0.003 -> better; random - none: +0.002 ± wide -> unclear;
    # adversarial - random: +0.11 but the random arm's own spread is 0.1 and p = 0.2 -> unclear.
    assert words == {("adversarial", "none"): "better", ("random", "none"): "unclear",
                     ("adversarial", "random"): "unclear"}
    flipped = experiment_report.build_report({}, [{**r, "arm": {"adversarial": "none", "none": "adversarial"}.get(
        r["arm"], r["arm"])} for r in runs], metrics=("accuracy",))
    assert {(v["a"], v["b"]): v["verdict"] for v in flipped["verdicts"]}[("adversarial", "none")] == "worse"
    assert "-> adversarial better than none" in experiment_report.format_table(report)
    assert "| adversarial - none | +0.102 ± 0.003 | 0.010 | 3 | 0.00027 | adversarial better |" in experiment_report.format_markdown(report)
    assert experiment_report.format_markdown(report).count("| adversarial better |") == 1


# ----------------------------------------------------------------------------- the plan


def _config(**changes) -> ml_collections.ConfigDict:
    config = config_loading.load_config("configs/experiment.py")
    with config.unlocked():
        for key, value in changes.items():
            config_loading.apply_override(config, key, value)
    return config


def test_the_plan_sets_arms_protocols_fractions_and_shares_the_encoder(tmp_path):
    config = _config()
    plan = experiment.plan(config, tmp_path)
    assert len(plan.pretrain) == 2 * 3 and len(plan.finetune) == 3 * 3 * 2 * 2 * 2
    assert [r.describe() for r in plan.runs[:3]] == [
        "pretrain adversarial seed 0", "finetune demo_note adversarial seed 0 probe fraction 0.1",
        "finetune demo_note adversarial seed 0 probe fraction 1"]
    random_pre = next(r for r in plan.pretrain if r.arm == "random" and r.seed == 2)
    assert random_pre.workdir == str(tmp_path / "pretrain" / "random_s2")
    assert (random_pre.config.seed, random_pre.config.masking.policy, random_pre.config.mask_book.every) == (2, "random", 0)
    adv = next(r for r in plan.pretrain if r.arm == "adversarial")
    assert adv.config.data.max_len == adv.config.model.max_len == 128
    assert (adv.config.mask_book.every, adv.config.mask_book.unit, adv.config.model.size) == (1, "epoch", "mini")
    by_key = {(r.task, r.arm, r.seed, r.protocol, r.fraction): r for r in plan.finetune}
    probe = by_key[("demo_sequence", "random", 1, "probe", 0.1)]
    assert probe.workdir == str(tmp_path / "finetune" / "demo_sequence" / "random_s1_probe_f0.1")
    t = probe.config.train
    assert (t.init_from, t.from_scratch, t.freeze_encoder, t.piece_fraction) == (random_pre.workdir.replace("s2", "s1"),
                                                                                 False, True, 0.1)
    assert probe.config.seed == 1 and probe.config.optim.learning_rate == 1e-3 and probe.config.train.steps == 100
    none = by_key[("demo_note", "none", 0, "finetune", 1.0)]
    assert none.pretrain_workdir is None and none.config.train.from_scratch and not none.config.train.freeze_encoder
    assert none.config.optim.learning_rate == 3e-4
    # The none arm's random encoder is the pre-trained arms' architecture, on the same windows.
    for name in ("num_layers", "hidden_size", "num_heads", "mlp_dim", "max_len", "position_embedding"):
        assert none.config.model[name] == adv.config.model[name]
    assert none.config.data.max_len == 128


def test_replicates_can_share_pretraining_seeds(tmp_path):
    """pretrain_seeds=(0,): one pre-training run per arm, used by every replicate; fine-tuning seeds still vary."""
    plan = experiment.plan(_config(**{"pretrain_seeds": "(0,)"}), tmp_path)
    assert [(r.arm, r.seed) for r in plan.pretrain] == [("adversarial", 0), ("random", 0)]
    adversarial = [r for r in plan.finetune if r.arm == "adversarial"]
    assert {r.seed for r in adversarial} == {0, 1, 2} and {r.config.seed for r in adversarial} == {0, 1, 2}
    assert {r.config.train.init_from for r in adversarial} == {str(tmp_path / "pretrain" / "adversarial_s0")}
    with pytest.raises(config_loading.ConfigError, match="pretrain_seeds"):
        experiment.plan(_config(**{"pretrain_seeds": "(0, 0)"}), tmp_path)


def test_the_report_counts_a_run_finished_only_with_its_test_evaluation(tmp_path):
    """A record without the test evaluation it came from (deleted, or older than the run's checkpoints) is a
    run the runner would redo: the report lists it as missing, not finished."""
    config = _config(**{"seeds": "(0,)", "arms": "('none',)", "tasks": "('configs/finetune.py:demo_note',)",
                        "protocols": "('finetune',)", "fractions": "(1.0,)"})
    the_plan = experiment.plan(config, tmp_path)
    (run,) = the_plan.finetune
    workdir = pathlib.Path(run.workdir)
    workdir.mkdir(parents=True)
    (workdir / "experiment_run.json").write_text(json.dumps({"test": {"accuracy": 0.5}, "best_step": 2}))
    report = experiment.collect(config, tmp_path, the_plan=the_plan)
    assert (report["finished_runs"], len(report["missing"])) == (0, 1) and not experiment.is_finished(run)
    (workdir / "eval_test.json").write_text(json.dumps({"accuracy": 0.5, "step": 2}))
    report = experiment.collect(config, tmp_path, the_plan=the_plan)
    assert (report["finished_runs"], report["missing"]) == (1, []) and experiment.is_finished(run)
    assert report["runs"][0]["test"] == {"accuracy": 0.5}


def test_short_runs_keep_warmup_below_the_steps_and_overrides_are_checked(tmp_path):
    config = _config(**{"pretrain.overrides.train.steps": "20", "seeds": "(0,)", "arms": "('adversarial',)"})
    pre = experiment.plan(config, tmp_path).pretrain[0].config
    assert (pre.train.steps, pre.optim.total_steps, pre.optim.warmup_steps) == (20, 20, 2)
    with pytest.raises(ConfigError, match=r"finetune.overrides.train.piece_fraction: set by the experiment"):
        with config.unlocked():
            config.finetune.overrides.train.piece_fraction = 0.5
        experiment.plan(config, tmp_path)
    bad = _config()
    with bad.unlocked():
        bad.finetune.overrides.train.nope = 3
    with pytest.raises(ConfigError, match=r"finetune.overrides: unknown config key 'train.nope'"):
        experiment.plan(bad, tmp_path)
    for key, value, message in (("arms", "('adversarial', 'bert')", "arms="), ("fractions", "(0.0, 1.0)", "fractions="),
                                ("tasks", "('configs/finetune.py:demo_note', 'configs/finetune.py:demo_note,runlocal')",
                                 "two tasks share a name")):
        with pytest.raises(ConfigError, match=message):
            experiment.plan(_config(**{key: value}), tmp_path)
    named = _config(tasks="('mine=configs/finetune.py:folder_sequence,runlocal',)")
    with named.unlocked():
        named.task_overrides = ml_collections.ConfigDict({"mine": {"data": {"root": "/data/x"}}})
    run = experiment.plan(named, tmp_path).finetune[0]
    assert run.task == "mine" and run.config.data.root == "/data/x" and run.config.task.name == "folder_sequence"


@pytest.mark.parametrize("variant", ["pop909", "pop909,quick", "pop909,tpu", "paper", "paper,quick", "paper,tpu"])
def test_task_data_variants_take_one_root_per_dataset_and_validate(variant, tmp_path):
    config = _config_of(variant)
    with pytest.raises(ConfigError, match=r"roots.pop909 is empty but pretrain.sources needs the pop909 dataset: pass "
                                          r"--config.roots.pop909=DIR"):
        experiment.plan(config, tmp_path)
    roots = {"pop909": "/data/POP909", "pianist8": "/data/Pianist8", "emopia": "/data/EMOPIA_1.0"}
    for dataset, root in roots.items():
        config.roots[dataset] = root
    config.pretrain.extra_folders = ("/data/POP1K7",)
    plan = experiment.plan(config, tmp_path)
    experiment.validate(plan)  # every run's config passes the trainers' own validation
    paper = variant.startswith("paper")
    sources = set(roots) if paper else {"pop909"}
    for run in plan.pretrain:
        data = run.config.data
        assert data.dataset == "tasks" and data.extra_folders == ("/data/POP1K7",)
        assert {d: r for d, r in data.task_roots.items() if r} == {d: roots[d] for d in sources}
    tasks = {"melody": "pop909", "velocity": "pop909", "composer": "pianist8", "emotion": "emopia"}
    assert {r.task for r in plan.finetune} == ({*tasks} if paper else {"melody", "velocity"})
    for run in plan.finetune:
        assert run.config.data.root == roots[tasks[run.task]] and run.config.data.max_len == plan.pretrain[0].config.data.max_len
    if "tpu" in variant:
        assert plan.pretrain[0].config.model.size == "base" and plan.pretrain[0].config.data.max_len == 512
    else:
        assert plan.pretrain[0].config.model.size == "mini"
        # 512-note windows: one view a note (the cpu recipe's 4 views were chosen for its 128-note windows)
        assert {r.config.train.eval_views for r in plan.finetune if r.task in ("melody", "velocity")} == {1}


def _config_of(variant):
    return config_loading.load_config(f"configs/experiment.py:{variant}")


def test_task_modifiers_keep_some_of_a_variants_tasks_and_its_pretraining(tmp_path):
    """`pop909,melody`: the pop909 experiment for melody alone, on the same pre-training runs (their configs
    equal, so finished ones are reused); a task the variant lacks, or a variant without tasks, is refused."""
    roots = {"pop909": "/data/POP909", "pianist8": "/data/Pianist8", "emopia": "/data/EMOPIA_1.0"}

    def planned(variant):
        config = _config_of(variant)
        config.roots.update(roots)
        return experiment.plan(config, tmp_path)

    full, melody = planned("pop909"), planned("pop909,melody")
    assert {r.task for r in melody.finetune} == {"melody"} and len(melody.finetune) == len(full.finetune) // 2
    assert [r.config.to_dict() for r in melody.pretrain] == [r.config.to_dict() for r in full.pretrain]
    assert {r.config.train.eval_views for r in melody.finetune} == {1}
    assert {r.task for r in planned("paper,composer,emotion").finetune} == {"composer", "emotion"}
    with pytest.raises(ValueError, match=r"task modifiers \['composer'\] are not tasks of this variant"):
        _config_of("pop909,composer")
    with pytest.raises(ValueError, match=r"task modifiers \['melody'\] go with pop909 or paper"):
        _config_of("runlocal,melody")


def test_demo_tasks_validation_and_test_pieces_stay_out_of_demo_pretraining(tmp_path, monkeypatch):
    from midibert_jax.data import prepare

    rows = [{"path": "a/x.abc#1", "split": "train"}, {"path": "a/x.abc#2", "split": "validation"},
            {"path": "b/y.mxl", "split": "test"}, {"path": "b/z.mxl", "split": None}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps({"piece_id": i, **r}) + "\n" for i, r in enumerate(rows)))
    built = []
    monkeypatch.setattr(prepare, "prepare", lambda data: built.append(data.task) or tmp_path)
    plan = experiment.plan(_config(seeds="(0, 1)"), tmp_path / "exp")
    assert experiment.hold_out_demo_pieces(plan, say=lambda text: None) == 2
    assert built == ["demo_melody", "demo_collection"]  # each task's dataset once (its data block is shared)
    assert all(r.config.data.demo.exclude == ("a/x.abc#2", "b/y.mxl") for r in plan.pretrain) and len(plan.pretrain) == 4
    # Pre-training on a folder: nothing is built, nothing excluded.
    folder = experiment.plan(_config(**{"pretrain.spec": "configs/pretrain.py:tiny,runlocal,data=folder"}), tmp_path / "f")
    assert experiment.hold_out_demo_pieces(folder, say=lambda text: None) == 0 and len(built) == 2
    assert all(r.config.data.demo.exclude == () for r in folder.pretrain)


# ----------------------------------------------------------------------------- end to end


TEST_CONFIG = '''
"""The experiment at smoke size on the test's MIDI folders (written by tests/test_experiment.py)."""
import ml_collections

from configs.experiment import get_config as experiment_config


def get_config(arg=None):
    config = experiment_config("runlocal")
    config.seeds = (0, 1, 2)  # the test passes --config.seeds=(0,1)
    config.pretrain.spec = "configs/pretrain.py:tiny,runlocal,data=folder"
    config.pretrain.overrides = ml_collections.ConfigDict({{
        "model": {{"hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64, "field_embed_dim": 16,
                  "head_hidden": 32}},
        "data": {{"max_len": 32, "folder": {pre!r}, "data_dir": {data_dir!r}, "valid_fraction": 0.2,
                 "num_workers": 1, "progress": False, "batch_size": 8, "eval_batch_size": 8, "read_threads": 1,
                 "prefetch": 1}},
        "train": {{"steps": 4, "eval_every": 4, "checkpoint_every": 4, "log_every": 2}},
        "mask_book": {{"every": 2}},
        "optim": {{"warmup_steps": 30}},
    }})
    config.tasks = ("configs/finetune.py:folder_sequence,runlocal",)
    config.finetune.overrides = ml_collections.ConfigDict({{
        "train": {{"steps": 2, "eval_every": 2, "log_every": 1}},
        "data": {{"batch_size": 4, "eval_batch_size": 4, "read_threads": 1, "prefetch": 1, "data_dir": {data_dir!r},
                 "num_workers": 1, "progress": False, "valid_fraction": 0.25, "test_fraction": 0.25}},
        "model": {{"head_hidden": 16}},
    }})
    config.task_overrides = ml_collections.ConfigDict({{"folder_sequence": {{"data": {{"root": {labelled!r}}}}}}})
    config.fractions = (0.5,)
    return config
'''


def _cli(args, env, log):
    result = subprocess.run([sys.executable, "-m", "midibert_jax.cli", *map(str, args)], env=env,
                            capture_output=True, text=True, timeout=900, cwd=str(ph.REPO))
    pathlib.Path(log).write_text(result.stdout + result.stderr, encoding="utf-8")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _stamps(root: pathlib.Path) -> dict[str, int]:
    """mtime (ns) of every run's experiment_run.json and eval_test.json, and of the checkpoint step folders."""
    names = ("experiment_run.json", "eval_test.json")
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.name in names or (p.parent.name == "checkpoints" and p.name.isdigit())}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    env = ph.subprocess_env(1, root / "jax_cache")
    pre = ph.make_midi_folder(root / "midi")
    labelled = root / "labelled"
    for label, program in (("strings", 40), ("piano", 0)):
        for i in range(8):
            midi_factory.write_piece(labelled / label / f"{label}{i}.mid", num_bars=6 + i, seed=100 + i, program=program)
    config = root / "experiment_smoke.py"
    config.write_text(TEST_CONFIG.format(pre=str(pre), data_dir=str(root / "tfds"), labelled=str(labelled)))
    workdir = root / "exp"
    args = ["experiment", "--config", config, "--workdir", workdir, "--config.seeds=(0, 1)"]
    first_out = _cli(args + ["--max-runs", "5"], env, root / "first.log")
    first = json.loads((workdir / "experiment.json").read_text())
    stamps = _stamps(workdir)
    second_out = _cli(args, env, root / "second.log")
    final = json.loads((workdir / "experiment.json").read_text())
    after = _stamps(workdir)
    # Moved without checkpoints (what `rsync -a --exclude checkpoints` copies), one fine-tuning run deleted.
    moved = root / "moved"
    shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns("checkpoints", ".run.lock"))
    shutil.rmtree(moved / "finetune" / "folder_sequence" / "adversarial_s1_finetune_f0.5")
    moved_out = _cli(["experiment", "--config", config, "--workdir", moved, "--config.seeds=(0, 1)"], env,
                     root / "moved.log")
    return {"workdir": workdir, "first": first, "first_out": first_out, "stamps": stamps, "second_out": second_out,
            "final": final, "after": after, "moved": moved, "moved_out": moved_out,
            "moved_final": json.loads((moved / "experiment.json").read_text())}


@pytest.mark.slow
def test_a_stopped_experiment_reports_what_finished(smoke):
    first, out = smoke["first"], smoke["first_out"]
    # Seed 0: adversarial pre-training, its 2 fine-tuning runs, random pre-training, 1 of its fine-tuning runs.
    assert "[experiment] run 5/16: finetune folder_sequence random seed 0 probe fraction 0.5: test accuracy " in out
    assert "run 6/16" not in out
    # One line per run: a fine-tuning run's header and evaluations stay in its metrics, off the console.
    assert out.count("[experiment] run ") == 5 and "[finetune]" not in out and "\r" not in out
    assert (first["planned_runs"], first["finished_runs"], first["complete"], first["stopped"]) == (12, 3, False, "max_runs=5")
    assert len(first["missing"]) == 9 and "PARTIAL: 3 of 12 fine-tuning runs finished" in out
    assert [(p["arm"], p["seed"], p["finished"]) for p in first["pretrain"]] == [
        ("adversarial", 0, True), ("random", 0, True), ("adversarial", 1, False), ("random", 1, False)]
    # One seed so far: means without sd; the one paired difference has no p.
    rows = [r for r in first["summary"] if r["metric"] == "accuracy"]
    assert {r["arm"] for r in rows} == {"adversarial", "random"} and all(r["n"] == 1 and r["sd"] is None for r in rows)
    paired = [p for p in first["paired"] if p["metric"] == "accuracy"]
    assert [(p["a"], p["b"], p["protocol"], p["fraction"], p["n"], p["p"]) for p in paired] == [
        ("adversarial", "random", "probe", 0.5, 1, None)]


@pytest.mark.slow
def test_running_again_reuses_the_finished_runs_and_completes_the_report(smoke):
    before, after, out = smoke["stamps"], smoke["after"], smoke["second_out"]
    assert len(before) == 3 * 2 + 2 * (1 + 1) + 3 * 1  # records + evals, pre-training records + step, fine-tuning steps
    for path, stamp in before.items():
        assert after[path] == stamp, f"{path} was rewritten"
    assert out.count("finished earlier") == 5
    final = smoke["final"]
    assert (final["planned_runs"], final["finished_runs"], final["complete"], final["stopped"]) == (12, 12, True, "")
    assert final["missing"] == [] and "PARTIAL" not in out
    assert final["config"]["seeds"] == [0, 1] and final["version"] == experiment_report.VERSION
    assert {"platform", "cpu", "backend", "devices", "jax"} <= set(final["machine"])
    keys = {(r["arm"], r["seed"], r["protocol"], r["fraction"]) for r in final["runs"]}
    assert keys == {(a, s, p, f) for a in experiment_report.ARMS for s in (0, 1) for p in experiment_report.PROTOCOLS for f in (0.5,)}
    workdir = smoke["workdir"]
    for r in final["runs"]:
        assert set(r) == {"task", "arm", "seed", "protocol", "fraction", "workdir", "pretrain_workdir", "test",
                          "validation_best_accuracy", "best_step", "seconds", "curve"}
        curve = r["curve"]  # one evaluation (step 2): its wall-clock seconds and validation accuracy
        assert len(curve["seconds"]) == len(curve["validation_accuracy"]) == 1 and curve["seconds"][0] > 0
        assert curve["validation_accuracy"][0] == pytest.approx(r["validation_best_accuracy"])
        assert r["workdir"] == str(workdir / "finetune" / "folder_sequence" / f"{r['arm']}_s{r['seed']}_{r['protocol']}_f{r['fraction']:g}")
        assert r["pretrain_workdir"] == (None if r["arm"] == "none" else str(workdir / "pretrain" / f"{r['arm']}_s{r['seed']}"))
        assert set(r["test"]) == {"accuracy", "macro_f1", "piece_accuracy"}  # a sequence task: piece accuracy too
        assert all(0.0 <= v <= 1.0 for v in r["test"].values()) and 0.0 <= r["validation_best_accuracy"] <= 1.0
        evaluated = json.loads(pathlib.Path(r["workdir"], "eval_test.json").read_text())
        assert evaluated["accuracy"] == pytest.approx(r["test"]["accuracy"]) and evaluated["step"] == r["best_step"] == 2
        config = json.loads(pathlib.Path(r["workdir"], "config.json").read_text())
        assert config["seed"] == r["seed"] and config["train"]["freeze_encoder"] == (r["protocol"] == "probe")
        assert config["train"]["piece_fraction"] == r["fraction"] and config["model"]["hidden_size"] == 32
    summary = [s for s in final["summary"] if s["metric"] == "accuracy"]
    assert len(summary) == 3 * 2 and all(s["n"] == 2 and s["sd"] is not None for s in summary)
    paired = [p for p in final["paired"] if p["metric"] == "accuracy"]
    assert len(paired) == 3 * 2 and all(p["n"] == 2 and p["seeds"] == [0, 1] for p in paired)
    for p in final["pretrain"]:
        assert p["finished"] and p["steps"] == 4 and 0.0 <= p["validation_accuracy"] <= 1.0
        recorded = json.loads(pathlib.Path(p["workdir"], "experiment_run.json").read_text())["config"]
        assert recorded["seed"] == p["seed"] and recorded["masking"]["policy"] == p["arm"]
    assert (workdir / "experiment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (workdir / "experiment_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert final["baselines"]["folder_sequence"]["baselines"]["majority"]["accuracy"] >= 0.0
    assert "baselines on the same test split: majority" in out and "verdicts (test accuracy" in out
    assert "adversarial - random:" in out and "[experiment] results" in out
    # The random arm pre-trained without a mask book, the adversarial one with it.
    for arm, has_book in (("adversarial", True), ("random", False)):
        lines = (workdir / "pretrain" / f"{arm}_s1" / "metrics.jsonl").read_text().splitlines()
        assert any("train/mask/book_updates" in line for line in lines) == has_book
    assert os.path.isdir(workdir / "pretrain" / "random_s1" / "checkpoints")


@pytest.mark.slow
def test_results_survive_without_checkpoints_and_a_redone_pretraining_is_the_recorded_one(smoke):
    out, moved = smoke["moved_out"], smoke["moved"]
    # 15 of 16 runs need nothing: 3 pre-trainings skipped (every fine-tuning run from them finished), 11 reused.
    assert out.count("finished earlier, and every fine-tuning run from it too") == 3
    assert out.count("finished earlier, reused") == 11
    assert "run 9/16: pretrain adversarial seed 1 -> " in out  # the deleted run needs its encoder again
    assert "redone: its parameters are identical to the recorded run's" in out
    assert not (moved / "pretrain" / "random_s1" / "checkpoints").exists()
    recorded = json.loads((smoke["workdir"] / "pretrain" / "adversarial_s1" / "experiment_run.json").read_text())
    redone = json.loads((moved / "pretrain" / "adversarial_s1" / "experiment_run.json").read_text())
    assert len(recorded["params_sha256"]) == 64 and redone["params_sha256"] == recorded["params_sha256"]
    # The redone fine-tuning run gives the same test numbers: the report is the one before the move.
    def by_key(report):
        return {(r["arm"], r["seed"], r["protocol"], r["fraction"]): r["test"] for r in report["runs"]}
    assert smoke["moved_final"]["complete"] and by_key(smoke["moved_final"]) == by_key(smoke["final"])
    for r in smoke["moved_final"]["runs"]:
        record = json.loads(pathlib.Path(r["workdir"], "experiment_run.json").read_text())
        if r["arm"] != "none":  # which encoder each fine-tuning run started from
            source = json.loads(pathlib.Path(r["pretrain_workdir"], "experiment_run.json").read_text())
            assert record["pretrain_sha256"] == source["params_sha256"]


def test_a_key_added_since_a_run_was_recorded_is_no_change_at_the_value_that_does_what_the_run_did():
    from midibert_jax import experiment as experiment_lib  # pylint: disable=import-outside-toplevel

    recorded = {"train": {"steps": 200}}
    assert experiment_lib._changed_keys(recorded, {"train": {"steps": 200, "eval_views": 1}}) == []
    assert experiment_lib._changed_keys(recorded, {"train": {"steps": 200, "eval_views": 4}}) == [
        "train.eval_views: None -> 4"]
    assert experiment_lib._changed_keys(recorded, {"train": {"steps": 300}}) == ["train.steps: 200 -> 300"]
