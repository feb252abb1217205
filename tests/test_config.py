"""Configs: loading, typed overrides, and validation that fails before any build or compile."""

import pytest

from midibert_jax import cli
from midibert_jax.config_loading import ConfigError, apply_override, load_config, load_with_overrides, split_overrides
from midibert_jax.config_validation import validate, validate_pretrain


def test_variants_load_and_validate():
    for arg in ("tiny", "base", "large", "tiny,runlocal", "tiny,masking=random", "base,reference", "tiny,masker=separate"):
        config = load_config(f"configs/pretrain.py:{arg}")
        validate_pretrain(config, num_devices=8)
    config = load_config("configs/pretrain.py:base,reference")
    assert config.loss.reference_sign_flip and config.masking.reference_pads_as_candidates
    assert config.mask_book.reference_pads_as_candidates and config.loss.full_sequence_weight == 1.0


def test_pod_variants_validate_on_their_slices():
    # (variant, chips, hosts, windows per chip): every batch (training, evaluation, mask book) splits evenly.
    for variant, chips, hosts, per_chip in (("v4_32", 16, 4, 16), ("v5e_256", 256, 64, 8)):
        config = load_config(f"configs/pretrain.py:base,{variant}")
        validate_pretrain(config, num_devices=chips, num_processes=hosts)
        assert config.data.batch_size == chips * per_chip
        assert (config.model.remat, config.model.dtype, config.model.max_len) == ("full", "bfloat16", 1024)


def test_cpu_recipe_per_task_tables_name_real_tasks_and_reach_the_config():
    # A misspelt key in a per-task table would silently fall back to the default setting; the recipe's values
    # are the measured ones of docs/results (pop909.md, paper_tasks.md).
    from configs import finetune

    known = set(finetune.TASKS.values()) | set(finetune.CPU_STEPS)
    for table in (finetune.CPU_PITCH_SHIFT, finetune.CPU_WEIGHT_DECAY, finetune.CPU_EVAL_VIEWS):
        assert set(table) <= known, set(table) - known
    expected = {  # task: (rows per window, windows per step, steps, weight decay, transposition, evaluation views)
        "melody": (128, 32, 3600, 0.1, 5, 4), "velocity": (128, 32, 3600, 0.01, 5, 4),
        "composer": (512, 8, 1500, 0.01, 5, 1), "emotion": (512, 8, 1500, 0.01, 0, 1)}
    for task, recipe in expected.items():
        config = load_config(f"configs/finetune.py:{task},cpu,scratch")
        validate(config, num_devices=1, num_processes=1)
        got = (config.data.max_len, config.data.batch_size, config.train.steps, config.optim.weight_decay,
               config.augment.pitch_shift, config.train.eval_views)
        assert got == recipe, (task, got)


def test_overrides_are_typed_and_keys_must_exist():
    config = load_with_overrides("configs/pretrain.py:tiny", [("train.steps", "7"), ("optim.learning_rate", "1e-3"),
                                                               ("masking.policy", "random")])
    assert config.train.steps == 7 and config.optim.total_steps == 7  # a FieldReference follows train.steps
    assert config.optim.learning_rate == 1e-3 and config.masking.policy == "random"
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'"):
        apply_override(config, "train.stepz", "3")
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        apply_override(config, "trian.steps", "3")
    with pytest.raises(ConfigError, match="train.steps: cannot parse 'many' as int"):
        apply_override(config, "train.steps", "many")
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        apply_override(config, "train.steps", "2.5")
    with pytest.raises(ConfigError, match="expected a boolean"):
        apply_override(config, "loss.reference_sign_flip", "perhaps")
    with pytest.raises(ConfigError, match="unknown config modifier"):
        load_config("configs/pretrain.py:tiny,turbo")
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.py:tiny")
    rest, overrides = split_overrides(["pretrain", "--config.train.steps=3", "--workdir", "w", "--config.seed", "4"])
    assert rest == ["pretrain", "--workdir", "w"] and overrides == [("train.steps", "3"), ("seed", "4")]


@pytest.mark.parametrize(
    "overrides,devices,processes,message",
    [
        ([("mesh.fsdp", "3")], 8, 1, "mesh .* does not fit 8 device"),
        ([("mesh.data", "2"), ("mesh.fsdp", "2")], 8, 1, "does not fit 8"),
        ([("mesh.fsdp", "4"), ("data.batch_size", "6")], 8, 1, r"data.batch_size=6 must be a multiple of 8"),
        ([("data.eval_batch_size", "3")], 2, 1, r"data.eval_batch_size=3 must be a multiple of 2"),
        ([("data.batch_size", "9")], 1, 2, r"data.batch_size=9 must be a multiple of 2 .*2 process"),
        ([("model.num_heads", "3")], 1, 1, "hidden_size 256 is not divisible by model.num_heads 3"),
        ([("masking.policy", "clever")], 1, 1, "masking.policy must be one of"),
        ([("train.steps", "0")], 1, 1, "train.steps must be a positive integer"),
        ([("data.max_len", "100")], 1, 1, "multiple of 8"),
        ([("model.position_embedding", "alibi")], 1, 1, "position_embedding must be one of"),
        ([("optim.schedule", "cosine")], 1, 1, "optim.schedule must be one of"),
        ([("mask_book.unit", "hour")], 1, 1, "mask_book.unit must be one of"),
    ],
)
def test_validation_names_the_key(overrides, devices, processes, message):
    config = load_with_overrides("configs/pretrain.py:tiny", overrides)
    with pytest.raises(ConfigError, match=message):
        validate_pretrain(config, num_devices=devices, num_processes=processes)


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    code = cli.main(["pretrain", "--config", "configs/pretrain.py:tiny", "--workdir", str(tmp_path),
                     "--config.train.stepz=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.stepz'" in err and "Traceback" not in err


def test_pretrain_command_validates_before_building_anything(tmp_path, capsys):
    code = cli.main(["pretrain", "--config", "configs/pretrain.py:tiny", "--workdir", str(tmp_path / "w"),
                     "--config.data.batch_size=0", f"--config.data.data_dir={tmp_path / 'tfds'}"])
    assert code == 2
    assert "data.batch_size must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "overrides,devices,processes,message",
    [
        ([("mesh.fsdp", "3")], 8, 1, "mesh .* does not fit 8 device"),
        ([("mesh.fsdp", "4"), ("data.batch_size", "6")], 8, 1, r"data.batch_size=6 must be a multiple of 8"),
        ([("data.eval_batch_size", "3")], 2, 1, r"data.eval_batch_size=3 must be a multiple of 2"),
        ([("data.batch_size", "0")], 1, 1, "data.batch_size must be a positive integer"),
        ([("model.num_heads", "5")], 1, 1, "is not divisible by model.num_heads 5"),
        ([("train.eval_views", "0")], 1, 1, r"train.eval_views=0 must be an integer in \[1, data.max_len\]"),
        ([("train.eval_views", "4"), ("augment.eval_mask", "True")], 1, 1, "cannot be combined with augment.eval_mask"),
    ],
)
def test_fine_tuning_configs_are_validated_too(overrides, devices, processes, message):
    config = load_with_overrides("configs/finetune.py:melody,scratch", overrides)
    with pytest.raises(ConfigError, match=message):
        validate(config, num_devices=devices, num_processes=processes)
    validate(load_config("configs/finetune.py:melody,scratch"), num_devices=devices, num_processes=1)


def test_train_and_evaluate_validates_before_building_anything(tmp_path):
    """Both kinds, called as a library (a notebook), not only through the command."""
    from midibert_jax.train import finetune, pretrain

    config = load_with_overrides("configs/finetune.py:melody,scratch", [("data.batch_size", "0")])
    with pytest.raises(ConfigError, match="data.batch_size must be a positive integer"):
        finetune.train_and_evaluate(config, str(tmp_path / "f"), data=finetune.Data([], []))
    config = load_with_overrides("configs/pretrain.py:tiny", [("data.batch_size", "0"),
                                                             ("data.data_dir", str(tmp_path / "tfds"))])
    with pytest.raises(ConfigError, match="data.batch_size must be a positive integer"):
        pretrain.train_and_evaluate(config, str(tmp_path / "p"))
    assert not (tmp_path / "f").exists() and not (tmp_path / "p").exists() and not (tmp_path / "tfds").exists()
