"""No setting silently does nothing: a field the chosen variant does not read is honoured or refused.

`prepare --config.folder=DIR` builds DIR; with an explicit demo variant it is one line naming the
variant to use. Every variant of configs/prepare.py, configs/finetune_data.py, configs/pretrain.py
and configs/finetune.py is swept: each field its `unread_fields` lists is refused when overridden,
and each data-block field that the dataset code never looks at for that variant is listed.
"""

from __future__ import annotations

import itertools
import os

import ml_collections
import pytest

from configs import prepare as prepare_configs
from conftest import TEST_MAX_LEN
from midibert_jax import cli, config_loading, experiment
from midibert_jax.commands import prepare as prepare_command
from midibert_jax.data import manifest, prepare
from midibert_jax.data.builders import corpus

import midi_factory

PREPARE_SPECS = [f"configs/prepare.py:{','.join((v, *m))}" for v in prepare_configs.VARIANTS
                 for n in range(3) for m in itertools.combinations(prepare_configs.MODIFIERS, n)]
TASK_SPECS = [f"configs/finetune_data.py:{task}" for task in
              ("melody", "velocity", "composer", "emotion", "folder_sequence", "folder_note", "demo_melody",
               "demo_collection")]
PRETRAIN_SPECS = [f"configs/pretrain.py:tiny{data}{masking}" for data in ("", ",data=folder")
                  for masking in ("", ",masking=random")]
FINETUNE_SPECS = [f"configs/finetune.py:{task}" for task in
                  ("melody,scratch", "velocity", "composer,scratch", "emotion,probe", "folder_sequence,scratch",
                   "folder_note,scratch", "demo_note,runlocal,scratch", "demo_sequence,reference,scratch")]


def _error_line(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_prepare_with_only_a_folder_builds_that_folder(tmp_path, capsys):
    folder = tmp_path / "mine"
    midi_factory.make_corpus(folder, num_good=3, broken=False)
    argv = ["prepare", f"--config.folder={folder}", f"--config.data_dir={tmp_path / 'tfds'}", "--config.progress=False",
            "--config.num_workers=1", f"--config.max_len={TEST_MAX_LEN}", "--config.valid_fraction=0.3"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    (dataset_dir,) = [line.split(": ", 1)[1] for line in out.splitlines() if line.strip().startswith("manifest:")]
    built = manifest.Manifest.load(os.path.dirname(dataset_dir))
    assert "/midi_folder/" in dataset_dir and built.info["source"] == os.fspath(folder)
    inputs = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {r.path for r in built.records} == inputs


def test_a_folder_with_the_demo_variant_is_one_line_naming_the_variant_to_use(tmp_path, capsys):
    line = _error_line(["prepare", "--config", f"{prepare_command.DEFAULT_CONFIG}:demo", f"--config.folder={tmp_path}",
                        f"--config.data_dir={tmp_path / 'tfds'}"], capsys)
    assert "--config.folder is not read by" in line and "configs/prepare.py:folder" in line
    line = _error_line(["prepare", f"--config.folder={tmp_path}", "--config.beam_options=--runner=DirectRunner",
                        f"--config.data_dir={tmp_path / 'tfds'}"], capsys)
    assert "--config.beam_options is not read" in line and "beam modifier" in line
    line = _error_line(["pretrain", "--config", "configs/pretrain.py:tiny", "--workdir", str(tmp_path / "w"),
                        f"--config.data.folder={tmp_path}", f"--config.data.data_dir={tmp_path / 'tfds'}"], capsys)
    assert "--config.data.folder is not read by configs/pretrain.py:tiny" in line and "data=folder" in line
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "w").exists()  # refused before anything was built


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.extend(_leaves(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def _covered(key: str, unread: dict[str, str]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in unread)


@pytest.mark.parametrize("spec", PREPARE_SPECS + TASK_SPECS + PRETRAIN_SPECS + FINETUNE_SPECS)
def test_every_unread_field_of_every_variant_is_refused_in_one_line(spec):
    config, module = config_loading._load(spec)  # pylint: disable=protected-access
    unread = module.unread_fields(config)
    keys = [key for key in _leaves(config) if _covered(key, unread)]
    if spec.startswith(("configs/prepare.py:demo", "configs/pretrain.py:")) and "folder" not in spec:
        assert any(key.endswith("folder") for key in keys)  # the trap this sweep exists for
    for key in keys:
        with pytest.raises(config_loading.ConfigError) as caught:
            config_loading.load_with_overrides(spec, [(key, _text(config, key))])
        message = str(caught.value)
        assert "\n" not in message and f"--config.{key} is not read by {spec}: " in message
    read = [key for key in _leaves(config) if not _covered(key, unread)]
    config_loading.load_with_overrides(spec, [(key, _text(config, key)) for key in read[:3]])  # taken as before


def _text(config: ml_collections.ConfigDict, key: str) -> str:
    """The current value of dotted `key` as override text."""
    value = config
    for part in key.split("."):
        value = value[part]
    return str(value)


class Recorder:
    """A data block that records which of its fields the dataset code reads (dotted keys)."""

    def __init__(self, block: ml_collections.ConfigDict, read: set[str], prefix: str = ""):
        self._block, self._read, self._prefix = block, read, prefix

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str):
        value = self._block[name]
        if isinstance(value, ml_collections.ConfigDict):
            return Recorder(value, self._read, f"{self._prefix}{name}.")
        self._read.add(f"{self._prefix}{name}")
        return value

    def __contains__(self, name: str) -> bool:
        return name in self._block

    def get(self, name: str, default=None):
        return self[name] if name in self._block else default

    def keys(self):
        return self._block.keys()

    def items(self):
        return [(name, self[name]) for name in self._block.keys()]


@pytest.mark.parametrize("spec", PREPARE_SPECS + TASK_SPECS)
def test_every_data_field_the_dataset_code_never_reads_is_listed_as_unread(spec, tmp_path, monkeypatch):
    """Runs `prepare.prepare` (the build itself replaced by a no-op) on a recording copy of the block."""
    config, module = config_loading._load(spec)  # pylint: disable=protected-access
    with config.unlocked():  # the input each corpus variant needs
        config.data_dir = os.fspath(tmp_path / "tfds")
        if config.get("dataset") == "folder":
            config.folder = os.fspath(tmp_path)
        elif config.get("dataset") == "tasks":
            config.extra_folders = (os.fspath(tmp_path),)
    monkeypatch.setattr(corpus.MidiFolder, "download_and_prepare",
                        lambda self, download_config=None: self.data_path.mkdir(parents=True, exist_ok=True))
    read: set[str] = set()
    prepare.prepare(Recorder(config, read))
    unread = module.unread_fields(config)
    never_read = [key for key in _leaves(config) if key not in read and not _covered(key, unread)]
    assert never_read == [], f"{spec}: the dataset code never reads {never_read}: list them in unread_fields"


def test_the_experiment_refuses_a_data_field_its_task_does_not_read(tmp_path):
    config = config_loading.load_config("configs/experiment.py:runlocal")
    with config.task_overrides.unlocked():
        config.task_overrides["demo_note"] = ml_collections.ConfigDict({"data": {"root": os.fspath(tmp_path)}})
    with pytest.raises(config_loading.ConfigError, match=r"task_overrides\.demo_note\.data\.root is not read by "
                                                         r"configs/finetune.py:demo_note,runlocal: the demo tasks"):
        experiment.plan(config, tmp_path / "experiment")
