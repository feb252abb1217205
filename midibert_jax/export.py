"""A trained run (or an imported checkpoint) -> a folder for PyTorch users and model hubs.

    export_run("runs/melody", "exported/melody")      # model.safetensors, config.json, vocab.json, README.md
    export_run("runs/pre", "out", which=400, fmt="torch", dtype="bfloat16")

The parameters of one step are restored as host numpy arrays whatever mesh wrote them (orbax gathers
a sharded checkpoint), converted by model/torch_export.py and written as float32 unless `dtype` says
otherwise. The model card (README.md) says what the run was trained on, which step this is, and the
metrics of the run's own evaluations (its eval_<split>.json files, each with the step it measured).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from etils import epath

from midibert_jax import paths
from midibert_jax import run as run_lib
from midibert_jax.model import torch_export, torch_import
from midibert_jax.model.torch_export import ExportError
from midibert_jax.tokenizer import vocab
from midibert_jax.train.task_info import TaskInfo

EXPORT_FILES = (paths.EXPORT_CONFIG, paths.EXPORT_VOCAB, paths.EXPORT_CARD, *paths.EXPORT_WEIGHTS.values())
EVAL_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class Exported:
    """What export_run wrote: the folder, its config.json, the number of exported parameters."""

    out: epath.Path
    meta: dict[str, Any]
    num_parameters: int


def _files_to_replace(out_dir: epath.Path, out: str | os.PathLike, overwrite: bool) -> list[str]:
    """The earlier export's files in `out_dir` that this one replaces; raises if it may not write there."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise ExportError(f"{os.fspath(out)}: exists and is not a folder")
    present = sorted(p.name for p in out_dir.iterdir())
    if present and not overwrite:
        raise ExportError(f"{os.fspath(out)}: not empty (holds {present[0]!r}); choose an empty folder or pass --overwrite")
    foreign = [name for name in present if name not in EXPORT_FILES]
    if foreign:
        raise ExportError(f"{os.fspath(out)}: holds {foreign[0]!r}, which an export does not write; "
                          "--overwrite only replaces an earlier export: choose another folder")
    return present


def export_run(workdir: str | os.PathLike, out: str | os.PathLike, *, which: str | int = "best",
               fmt: str = "safetensors", dtype: str = "float32", overwrite: bool = False) -> Exported:
    """Writes checkpoint `which` ('best', 'latest' or a step; an import has one) of `workdir` into `out`.

    Raises:
      ExportError: `out` is not empty (without `overwrite`, or holding files an export does not write),
        the workdir has no checkpoint or not that step, or the model has no reference layout.
    """
    if fmt not in torch_export.FORMATS:
        raise ExportError(f"format must be one of {torch_export.FORMATS}, got {fmt!r}")
    out_dir = paths.resolve(out)
    replaced = _files_to_replace(out_dir, out, overwrite)
    try:
        with run_lib.Run.open(workdir) as run:
            step = None if run.is_imported else run.step(which)
            config = run.config if run.is_imported else run.config_at(step)
            params = run.params(which=step if step is not None else "best")  # numpy, on the host
            source = {"path": os.fspath(workdir), "run": run.kind, "step": step, "latest_step": run.latest_step}
            evaluations = _evaluations(run.root)
    except run_lib.NoCheckpointError as e:
        raise ExportError(str(e)) from e
    if run.is_imported:
        source["imported_from"] = config.get("source")
    kind, heads, left_out = torch_export.layout_of(params)
    state = torch_export.to_state_dict(params, kind, config.model, heads, dtype)
    task = TaskInfo.from_config(config.task) if "task" in config else None
    meta = torch_export.export_config(
        kind=kind, heads=heads, config=config.model, fmt=fmt, dtype=dtype,
        task={"name": task.name, "level": task.level, "class_names": list(task.class_names)} if task else None,
        num_classes=torch_import.num_classes_of(params), source=source, left_out=left_out,
    )
    num_parameters = sum(int(x.size) for g in ("encoder",) + heads for x in jax.tree_util.tree_leaves(params[g]))
    if jax.process_index() == 0:
        for name in replaced:
            (out_dir / name).unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / meta["weights"]).write_bytes(torch_export.weights_bytes(state, fmt))
        paths.write_json(out_dir / paths.EXPORT_VOCAB, torch_export.vocab_json())
        paths.write_text(out_dir / paths.EXPORT_CARD, model_card(meta, config, evaluations, num_parameters))
        paths.write_json(out_dir / paths.EXPORT_CONFIG, meta)  # last: an export is complete once it is there
    return Exported(out_dir, meta, num_parameters)


def _evaluations(root: epath.Path) -> dict[str, dict[str, Any]]:
    """{split: the run's eval_<split>.json} for the splits evaluated (see midibert_jax/evaluate.py)."""
    found = {}
    for split in EVAL_SPLITS:
        path = root / paths.eval_file(split)
        if path.exists():
            found[split] = {run_lib.canonical_metric(k): v for k, v in paths.read_json(path).items()}
    return found


# ----------------------------------------------------------------------------- the model card


def _what(meta: dict[str, Any]) -> str:
    task = meta["task"]
    name = f" for `{task['name']}`" if task else ""
    return {
        "encoder": "an Octuple MIDI BERT encoder",
        "pretrain": "a pre-trained Octuple MIDI BERT with its masked-note heads"
                    + (" and its masker" if "masker" in meta["heads"] else ""),
        "masker": "an Octuple MIDI BERT with an Adversarial-MidiBERT masker",
        "token": f"a note-level classifier{name} ({meta['num_classes']} classes)",
        "sequence": f"a sequence classifier{name} ({meta['num_classes']} classes)",
    }[meta["kind"]]


def _training_lines(meta: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    source = meta["source"]
    if source["run"] == "imported":
        return [f"- imported (`midibert-jax import-torch`) from `{source.get('imported_from')}`; not trained here"]
    data, train = config.get("data", {}), config.get("train", {})
    lines = []
    if meta["task"]:
        task = meta["task"]
        lines.append(f"- task: `{task['name']}`, {task['level']} level, classes {', '.join(task['class_names'])}")
        lines.append(f"- data: `{data.get('root')}`" if data.get("root") else "- data: the task's built-in data")
        if train.get("piece_fraction", 1.0) < 1.0:
            lines.append(f"- labelled pieces used: a seeded {train.get('piece_fraction'):g} of the training split")
        init = train.get("init_from") or ""
        lines.append(f"- encoder initialised from `{init}`" if init else "- encoder trained from scratch (random init)")
    else:
        corpus = f"the MIDI files under `{data.get('folder')}`" if data.get("dataset") == "folder" else "the demo corpus (music21's scores)"
        lines.append(f"- data: {corpus}, windows of {data.get('max_len')} notes")
        if "masking" in config:
            lines.append(f"- masking: {config.masking.get('policy')}")
    planned = train.get("steps") or "by epochs"
    lines.append(f"- exported step {source['step']} (latest step of the run {source['latest_step']}; planned: {planned})")
    return lines


def _evaluation_lines(meta: dict[str, Any], evaluations: dict[str, dict[str, Any]]) -> list[str]:
    if not evaluations:
        return [f"No evaluation recorded: `midibert-jax evaluate --workdir {meta['source']['path']}` writes one."]
    exported = meta["source"]["step"]
    if meta["task"]:
        lines = ["| split | step | accuracy | macro-F1 | piece accuracy | loss |", "|---|---|---|---|---|---|"]
        for split, r in evaluations.items():
            piece = f"{r['piece_accuracy']:.4f}" if "piece_accuracy" in r else "-"
            lines.append(f"| {split} | {r.get('step')} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {piece} | {r['loss']:.4f} |")
    else:
        lines = ["| split | step | masked-note accuracy | loss | per field |", "|---|---|---|---|---|"]
        for split, r in evaluations.items():
            fields = ", ".join(f"{f} {r[f'eval/accuracy/{f}']:.3f}" for f in vocab.FIELDS if f"eval/accuracy/{f}" in r)
            lines.append(f"| {split} | {r.get('step')} | {r['eval/accuracy']:.4f} | {r['eval/loss']:.4f} | {fields} |")
    if any(r.get("step") != exported for r in evaluations.values()):
        lines += ["", f"A row whose step is not {exported} measured another checkpoint of the run than this one."]
    return lines


def _pooling_lines(meta: dict[str, Any]) -> list[str]:
    if meta["kind"] != "sequence":
        return []
    pooling = meta["sequence_pooling"]
    if pooling["include_pads"]:
        return [f"- pooling: {pooling['r']}-head self-attention over every row, PAD rows included (as the reference)"]
    return [f"- pooling: {pooling['r']}-head self-attention over the notes only; the reference's "
            "`SequenceClassification` pools over PAD rows too, so on padded windows its logits differ"]


def model_card(meta: dict[str, Any], config: ml_collections.ConfigDict, evaluations: dict[str, dict[str, Any]],
               num_parameters: int) -> str:
    """README.md of an export: what the model is, what it was trained on, its step and metrics, the files."""
    bert, source = meta["bert"], meta["source"]
    where = f"`{source['path']}`" + (f", step {source['step']}" if source["step"] is not None else "")
    lines = [
        "---", "library_name: pytorch", "tags:", "- symbolic-music", "- midi", "- octuple", "- midibert", "---", "",
        f"# {os.path.basename(os.path.normpath(source['path']))}: {meta['kind']}", "",
        f"This is {_what(meta)}, exported by midibert-jax from {where}. The weights carry the module names of "
        f"Adversarial-MidiBERT's PyTorch model ({', '.join(meta['architecture'])} in its `model.py`) and load "
        "into those classes; `config.json` holds the `BertConfig` arguments, `vocab.json` the Octuple vocabulary.",
        "", "## Model", "",
        f"- encoder: {bert['num_hidden_layers']} layers, hidden {bert['hidden_size']}, {bert['num_attention_heads']} "
        f"heads, feed-forward {bert['intermediate_size']}, {bert['position_embedding_type']} positions, up to "
        f"{meta['max_len']} notes; field embeddings of {meta['emb_size']}",
        f"- heads: {', '.join(meta['heads']) or 'none'}"
        + (f" (left out, no reference counterpart: {', '.join(meta['left_out'])})" if meta["left_out"] else ""),
        *_pooling_lines(meta),
        f"- {num_parameters:,} parameters, written as {meta['dtype']} in `{meta['weights']}`",
        "", "## Training", "", *_training_lines(meta, config),
        "", "## Evaluation", "", *_evaluation_lines(meta, evaluations),
        "", "## Loading", "",
        "Not written (the model never computes with them; expect them among the missing keys of "
        f"`load_state_dict(..., strict=False)`): {', '.join(f'`{n}.*`' for n in meta['not_exported'])}.",
        "",
    ]
    return "\n".join(lines)
