"""Export (midibert_jax/export.py, model/torch_export.py): runs out to the reference's PyTorch layout and back.

The runs are trainer-shaped checkpoints of tiny models with random weights, written directly (no
training, no compilation); the PyTorch side is test_torch_parity's re-creation of the reference's
modules. Shown here: import(export(x)) == x bit for bit for every layout kind and for training runs
(float32 and bfloat16 parameters), the same logits in PyTorch as in JAX, the errors, and the README's
"Use the model in PyTorch" section run as written. A sharded checkpoint: multidevice/test_sharded_model.py.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file as load_safetensors
from torch import nn

import midi_factory
from test_torch_parity import (TorchMasker, TorchMidiBert, TorchPretrain, TorchSequence, TorchToken, _apply,
                               _tokens, _torch_models)

from midibert_jax import cli, config_loading, export, paths
from midibert_jax.commands import import_torch
from midibert_jax.model import imported, models, torch_export, torch_import
from midibert_jax.model.torch_export import ExportError
from midibert_jax.run import NoCheckpointError, Run
from midibert_jax.tokenizer import vocab
from midibert_jax.train import checkpointing, finetune, pretrain
from midibert_jax.train import classification_metrics as cm_lib
from midibert_jax.train.task_info import TaskInfo

L = 32
ATOL = 1e-4
NOTE_TASK = TaskInfo("melody", "note", ("melody", "bridge", "piano"))
SEQ_TASK = TaskInfo("composer", "sequence", ("a", "b", "c"))
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


# ----------------------------------------------------------------------------- runs


def _tiny(model: ml_collections.ConfigDict, field_embed_dim: int = 16) -> None:
    """2 layers of 32; the heads keep the reference's widths (256, pooling 128 x 4) so its classes fit."""
    model.num_layers, model.hidden_size, model.num_heads, model.mlp_dim = 2, 32, 2, 64
    model.field_embed_dim, model.max_len = field_embed_dim, L


def _random_state(abstract, seed: int):
    """A state shaped, typed and sharded like `abstract`: N(0, 0.1) floats, zero integers, made on the host."""
    rng = np.random.default_rng(seed)

    def leaf(a):
        floating = np.issubdtype(a.dtype, np.floating) or a.dtype == jax.numpy.bfloat16
        value = 0.1 * rng.standard_normal(a.shape) if floating else np.zeros(a.shape)
        return jax.device_put(value.astype(a.dtype), a.sharding)

    return jax.tree_util.tree_map(leaf, abstract)


def _save(path, config, trainer, steps=(3, 6)) -> dict[int, dict]:
    """Checkpoints `steps` of random states into workdir `path`; returns {step: params on the host}."""
    params = {}
    with checkpointing.Checkpointer(os.path.join(path, paths.CHECKPOINTS), save_every=1, keep_last=5,
                                    best_metric=finetune.BEST_METRIC) as ckpt:
        for step in steps:
            state = _random_state(trainer.abstract_state, seed=step)
            ckpt.save_now(step, state=state, mask_book=np.zeros((1, 1), np.uint8), data={"next_index": step},
                          config=config.to_dict(), metrics={finetune.BEST_METRIC: step / 10})
            params[step] = jax.device_get(state.params)
    return params


def pretrain_run(path, param_dtype: str = "float32"):
    """(workdir, config, {step: params}) of a tiny adversarial pre-training run, with its validation evaluation."""
    config = config_loading.load_config("configs/pretrain.py:tiny")
    config.unlock()
    _tiny(config.model)
    config.model.param_dtype = param_dtype
    config.data.max_len = L
    params = _save(path, config, pretrain.Trainer(config))
    totals = {"count": 50, "correct": np.arange(8) * 5, "loss": np.linspace(1, 3, 8) * 50}
    paths.write_json(path / paths.eval_file("validation"),
                     {"kind": "pretrain", "split": "validation", "step": 6, **pretrain.eval_metrics(totals)})
    return str(path), config, params


def finetune_run(path, task: TaskInfo, arg: str, field_embed_dim: int = 16):
    """(workdir, config, {step: params}) of a tiny fine-tuning run, with a test evaluation of step 6."""
    config = config_loading.load_config("configs/finetune.py:" + arg)
    config.unlock()
    _tiny(config.model, field_embed_dim)
    config.data.max_len = L
    config = finetune.resolve_config(config, task, str(path))
    params = _save(path, config, finetune.FinetuneTrainer(config, task))
    confusion = np.array([[5, 1, 0], [2, 3, 1], [0, 1, 4]])
    result = {"task": task.name, "split": "test", "step": 6, **cm_lib.summarize(confusion, task.class_names), "loss": 0.9}
    paths.write_json(path / paths.eval_file("test"), result)
    return str(path), config, params


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "pretrain": pretrain_run(root / "pretrain"),
        "token": finetune_run(root / "melody", NOTE_TASK, "melody,scratch"),
        "sequence": finetune_run(root / "composer", SEQ_TASK, "composer,scratch"),
    }


def _import(folder, out, **kwargs) -> dict:
    args = dict(checkpoint=str(folder), kind=None, out=str(out), num_heads=None, no_scan_layers=False) | kwargs
    assert import_torch.run(argparse.Namespace(**args)) == 0
    with Run.open(out) as run:
        return run.params()


def _assert_identical(ours, theirs):
    flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}
    a, b = flat(ours), flat(theirs)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), f"{name} differs"


# ----------------------------------------------------------------------------- round trips


def test_round_trip_of_every_layout_kind(tmp_path):
    """The reference's state dicts -> import -> export -> import: the same params bit for bit, and the
    exported tensors are the reference's own (the unused entries aside)."""
    base, torch_models = _torch_models("tiny")
    for i, (kind, module) in enumerate(torch_models.items()):
        base.scan_layers = kind not in ("encoder", "token")  # both encoder layouts
        reference = {k: v.numpy() for k, v in module.state_dict().items()}
        conversion = torch_import.convert(reference, kind, base)
        first = imported.save_imported(tmp_path / f"{kind}_in", conversion.params, conversion.config, kind=kind,
                                       num_classes=conversion.num_classes)
        fmt = torch_export.FORMATS[i % 2]
        result = export.export_run(first, tmp_path / f"{kind}_out", fmt=fmt)
        assert result.meta["kind"] == kind and result.meta["weights"] == paths.EXPORT_WEIGHTS[fmt]
        state, meta = torch_export.read_export(tmp_path / f"{kind}_out")
        not_exported = tuple(meta["not_exported"])
        assert set(state) == {k for k in reference if not k.startswith(not_exported)}, kind
        for name, value in state.items():
            expected = reference[name][:1] if "token_type" in name else reference[name]
            value = value[:1] if "token_type" in name else value
            assert value.tobytes() == expected.tobytes(), f"{kind}: {name}"

        back = _import(tmp_path / f"{kind}_out", tmp_path / f"{kind}_back")
        with Run.open(first) as run:
            _assert_identical(back, run.params())
        with Run.open(tmp_path / f"{kind}_back") as run:
            assert run.config.kind == kind and run.config.num_classes == conversion.num_classes
            assert run.config.model.to_dict() == conversion.config.to_dict()


@pytest.mark.parametrize("kind", ["pretrain", "token", "sequence"])
def test_round_trip_of_training_runs(runs, kind, tmp_path):
    workdir, config, params = runs[kind]
    result = export.export_run(workdir, tmp_path / "out", which=3)  # not the best step (6)
    assert result.meta["source"]["step"] == 3 and result.meta["kind"] == kind
    back = _import(tmp_path / "out", tmp_path / "back")
    _assert_identical(back, params[3])
    # The weights file alone imports too, its sizes inferred; the head count is not in a state dict.
    bare = _import(tmp_path / "out" / paths.EXPORT_WEIGHTS["safetensors"], tmp_path / "bare", kind=kind, num_heads=2)
    _assert_identical(bare, params[3])
    if kind == "pretrain":
        assert set(back) == {"encoder", "recoverer", "masker"}
        assert result.meta["architecture"] == ["MidiBertLM", "Masker"]
    else:
        task = NOTE_TASK if kind == "token" else SEQ_TASK
        assert result.meta["task"] == {"name": task.name, "level": task.level, "class_names": list(task.class_names)}
        assert result.meta["num_classes"] == 3 and result.meta["max_len"] == L
    assert result.meta["vocab_sizes"] == dict(zip(vocab.FIELDS, vocab.VOCAB_SIZES))
    assert paths.read_json(tmp_path / "out" / paths.EXPORT_VOCAB)["tokens"] == vocab.token_names()
    card = (tmp_path / "out" / paths.EXPORT_CARD).read_text()
    assert "exported step 3 (latest step of the run 6" in card
    assert "measured another checkpoint" in card  # the run's evaluation is of step 6
    if kind == "pretrain":
        assert "| validation | 6 | 0.3500 |" in card and "the demo corpus" in card
    else:
        assert "| test | 6 | 0.7059 |" in card and "trained from scratch" in card


def test_a_bfloat16_run_exports_as_float32_unless_asked(tmp_path):
    workdir, _, params = pretrain_run(tmp_path / "bf16", param_dtype="bfloat16")
    assert params[6]["encoder"]["layers"]["mlp_in"]["kernel"].dtype == jax.numpy.bfloat16
    for dtype, fmt in (("float32", "safetensors"), ("bfloat16", "torch"), ("bfloat16", "safetensors")):
        # The values written, as float32 (the heads keep float32 parameters: rounded by a bfloat16 export).
        as_float32 = jax.tree_util.tree_map(lambda x: np.asarray(np.asarray(x, dtype), np.float32), params[6])
        out = tmp_path / f"{dtype}_{fmt}"
        export.export_run(workdir, out, fmt=fmt, dtype=dtype)
        state, meta = torch_export.read_export(out)
        assert meta["dtype"] == dtype
        weights = out / meta["weights"]
        stored = torch.load(weights, weights_only=True) if fmt == "torch" else load_safetensors(str(weights))
        assert {v.dtype for v in stored.values()} == {getattr(torch, dtype)}
        _assert_identical(_import(out, tmp_path / f"{dtype}_{fmt}_back"), as_float32)  # bf16 -> f32 is exact


def test_which_layout_a_run_exports_as():
    assert torch_export.layout_of(["encoder"]) == ("encoder", (), [])
    assert torch_export.layout_of(["encoder", "masker"]) == ("masker", ("masker",), [])
    assert torch_export.layout_of(["encoder", "masker", "recoverer"]) == ("pretrain", ("recoverer", "masker"), [])
    # masker.mode=separate: the masker reads its own encoder, which the reference cannot hold.
    assert torch_export.layout_of(["encoder", "masker", "masker_encoder", "recoverer"]) == (
        "pretrain", ("recoverer",), ["masker", "masker_encoder"])
    with pytest.raises(ExportError, match=r"no reference layout holds the heads \['sequence_head', 'token_head'\]"):
        torch_export.layout_of(["encoder", "token_head", "sequence_head"])


# ----------------------------------------------------------------------------- parity in PyTorch


def _reference_modules(meta: dict, state: dict) -> dict[str, nn.Module]:
    """The reference's modules built from an export's config.json, its weights loaded (eval mode)."""
    midibert = TorchMidiBert(transformers.BertConfig(**meta["bert"]), meta["emb_size"])
    holder = nn.Module()  # one module with the export's top-level names, so one load fills every part
    if meta["kind"] == "pretrain":
        modules = {"pretrain": TorchPretrain(midibert), "masker": TorchMasker(midibert)}
        holder.mask_lm, holder.linear = modules["pretrain"].mask_lm, modules["masker"].linear
    elif meta["kind"] == "token":
        modules = {"token": TorchToken(midibert, meta["num_classes"])}
        holder.classifier = modules["token"].classifier
    else:
        modules = {"sequence": TorchSequence(midibert, meta["num_classes"])}
        holder.attention, holder.classifier = modules["sequence"].attention, modules["sequence"].classifier
    holder.midibert = midibert
    missing, unexpected = holder.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert not unexpected
    assert missing and all(k.startswith(tuple(meta["not_exported"])) for k in missing), missing
    return {name: m.eval() for name, m in modules.items()}


def test_exported_weights_give_the_same_logits_in_pytorch(runs, tmp_path):
    """Pre-trained and fine-tuned runs: the reference's modules on the export vs our model on the run."""
    tokens = _tokens(2, L, seed=3)
    mask = tokens[..., 0] != vocab.PAD_ROW[0]
    t_tokens, t_mask = torch.from_numpy(tokens).long(), torch.from_numpy(mask).long()
    diffs = {}
    for kind, fmt in (("pretrain", "safetensors"), ("token", "torch"), ("sequence", "safetensors")):
        workdir, config, params = runs[kind]
        export.export_run(workdir, tmp_path / kind, fmt=fmt)
        state, meta = torch_export.read_export(tmp_path / kind)
        modules = _reference_modules(meta, state)
        with torch.no_grad():
            theirs = {name: m(t_tokens, t_mask) for name, m in modules.items() if name != "sequence"}
            if kind == "sequence":  # ours leaves PAD rows out of the pooling, the reference does not
                include_pads = meta["sequence_pooling"]["include_pads"]
                assert include_pads is False
                theirs[kind] = modules[kind](t_tokens, t_mask, include_pads=include_pads)
        ours = params[6]  # the best step, the export's default
        if kind == "pretrain":
            logits, scores = _apply(models.build_pretrain_model(config.model), ours, tokens, mask)
            for field, a, b in zip(vocab.FIELDS, logits, theirs["pretrain"]):
                diffs[f"pretrain {field}"] = np.abs(np.asarray(a) - b.numpy()).max()
            diffs["masker scores"] = np.abs(np.asarray(scores) - theirs["masker"].numpy()).max()
        else:
            task = NOTE_TASK if kind == "token" else SEQ_TASK
            logits = _apply(models.build_classifier(config.model, task), ours, tokens, mask)
            assert logits.shape == theirs[kind].shape
            diffs[f"{kind} logits"] = np.abs(np.asarray(logits) - theirs[kind].numpy()).max()
    print("max |JAX - PyTorch|:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= ATOL, diffs


# ----------------------------------------------------------------------------- errors


def test_errors_are_clear(runs, tmp_path, capsys):
    workdir = runs["token"][0]
    with pytest.raises(ExportError, match=r"no checkpoint step 7; steps present: \[3, 6\]"):
        export.export_run(workdir, tmp_path / "a", which=7)
    assert not (tmp_path / "a").exists()
    # The command: one line, exit status 2.
    assert cli.main(["export", "--workdir", workdir, "--step", "7", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0

    export.export_run(workdir, tmp_path / "a")
    with pytest.raises(ExportError, match=r"a: not empty .*--overwrite"):
        export.export_run(workdir, tmp_path / "a", fmt="torch")
    export.export_run(workdir, tmp_path / "a", fmt="torch", overwrite=True)  # replaces the earlier export
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        [paths.EXPORT_CONFIG, paths.EXPORT_VOCAB, paths.EXPORT_CARD, paths.EXPORT_WEIGHTS["torch"]])
    with pytest.raises(ExportError, match=r"holds 'checkpoints', which an export does not write"):
        export.export_run(workdir, workdir, overwrite=True)  # never over a run

    with pytest.raises(NoCheckpointError, match="an export for PyTorch, not a run; `midibert-jax import-torch"):
        Run.open(tmp_path / "a")
    with pytest.raises(import_torch.ImportTorchError, match="an export of kind 'token', not 'sequence'"):
        _import(tmp_path / "a", tmp_path / "b", kind="sequence")
    with pytest.raises(import_torch.ImportTorchError, match="--kind is required"):
        _import(tmp_path / "a" / paths.EXPORT_WEIGHTS["torch"], tmp_path / "b")
    with pytest.raises(ExportError, match="not a folder written by `midibert-jax export`"):
        _import(tmp_path, tmp_path / "b")

    rope = ml_collections.ConfigDict(runs["token"][1].to_dict())
    rope.model.position_embedding = "rope"
    params = runs["token"][2][6]
    with pytest.raises(ExportError, match="'rope' has no counterpart in the reference"):
        torch_export.to_state_dict(params, "token", rope.model, ("token_head",))
    with pytest.raises(ExportError, match=r"encoder/layer_2/.* is missing for the reference's 'token' layout"):
        deeper = ml_collections.ConfigDict(runs["token"][1].model.to_dict())
        deeper.num_layers = 3
        torch_export.to_state_dict(params, "token", deeper, ("token_head",))


# ----------------------------------------------------------------------------- the README


def _readme_section(title: str) -> tuple[list[str], str]:
    """(the shell commands, the Python code) of a README section."""
    text = open(README, encoding="utf-8").read()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    commands = [line for lang, code in blocks if lang == "bash" for line in code.splitlines() if line.strip()]
    python = "".join(code for lang, code in blocks if lang == "python")
    return commands, python


def _reference_model_py() -> types.ModuleType:
    """The reference's model.py as the README imports it: its constructors over test_torch_parity's classes."""
    module = types.ModuleType("model")

    def midibert(bert_config, e2w, w2e):
        assert [len(e2w[f]) for f in vocab.FIELDS] == list(vocab.VOCAB_SIZES) and w2e["Bar"][0] == "Bar 0"
        return TorchMidiBert(bert_config, 256)  # the reference's fixed emb_size

    module.MidiBert = midibert
    module.TokenClassification = lambda midibert, class_num, hs: TorchToken(midibert, class_num)
    return module


def test_the_readme_use_in_pytorch_section_runs(tmp_path, monkeypatch):
    commands, python = _readme_section("Use the model in PyTorch")
    assert [c.split()[:2] for c in commands] == [["midibert-jax", "export"], ["midibert-jax", "tokenize"]]
    monkeypatch.chdir(tmp_path)
    _, config, params = finetune_run(tmp_path / "runs" / "melody", NOTE_TASK, "melody,scratch", field_embed_dim=256)
    midi_factory.write_piece(tmp_path / "song.mid", num_bars=12, notes_per_bar=3, seed=5)
    for command in commands:
        assert cli.main(command.split()[1:]) == 0, command
    monkeypatch.setitem(sys.modules, "model", _reference_model_py())
    namespace: dict = {}
    exec(compile(python, README, "exec"), namespace)  # pylint: disable=exec-used

    tokens = np.load(tmp_path / "song.npy")[None, :L]
    logits = _apply(models.build_classifier(config.model, NOTE_TASK), params[6], tokens, tokens[..., 0] != vocab.PAD_ROW[0])
    assert np.abs(np.asarray(logits) - namespace["logits"].detach().numpy()).max() <= ATOL
