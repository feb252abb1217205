"""The README's main job (midibert_jax/demo.py): the experiment it plans and the verdict it prints.

The demo itself runs for many minutes on the real corpus; tests/test_experiment.py runs the same
experiment machinery end to end at smoke size."""

from midibert_jax import demo, experiment


def test_the_demo_is_a_small_experiment(tmp_path):
    config = demo.demo_config(demo.DemoOptions(pretrain_steps=300, seeds=2, random_baseline=True,
                                               config_overrides=(("protocols", "('probe',)"),)))
    plan = experiment.plan(config, tmp_path)
    assert [(r.arm, r.seed, r.config.train.steps) for r in plan.pretrain] == [("adversarial", 0, 300), ("random", 0, 300)]
    assert {(r.arm, r.seed) for r in plan.finetune} == {(a, s) for a in ("adversarial", "random", "none") for s in (0, 1)}
    assert {(r.fraction, r.protocol) for r in plan.finetune} == {(0.1, "probe")}
    assert plan.pretrain[0].config.model.size == "mini" and plan.pretrain[0].config.data.max_len == 128
    default = demo.demo_config(demo.DemoOptions(scratch=False))
    assert default.arms == ("adversarial",) and default.protocols == ("probe",)
    both = demo.demo_config(demo.DemoOptions(protocols=("probe", "finetune")))
    assert {r.protocol for r in experiment.plan(both, tmp_path).finetune} == {"probe", "finetune"}


def _row(task, protocol, arm, mean, sd):
    return {"task": task, "protocol": protocol, "fraction": 1.0, "metric": "accuracy", "arm": arm, "n": 3, "mean": mean,
            "sd": sd}


def test_the_verdict_weighs_the_margin_against_the_seed_spread_and_the_paired_test():
    report = {
        "summary": [_row("t", "probe", "adversarial", 0.80, 0.01), _row("t", "probe", "none", 0.70, 0.02),
                    _row("t", "finetune", "adversarial", 0.71, 0.03), _row("t", "finetune", "none", 0.70, 0.04),
                    _row("u", "probe", "adversarial", 0.50, 0.01), _row("u", "probe", "none", 0.60, 0.01),
                    _row("v", "probe", "adversarial", 0.80, 0.01), _row("v", "probe", "none", 0.70, 0.01)],
        "paired": [{"task": t, "protocol": p, "fraction": 1.0, "metric": "accuracy", "a": "adversarial", "b": "none",
                    "n": 3, "mean_diff": d, "sd_diff": 0.01, "p": pv} for t, p, d, pv in
                   (("t", "probe", 0.10, 0.01), ("t", "finetune", 0.01, 0.01), ("u", "probe", -0.10, 0.01),
                    ("v", "probe", 0.10, 0.20))],
    }
    words = {(v["task"], v["protocol"]): (v["verdict"], v["seed_spread"]) for v in demo.verdicts(report)}
    assert words == {("t", "probe"): ("helps", 0.02), ("t", "finetune"): ("unclear", 0.04),
                     ("u", "probe"): ("hurts", 0.01), ("v", "probe"): ("unclear", 0.01)}


def _summary(seeds, curve, verdict_word="unclear", p=None):
    rows = [{"task": "demo_note", "protocol": "probe", "fraction": 0.1, "arm": "adversarial", "metric": "accuracy",
             "pretrained": 0.70, "none": 0.69, "margin": 0.01, "sd_margin": 0.02 if seeds > 1 else None,
             "seed_spread": 0.02, "n": seeds, "p": p, "verdict": verdict_word}]
    return {"pretrain": {"adversarial": {"workdir": "w", "eval_acc_curve": curve}}, "verdict": rows}


def test_the_verdict_says_why_a_small_run_cannot_settle_it_and_ends_with_the_command_that_can(capsys):
    short = demo.DemoOptions(pretrain_steps=30, seeds=1)
    reasons = demo.caveats(_summary(1, {"10": 0.20, "30": 0.24}), short)
    assert reasons[:4] == ["one seed: no paired test (--seeds 3 or more)",
                           "30 pre-training steps (the demo's default: 800)",
                           "the adversarial encoder's validation accuracy was still rising at its last evaluation "
                           "(--pretrain-steps)",
                           "the probe only (--protocols probe,finetune adds full fine-tuning)"]
    demo._print_verdict(_summary(1, {"10": 0.20, "30": 0.24}), short)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"    {demo.NEXT_COMMAND}" and "for a real answer" in lines[-2]
    assert "  verdict: pre-training paid off in 0 of 1 comparisons (not clearly in demo_note probe: unclear)" in lines
    # The default run, its curve flat at the end, full fine-tuning too: only the seeds and the scale remain.
    default = demo.DemoOptions(protocols=("probe", "finetune"))
    assert demo.caveats(_summary(3, {"150": 0.30, "800": 0.30}, p=0.2), default) == [
        "3 seeds: the paired test calls only margins well above the seed spread",
        "the mini model on 128-note windows, trained for minutes: far below the paper's scale"]
    demo._print_verdict({"pretrain": {}, "verdict": []}, demo.DemoOptions(scratch=False))
    out = capsys.readouterr().out
    assert "no verdict: --no-scratch leaves no random-encoder arm" in out and out.endswith(f"{demo.NEXT_COMMAND}\n")
