"""Using a trained model on MIDI files: embeddings, note labels, piece labels.

    predictor = Predictor.load("runs/melody")          # a fine-tuning workdir (best checkpoint)
    classes = predictor.note_probabilities("song.mid")[1].argmax(-1)
    hidden = embed("song.mid", "runs/pretrain_base")   # float32 [notes, hidden], any workdir or import

A file is tokenized exactly as the dataset builders do (`tokenizer.load_midi`,
`tokenizer.encode_absolute`, `windows.piece_windows`: the sorted notes of the whole piece, cut into
windows of the run's `data.max_len` rows), the windows go through the model in fixed-size batches
(one compilation), and per-note outputs are put back in the order of the piece's sorted notes.
For the velocity task the input's Velocity field is blanked, as in training. Sequence tasks average
the window probabilities over the piece, as evaluation does.

`note_order` maps each sorted row back to its pretty_midi note, so outputs can be written onto the
original notes (exact times, not quantised): `split_tracks` (one track per class) and
`with_velocities` (velocity task) build the output MIDI.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pretty_midi

from midibert_jax import run as run_lib
from midibert_jax import tokenizer
from midibert_jax.config_loading import ConfigError
from midibert_jax.data import windows as windows_lib
from midibert_jax.model import models
from midibert_jax.tokenizer import midi_io, quantize, vocab
from midibert_jax.train import augment, masking
from midibert_jax.train.task_info import TaskInfo

MidiInput = str | os.PathLike | bytes | pretty_midi.PrettyMIDI


class NotAClassifierError(ConfigError):
    """The workdir holds an encoder without a task head (a pre-training run or an import)."""


@dataclasses.dataclass
class Tokenized:
    """A piece as the model sees it.

    Attributes:
      pm: the parsed file.
      rows: int64 [N, 8] the sorted note rows, absolute bars (tokenizer.encode_absolute).
      windows: int32 [W, max_len, 8] (windows.piece_windows).
      bounds: W (start, end) row ranges of the windows.
    """

    pm: pretty_midi.PrettyMIDI
    rows: np.ndarray
    windows: np.ndarray
    bounds: list[tuple[int, int]]

    @property
    def num_notes(self) -> int:
        return len(self.rows)

    def to_notes(self, per_window: np.ndarray) -> np.ndarray:
        """[W, max_len, ...] per-row outputs -> [N, ...] in sorted-note order (pad rows dropped)."""
        return np.concatenate([per_window[w, : end - start] for w, (start, end) in enumerate(self.bounds)])


def tokenize(midi: MidiInput, max_len: int) -> Tokenized:
    """Parses and tokenizes a file (path, bytes or PrettyMIDI) as the dataset builders do.

    Raises:
      tokenizer.TokenizerError (EmptyMidiError for a file without notes), naming the file.
    """
    path = None
    if isinstance(midi, pretty_midi.PrettyMIDI):
        pm = midi
    else:
        path = None if isinstance(midi, (bytes, bytearray)) else os.fspath(midi)
        pm = tokenizer.load_midi(midi)
    try:
        rows = tokenizer.encode_absolute(pm)
    except tokenizer.TokenizerError as e:
        if path is not None and e.path is None:
            raise e.with_path(path) from e
        raise
    bounds = windows_lib.piece_window_bounds(rows[:, vocab.BAR], max_len)
    return Tokenized(pm, rows, windows_lib.piece_windows(rows, max_len), bounds)


def note_order(pm: pretty_midi.PrettyMIDI, rows: np.ndarray) -> list[tuple[int, int]]:
    """(instrument index, note index) in `pm` of each of `rows` (encode_absolute(pm)'s sorted rows).

    encode_absolute sorts rows by (bar, position, instrument, pitch, duration, velocity, ...); bar and
    position grow with the quantised onset, so sorting the notes by (onset, program, pitch, duration,
    velocity) in the same quantisation gives the same order. Rows that are equal are interchangeable.
    The result is checked against `rows`.
    """
    refs, cols = [], []
    for i, inst in enumerate(pm.instruments):
        if not inst.notes:
            continue
        program = vocab.DRUM_PROGRAM if inst.is_drum else inst.program
        for j, n in enumerate(inst.notes):
            refs.append((i, j))
            cols.append((n.start, n.end, program, n.pitch + (vocab.DRUM_PITCH_OFFSET if inst.is_drum else 0), n.velocity))
    a = np.asarray(cols, np.float64).reshape(-1, 5)
    ticks = midi_io.seconds_to_ticks(pm, a[:, :2].reshape(-1)).reshape(-1, 2)
    pos = np.rint(ticks * vocab.POSITIONS_PER_BEAT / pm.resolution).astype(np.int64)
    start = np.maximum(pos[:, 0], 0)
    keys = np.stack([
        start,
        a[:, 2].astype(np.int64),
        a[:, 3].astype(np.int64),
        quantize.duration_to_token(pos[:, 1] - start),
        quantize.velocity_to_token(a[:, 4].astype(np.int64)),
    ], axis=1)
    order = np.lexsort(keys.T[::-1])
    fields = [vocab.INSTRUMENT, vocab.PITCH, vocab.DURATION, vocab.VELOCITY]
    onset_changes = np.diff(keys[order, 0]) != 0
    row_changes = np.any(np.diff(rows[:, [vocab.BAR, vocab.POSITION]], axis=0) != 0, axis=1)
    if len(order) != len(rows) or not (
        np.array_equal(keys[order][:, 1:], rows[:, fields]) and np.array_equal(onset_changes, row_changes)
    ):
        raise RuntimeError("internal error: the notes could not be matched to their token rows")
    return [refs[k] for k in order]


def velocity_values(num_classes: int) -> np.ndarray:
    """A representative MIDI velocity per velocity class (the middle of the class's range)."""
    from midibert_jax.data import tasks  # pylint: disable=import-outside-toplevel

    edges = np.asarray(tasks.VELOCITY_EDGES)
    if num_classes != len(edges) + 1:
        raise ValueError(f"{num_classes} velocity classes; expected {len(edges) + 1}")
    lows = np.concatenate([[0], edges])
    highs = np.concatenate([edges - 1, [127]])
    return np.floor((lows + highs) / 2 + 0.5).astype(np.int64)


def _empty_like(pm: pretty_midi.PrettyMIDI) -> pretty_midi.PrettyMIDI:
    out = pretty_midi.PrettyMIDI(resolution=pm.resolution)
    out._tick_scales = list(pm._tick_scales)  # pylint: disable=protected-access
    out.time_signature_changes = list(pm.time_signature_changes)
    out.key_signature_changes = list(pm.key_signature_changes)
    return out


def _copy(note: pretty_midi.Note, velocity: int | None = None) -> pretty_midi.Note:
    return pretty_midi.Note(note.velocity if velocity is None else int(velocity), note.pitch, note.start, note.end)


def split_tracks(tok: Tokenized, classes: np.ndarray, class_names: Sequence[str]) -> pretty_midi.PrettyMIDI:
    """The piece's notes (original times) regrouped into one track per predicted class, named by the class.

    Drum notes go to a separate drum track per class ("<class> (drums)"). classes: int [N] per sorted row.
    """
    out = _empty_like(tok.pm)
    tracks: dict[tuple[int, bool], pretty_midi.Instrument] = {}
    for c, name in enumerate(class_names):
        tracks[(c, False)] = pretty_midi.Instrument(program=0, is_drum=False, name=str(name))
    for (i, j), c in zip(note_order(tok.pm, tok.rows), np.asarray(classes)):
        inst = tok.pm.instruments[i]
        key = (int(c), bool(inst.is_drum))
        if key not in tracks:
            tracks[key] = pretty_midi.Instrument(program=0, is_drum=True, name=f"{class_names[int(c)]} (drums)")
        tracks[key].notes.append(_copy(inst.notes[j]))
    out.instruments = [t for t in tracks.values() if t.notes]
    return out


def with_velocities(tok: Tokenized, velocities: np.ndarray) -> pretty_midi.PrettyMIDI:
    """The piece with each note's velocity replaced (velocities: int [N] per sorted row); tracks kept."""
    out = _empty_like(tok.pm)
    new = {}
    for (i, j), v in zip(note_order(tok.pm, tok.rows), np.asarray(velocities)):
        new[(i, j)] = int(v)
    for i, inst in enumerate(tok.pm.instruments):
        copy = pretty_midi.Instrument(program=inst.program, is_drum=inst.is_drum, name=inst.name)
        copy.notes = [_copy(n, new.get((i, j))) for j, n in enumerate(inst.notes)]
        copy.control_changes = list(inst.control_changes)
        copy.pitch_bends = list(inst.pitch_bends)
        out.instruments.append(copy)
    return out


# ----------------------------------------------------------------------------- the predictor


def _abstract_params(model, max_len: int) -> Any:
    """Abstract (unboxed) params of `model` on the first device."""
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    tokens = jnp.broadcast_to(jnp.asarray(vocab.PAD_ROW), (1, max_len, vocab.NUM_FIELDS))
    shapes = jax.eval_shape(lambda: nn.unbox(model.init({"params": jax.random.key(0)}, tokens, deterministic=True)["params"]))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), shapes)


class Predictor:
    """A trained encoder (and its task head, for fine-tuning runs) ready to run on MIDI files."""

    def __init__(
        self,
        model_config: ml_collections.ConfigDict,
        params: dict[str, Any],
        *,
        max_len: int | None = None,
        task: TaskInfo | None = None,
        blank_velocity: bool = False,
        batch_size: int = 8,
        source: str = "",
        views: int = 1,
    ):
        """
        Args:
          model_config: the model config (configs/model.py fields).
          params: {'encoder': ..., ['token_head' | 'sequence_head': ...]}.
          max_len: rows per window (the run's data.max_len; default the model's max_len).
          task: the fine-tuning task (None: an encoder only; `embed` works, predictions do not).
          blank_velocity: blank the Velocity field of the input (the velocity task).
          batch_size: windows per forward pass.
          source: where it was loaded from (for messages).
          views: note-level tasks: predict every note in this many windows cut at different offsets and
            average (`train.note_views`; a run's `train.eval_views`).
        """
        self.model_config = model_config
        self.params = params
        self.max_len = int(max_len or model_config.max_len)
        self.task = task if task is not None and any(k != "encoder" for k in params) else None
        self.blank_velocity = blank_velocity or (task is not None and task.name == "velocity")
        self.batch_size = batch_size
        self.source = source
        if views < 1:
            raise ConfigError(f"views must be >= 1, got {views}")
        self.views = int(views)
        encoder = models.build_encoder(model_config)
        self._hidden = jax.jit(
            lambda p, t: encoder.apply({"params": p}, t, masking.non_pad(t), deterministic=True).astype(jnp.float32)
        )
        self._probs = None
        if self.task is not None:
            classifier = models.build_classifier(model_config, self.task)
            self._probs = jax.jit(
                lambda p, t: jax.nn.softmax(classifier.apply({"params": p}, t, masking.non_pad(t), deterministic=True), -1)
            )

    @classmethod
    def load(cls, path: str, which: str | int = "best", batch_size: int = 8, views: int | None = None) -> "Predictor":
        """From a fine-tuning workdir (encoder + head), a pre-training workdir or an imported checkpoint (encoder).

        Raises:
          run.NoCheckpointError: nothing to load at `path`.
        """
        with run_lib.Run.open(path) as run:
            if run.is_imported:
                model_config = run.config.model
                max_len, task, blank, step, run_views = model_config.max_len, None, False, None, 1
            else:
                step = run.step(which)
                config = run.config_at(step)
                model_config = config.model
                max_len = config.data.max_len if "data" in config and "max_len" in config.data else model_config.max_len
                task = TaskInfo.from_config(config.task) if "task" in config else None
                blank = bool(config.get("augment", {}).get("blank_velocity", False))
                run_views = int(config.get("train", {}).get("eval_views", 1))
            model = models.build_classifier(model_config, task) if task is not None else models.build_encoder(model_config)
            abstract = _abstract_params(model, model_config.max_len)
            if task is None:
                abstract = {"encoder": abstract}
            params = run.params(abstract=abstract, which=step if step is not None else which)
        return cls(model_config, params, max_len=max_len, task=task, blank_velocity=blank, batch_size=batch_size,
                   source=str(path), views=run_views if views is None else views)

    def tokenize(self, midi: MidiInput) -> Tokenized:
        return tokenize(midi, self.max_len)

    def _run(self, fn, params, windows: np.ndarray) -> np.ndarray:
        """fn(params, tokens [batch_size, L, 8]) over all windows, padded to whole batches with PAD windows."""
        windows = np.asarray(windows, np.int32)
        if self.blank_velocity:
            windows = np.asarray(augment.blank_velocity(windows))
        n = len(windows)
        padded = -(-n // self.batch_size) * self.batch_size
        pad = np.broadcast_to(vocab.PAD_ROW, (padded - n,) + windows.shape[1:]).astype(np.int32)
        batches = np.concatenate([windows, pad]).reshape((-1, self.batch_size) + windows.shape[1:])
        return np.concatenate([np.asarray(fn(params, jnp.asarray(b))) for b in batches])[:n]

    def _require_task(self, level: str) -> TaskInfo:
        if self.task is None:
            raise NotAClassifierError(
                f"{self.source}: no task head (a pre-training run or an imported encoder); fine-tune it first "
                "(midibert-jax finetune), or use embed() for its hidden states"
            )
        if self.task.level != level:
            raise NotAClassifierError(f"{self.source}: task {self.task.name!r} is a {self.task.level}-level task")
        return self.task

    def embed(self, midi: MidiInput) -> np.ndarray:
        """float32 [notes, hidden_size]: the encoder's last hidden state of every note, in sorted-note order."""
        tok = self.tokenize(midi)
        return tok.to_notes(self._run(self._hidden, self.params["encoder"], tok.windows))

    def note_probabilities(self, midi: MidiInput) -> tuple[Tokenized, np.ndarray]:
        """(the tokenized piece, float32 [notes, classes]) for a note-level task."""
        self._require_task("note")
        tok = self.tokenize(midi)
        if self.views == 1:
            return tok, tok.to_notes(self._run(self._probs, self.params, tok.windows))
        from midibert_jax.train import note_views  # pylint: disable=import-outside-toplevel

        piece = note_views.Piece(0, tok.rows, np.zeros(len(tok.rows), np.int32))
        probs = note_views.averaged_probabilities(lambda w: self._run(self._probs, self.params, w), [piece], self.max_len,
                                                  self.views)
        return tok, probs[0]

    def piece_probabilities(self, midi: MidiInput) -> tuple[Tokenized, np.ndarray, np.ndarray]:
        """(the tokenized piece, float [classes] mean over windows, float32 [windows, classes]) for a sequence task."""
        self._require_task("sequence")
        tok = self.tokenize(midi)
        per_window = self._run(self._probs, self.params, tok.windows)
        return tok, per_window.astype(np.float64).mean(0), per_window


def embed(midi: MidiInput, workdir: str, which: str | int = "best") -> np.ndarray:
    """float32 [notes, hidden]: per-note hidden states of the encoder at `workdir` (any run or import)."""
    return Predictor.load(workdir, which).embed(midi)
