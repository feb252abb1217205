"""What fine-tuning and inference need to know about a task: name, level, class names, target key.

The task of a saved run is recorded in its config (`config.task.level`, `config.task.class_names`);
a new run takes it from the built dataset or the task registry (midibert_jax.data.tasks).
"""

from __future__ import annotations

import dataclasses

import ml_collections

LEVELS = ("note", "sequence")
TARGET_KEY = {"note": "labels", "sequence": "label"}


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """A task's name, level ('note' | 'sequence') and class names (in class id order)."""

    name: str
    level: str
    class_names: tuple[str, ...]

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"task {self.name!r}: level must be one of {LEVELS}, got {self.level!r}")
        if len(self.class_names) < 2:
            raise ValueError(f"task {self.name!r}: needs at least two classes, got {list(self.class_names)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def target_key(self) -> str:
        """The batch key of the targets: 'labels' int32 [B, L] (note) or 'label' int32 [B] (sequence)."""
        return TARGET_KEY[self.level]

    @classmethod
    def from_config(cls, task_config) -> "TaskInfo | None":
        """From a config's `task` block when it records level and class names (a saved run), else None."""
        level = task_config.get("level", "")
        names = tuple(task_config.get("class_names", ()) or ())
        return cls(task_config["name"], level, names) if level and names else None


def task_info(config: ml_collections.ConfigDict, dataset_dir: str = "") -> TaskInfo:
    """The task of a config: recorded in `config.task` (saved runs), else from the built dataset
    (`tasks.dataset_task`, the class names it was built with), else from the task registry."""
    recorded = TaskInfo.from_config(config.task)
    if recorded is not None:
        return recorded
    from midibert_jax.data import tasks  # pylint: disable=import-outside-toplevel

    task = tasks.dataset_task(dataset_dir) if dataset_dir else tasks.get_task(config.task.name, config.data)
    return TaskInfo(config.task.name, task.level, tuple(task.class_names))
