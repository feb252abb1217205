"""Every flag of `midibert-jax demo` and `experiment` at its edges: it runs, or one line names it and its range.

Nothing here trains: a bad value must fail before anything is built or compiled, and a good edge value
must give a plan whose every run config validates (the runs themselves are tested in test_experiment.py).
"""

import pytest

from midibert_jax import cli, demo, experiment

STEPS = "an integer in 1..2147483647"
SEEDS = "an integer in 1..10"
MAX_LEN = "an integer in 8..1024, a multiple of 8"
MAX_RUNS = "an integer >= 0"

# (argv after the command, what the one line must say: the flag, then the allowed values).
DEMO_BAD = [
    (["--pretrain-steps", "0"], "--pretrain-steps", STEPS),
    (["--pretrain-steps", "-5"], "--pretrain-steps", STEPS),
    (["--pretrain-steps", str(2**31)], "--pretrain-steps", STEPS),
    (["--pretrain-steps", "1e3"], "--pretrain-steps", STEPS),
    (["--pretrain-steps", ""], "--pretrain-steps", STEPS),
    (["--seeds", "0"], "--seeds", SEEDS),
    (["--seeds", "-1"], "--seeds", SEEDS),
    (["--seeds", "11"], "--seeds", SEEDS),
    (["--seeds", "1.5"], "--seeds", SEEDS),
    (["--seeds", "three"], "--seeds", SEEDS),
    (["--max-len", "0"], "--max-len", MAX_LEN),
    (["--max-len", "12"], "--max-len", MAX_LEN),
    (["--max-len", "1032"], "--max-len", MAX_LEN),
    (["--max-len", "-8"], "--max-len", MAX_LEN),
    (["--max-len", "long"], "--max-len", MAX_LEN),
    (["--protocols", ""], "--protocols", "probe or finetune or both"),
    (["--protocols", "probe,probe"], "--protocols", "probe or finetune or both"),
    (["--protocols", "finetun"], "--protocols", "probe or finetune or both"),
    (["--workdir", ""], "--workdir", "give a folder"),
    (["--no-scratch=yes"], "--no-scratch", "ignored explicit argument"),
    (["--pretrain-steps"], "--pretrain-steps", "expected one argument"),
    (["--config.seeds=three"], "seeds", "cannot parse 'three' as tuple"),
]
EXPERIMENT_BAD = [
    (["--max-runs", "-1"], "--max-runs", MAX_RUNS),
    (["--max-runs", "many"], "--max-runs", MAX_RUNS),
    (["--max-runs", "2.5"], "--max-runs", MAX_RUNS),
    (["--config", "nowhere.py"], "config file nowhere.py", "not found"),
    (["--config", "configs/experiment.py:huge"], "unknown variant 'huge'", "('runlocal', 'tpu', 'pop909', 'paper')"),
    (["--config.seeds=()"], "seeds=()", "distinct non-negative integers"),
    (["--config.seeds=(-1,)"], "seeds=(-1,)", "distinct non-negative integers"),
    (["--config.fractions=(0.0,)"], "fractions=(0.0,)", "in (0, 1]"),
    (["--config.fractions=(1.5,)"], "fractions=(1.5,)", "in (0, 1]"),
    (["--config.protocols=('probes',)"], "protocols=('probes',)", "('probe', 'finetune')"),
    (["--config.pretrain.overrides.train.steps=0"], "pretrain adversarial seed 0: train.steps",
     "must be a positive integer, got 0"),
    (["--config.pretrain.overrides.train.steps=-3"], "train.steps", "must be a positive integer, got -3"),
    (["--config.finetune.overrides.train.steps=-1"], "train.steps", "must be an integer >= 0, got -1"),
    (["--config.finetune.overrides.train.steps=huge"], "finetune.overrides.train.steps", "cannot parse"),
]


def _run(argv, capsys):
    """(exit status, stdout, stderr) of `midibert-jax ARGV` in this process (argparse's exit included)."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def quiet_cache(tmp_path, monkeypatch):
    """The experiment turns JAX's compilation cache on for the process: keep it in tmp_path."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))


@pytest.mark.parametrize("command,bad", [("demo", case) for case in DEMO_BAD] + [("experiment", case) for case in EXPERIMENT_BAD],
                         ids=lambda v: " ".join(v[0]) if isinstance(v, tuple) else v)
def test_a_bad_value_is_one_line_naming_the_flag_and_what_it_takes(command, bad, tmp_path, capsys, quiet_cache):
    argv, names, allowed = bad
    if "--workdir" not in argv:
        argv = [*argv, "--workdir", str(tmp_path / "w")]
    code, _, err = _run([command, *argv], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert names in err and allowed in err, err
    assert not (tmp_path / "w").exists()  # failed before anything was written


def test_a_file_is_no_workdir(tmp_path, capsys, quiet_cache):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    for command in ("demo", "experiment"):
        code, _, err = _run([command, "--workdir", str(a_file)], capsys)
        assert code == 2 and err == f"midibert-jax {command}: error: --workdir {a_file}: is a file; give a folder " \
                                    "(created when missing)\n"


@pytest.mark.parametrize("options", [
    demo.DemoOptions(pretrain_steps=1, seeds=1, max_len=8),
    demo.DemoOptions(pretrain_steps=2**31 - 1, seeds=10, max_len=1024, protocols=("finetune",)),
    demo.DemoOptions(pretrain_steps=30, seeds=2, protocols=("probe", "finetune"), scratch=False, random_baseline=True),
], ids=["smallest", "largest", "short, both protocols, random baseline, no scratch"])
def test_edge_values_give_a_plan_whose_every_run_validates(options, tmp_path):
    demo.check_options(options)
    plan = experiment.plan(demo.demo_config(options), tmp_path)
    experiment.validate(plan)
    pre = plan.pretrain[0].config
    assert pre.train.steps == options.pretrain_steps and pre.data.max_len == pre.model.max_len == options.max_len
    assert pre.optim.warmup_steps < pre.train.steps  # a short run's warmup is cut to a tenth of it
    assert len({r.seed for r in plan.finetune}) == options.seeds


def test_max_runs_zero_only_aggregates(tmp_path, capsys, quiet_cache):
    code, out, err = _run(["experiment", "--workdir", str(tmp_path / "exp"), "--max-runs", "0"], capsys)
    assert code == 0 and err == ""
    assert "PARTIAL: 0 of 72 fine-tuning runs finished" in out and "[experiment] run" not in out
    assert (tmp_path / "exp" / "experiment.json").exists()
