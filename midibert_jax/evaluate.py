"""Evaluation of a training workdir, fine-tuning or pre-training, from one of its checkpoints.

    evaluate_workdir(workdir, split="test")     # eval_<split>.json (+ confusion PNGs for fine-tuning)

Fine-tuning: accuracy, macro-F1, per-class P/R/F1, confusion matrix (and piece-level metrics for
sequence tasks). Pre-training: per-field masked-token accuracy on the validation split. The run is
evaluated on a data-parallel mesh over the devices at hand (the run's own mesh may not fit).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import ml_collections
import numpy as np

from midibert_jax.config_loading import ConfigError
from midibert_jax.data import pipeline
from midibert_jax import paths
from midibert_jax import run as run_lib
from midibert_jax.train import classification_metrics

log = logging.getLogger(__name__)


def read_run(workdir: str, which: str | int = "best") -> tuple[ml_collections.ConfigDict, int]:
    """(the run's config as saved with checkpoint `which`, with a mesh for this host; that step).

    Raises run.NoCheckpointError.
    """
    with run_lib.Run.open(workdir) as run:
        step = run.step(which)
        return run_lib.with_local_mesh(run.config_at(step)), step


def restore_params(workdir: str, step: int, abstract_params: Any) -> Any:
    """The params of checkpoint `step` of `workdir`, restored onto abstract_params' shardings."""
    with run_lib.Run.open(workdir) as run:
        return run.params(abstract=dict(abstract_params), which=step)


def evaluate_workdir(
    workdir: str, split: str | None = None, *, which: str | int = "best", source: Any = None, max_batches: int = 0,
    write: bool = True, views: int | None = None,
) -> dict[str, Any]:
    """Evaluates a fine-tuning or pre-training workdir; writes eval_<split>.json (and a confusion PNG).

    Args:
      workdir: the run folder.
      split: 'train', 'validation' or 'test' (default 'test'; pre-training runs use 'validation').
      which: checkpoint step: 'best' (by validation accuracy), 'latest' or a number.
      source: the data source to evaluate (default: the split of the run's dataset).
      max_batches: at most this many batches (0: all).
      write: write the JSON and PNG files into the workdir.
      views: note-level tasks: windows per note (`train.eval_views`; None: the run's own setting).
    Raises:
      run.NoCheckpointError: the workdir holds no checkpoint.
    """
    config, step = read_run(workdir, which)
    if "task" not in config:
        return _evaluate_pretrain(workdir, config, step, split, source, max_batches, write)
    return _evaluate_finetune(workdir, config, step, split or "test", source, max_batches, write, views)


def _evaluate_finetune(workdir, config, step, split, source, max_batches, write, views=None) -> dict[str, Any]:
    from midibert_jax.train import finetune, task_info  # pylint: disable=import-outside-toplevel

    task = task_info.task_info(config)
    if views is None:
        views = int(config.train.get("eval_views", 1))
    if views < 1:
        raise ConfigError(f"evaluation views must be >= 1, got {views}")
    views = views if task.level == "note" and not max_batches else 1
    dataset_dir = None
    if source is None:
        from midibert_jax.data import prepare  # pylint: disable=import-outside-toplevel

        dataset_dir = prepare.prepare(config.data)
        try:
            source = pipeline.load_split(dataset_dir, split)
        except KeyError as e:
            raise ConfigError(f"the dataset of {workdir} has no {split!r} split ({dataset_dir})") from e
    elif views > 1:
        raise ConfigError(f"{workdir}: train.eval_views={views} needs the run's own dataset (its manifest says where "
                          "each window starts); evaluate a given source with eval_views=1")
    trainer = finetune.FinetuneTrainer(config, task)
    params = restore_params(workdir, step, trainer.abstract_state.params)
    if views > 1:
        from midibert_jax.train import note_views  # pylint: disable=import-outside-toplevel

        result = trainer.evaluate_views(params, source, note_views.window_bars(dataset_dir), views,
                                        where=f"{dataset_dir} ({split})")
    else:
        result = trainer.evaluate(params, source, max_batches)
        if task.level == "note":
            result["eval_views"] = 1
    result = {"task": task.name, "split": split, "step": step, "class_names": list(task.class_names), **result}
    if write and jax.process_index() == 0:
        folder = paths.resolve(workdir)
        paths.write_json(folder / paths.eval_file(split), result)
        classification_metrics.plot_confusion(
            np.asarray(result["confusion_matrix"]), task.class_names, folder / paths.eval_file(split, "_confusion.png"),
            title=f"{task.name} {split}: accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}",
        )
        if "piece_confusion_matrix" in result:
            classification_metrics.plot_confusion(
                np.asarray(result["piece_confusion_matrix"]), task.class_names,
                folder / paths.eval_file(split, "_piece_confusion.png"),
                title=f"{task.name} {split} pieces: accuracy {result['piece_accuracy']:.3f}",
            )
    return result


def _evaluate_pretrain(workdir, config, step, split, source, max_batches, write) -> dict[str, Any]:
    from midibert_jax.train import pretrain  # pylint: disable=import-outside-toplevel

    if split not in (None, "validation"):
        log.warning("pre-training workdirs are evaluated on the validation split (asked for %s)", split)
    split = "validation"
    if source is None:
        source = pretrain.load_data(config.data).valid
    trainer = pretrain.Trainer(config)
    params = restore_params(workdir, step, trainer.abstract_state.params)
    result = {"kind": "pretrain", "split": split, "step": step, **trainer.evaluate(params, source, max_batches)}
    if write and jax.process_index() == 0:
        paths.write_json(paths.resolve(workdir) / paths.eval_file(split), result)
    return result
