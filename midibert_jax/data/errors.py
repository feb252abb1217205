"""Data errors a user can fix (missing folders, bad layouts, labels, builds, a busy dataset).

Every class derives from `DataError`, itself a `midibert_jax.errors.UserError`: the CLI prints
the message as one line; anything else is a bug.
"""

from midibert_jax.errors import UserError


class DataError(UserError):
    """A dataset that cannot be built or read as asked; the message names the file, folder or key."""


class DatasetConfigError(DataError, ValueError):
    """A data config that names no usable dataset (e.g. dataset='folder' without a folder)."""


class BuildError(DataError):
    """A dataset build that cannot proceed (bad config, no inputs)."""


class SplitNotFoundError(DataError, KeyError):
    """A built dataset without the split asked for (e.g. 'test' of a pre-training corpus)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BatchPlanError(DataError, ValueError):
    """Batch sizes that do not fit the data or the processes (e.g. fewer examples than one batch)."""


class DatasetBusyError(DataError):
    """Another process holds the dataset's build lock longer than the config allows to wait."""


# ---------------------------------------------------------------------------- fine-tuning tasks


class TaskDataError(DataError):
    """A fine-tuning dataset that cannot be built as asked."""


class TaskConfigError(TaskDataError, ValueError):
    """A data config that names no usable task or options (unknown task, bad split, bad track map)."""


class DatasetNotFoundError(TaskDataError):
    """The dataset folder is missing (the message says where to download it and the layout expected)."""


class DatasetLayoutError(TaskDataError):
    """The dataset folder exists but holds nothing in the expected layout."""


class SingleClassError(TaskDataError):
    """A classification folder with fewer than two classes."""


class UnknownClassError(TaskDataError):
    """A label folder that is not one of the configured class names."""


class UnmappedTrackError(TaskDataError):
    """A note task met tracks whose names map to no class (unmapped_tracks='error')."""


class SplitFileError(TaskDataError):
    """A split file (split.json, or the official lists) that cannot be used."""
