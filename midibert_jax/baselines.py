"""Non-neural baselines of the fine-tuning tasks, on exactly the windows the models are scored on.

    result = baselines.evaluate_baselines(dataset_dir)      # a built task dataset (data.prepare)

* `majority`: the most frequent class of the training split (notes for note tasks, windows for
  sequence tasks), predicted everywhere.
* `skyline` (melody only): the highest pitch at each onset (same Bar and Position) is the melody,
  every other note the most frequent non-melody class of the training notes: the classic
  melody-extraction rule (Uitdenbogerd and Zobel). Also its binary accuracy (melody or not).
* `features` (sequence tasks): multinomial logistic regression on per-window summary features
  (`window_features`: pitch-class, pitch-register, interval, duration and velocity histograms, note
  density, polyphony, tempo), L2 strength chosen on the validation split; window accuracy and
  piece accuracy (window probabilities averaged per piece, as for the models).

Every number comes from the same test split and the same metric code (`classification_metrics`)
as a fine-tuned model's `eval_test.json`, so the tables can set them side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from midibert_jax.tokenizer import vocab
from midibert_jax.train import classification_metrics as cm

# Published numbers (MidiBERT-Piano, Chou et al. 2021, arXiv 2107.05223, CP tokens, 512-token windows):
# test accuracy in %, cited, not recomputed (other splits' windows and tokenisation; see docs/results).
PUBLISHED = {
    "melody": {"MidiBERT-Piano (CP)": 96.37, "Bi-LSTM (CP)": 88.66},
    "velocity": {"MidiBERT-Piano (CP)": 51.63, "Bi-LSTM (CP)": 43.77},
    "composer": {"MidiBERT-Piano (CP)": 78.57, "RNN (CP)": 60.32},
    "emotion": {"MidiBERT-Piano (CP)": 67.89, "RNN (CP)": 54.13},
}
# The class the skyline rule calls melody, by name, any case (POP909's track names; demo_melody's class).
MELODY_CLASS = "MELODY"
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


# ----------------------------------------------------------------------------- reading a split


def read_split(dataset_dir: str, split: str, target_key: str) -> dict[str, np.ndarray]:
    """All windows of a split as arrays: tokens int32 [N, L, 8], target [N, L] or [N], piece_id [N]."""
    from midibert_jax.data import pipeline  # pylint: disable=import-outside-toplevel

    source = pipeline.load_split(dataset_dir, split)
    examples = [source[i] for i in range(len(source))]
    return {
        "tokens": np.stack([np.asarray(e["tokens"], np.int32) for e in examples]),
        "target": np.stack([np.asarray(e[target_key], np.int32) for e in examples]),
        "piece_id": np.asarray([int(e["piece_id"]) for e in examples], np.int64),
    }


def _note_mask(tokens: np.ndarray) -> np.ndarray:
    """bool [..., L]: rows that are notes (regular Pitch and Bar ids, not PAD / EOS / MASK)."""
    return (tokens[..., vocab.PITCH] < vocab.VOCAB.num_regular[vocab.PITCH]) & (
        tokens[..., vocab.BAR] < vocab.VOCAB.num_regular[vocab.BAR])


# ----------------------------------------------------------------------------- note tasks


def majority_class(targets: np.ndarray, num_classes: int) -> int:
    """The most frequent label >= 0 (the lowest id on a tie)."""
    counts = np.bincount(targets[targets >= 0].ravel(), minlength=num_classes)
    return int(np.argmax(counts))


def skyline_top(tokens: np.ndarray) -> np.ndarray:
    """bool [N, L]: the highest-pitched note of each onset (Bar, Position) of each window."""
    tokens = np.asarray(tokens)
    notes = _note_mask(tokens)
    n, length = notes.shape
    top = np.zeros((n, length), bool)
    w, r = np.nonzero(notes)
    if w.size == 0:
        return top
    bar, pos, pitch = (tokens[w, r, f].astype(np.int64) for f in (vocab.BAR, vocab.POSITION, vocab.PITCH))
    # Sort by onset, highest pitch first; the first row of each onset group is its skyline note.
    order = np.lexsort((-pitch, pos, bar, w))
    onset = np.stack([w[order], bar[order], pos[order]], 1)
    first = np.ones(len(order), bool)
    first[1:] = np.any(onset[1:] != onset[:-1], axis=1)
    top[w[order][first], r[order][first]] = True
    return top


def skyline_predictions(tokens: np.ndarray, melody: int, other: int) -> np.ndarray:
    """int [N, L]: `melody` for each onset's highest note, `other` for the rest."""
    return np.where(skyline_top(tokens), melody, other).astype(np.int64)


def _note_result(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    out = cm.summarize(cm.confusion_matrix(labels, preds, len(class_names)), class_names)
    return {k: out[k] for k in ("accuracy", "macro_f1", "count", "confusion_matrix")}


def note_baselines(train: dict[str, np.ndarray], test: dict[str, np.ndarray], class_names: Sequence[str]
                   ) -> dict[str, dict[str, Any]]:
    """Majority (and for a task with a MELODY class, the skyline) on the test notes."""
    k = len(class_names)
    labels = test["target"]
    major = majority_class(train["target"], k)
    out = {"majority": {"class": class_names[major], **_note_result(labels, np.full(labels.shape, major), class_names)}}
    upper = [c.upper() for c in class_names]
    if MELODY_CLASS in upper:
        melody = upper.index(MELODY_CLASS)
        counts = np.bincount(train["target"][train["target"] >= 0].ravel(), minlength=k)
        counts[melody] = -1
        other = int(np.argmax(counts))
        preds = skyline_predictions(test["tokens"], melody, other)
        result = _note_result(labels, preds, class_names)
        scored = labels >= 0
        result["binary_accuracy"] = float(np.mean((preds[scored] == melody) == (labels[scored] == melody)))
        result["other_class"] = class_names[other]
        out["skyline"] = result
    return out


# ----------------------------------------------------------------------------- sequence tasks

# Histogram edges of the window features.
_INTERVALS = np.arange(-12, 13)  # successive-onset top-pitch intervals, clipped to +-12
_DURATION_BINS = 8  # Duration ids per 16 (one octave of the log-linear bins)
_VELOCITY_BINS = 8


def window_features(tokens: np.ndarray) -> np.ndarray:
    """float64 [N, F] summary features of each window (empty windows: zeros).

    12 pitch classes + 11 registers (octaves of MIDI pitch) + 25 intervals between the top notes of
    successive onsets (clipped to +-12) + 8 duration octaves + 8 velocity bins (all as fractions),
    then mean and sd of pitch / 127, notes per bar / 32, notes per onset / 8, mean tempo id / 48 and
    the fraction of drum notes.
    """
    tokens = np.asarray(tokens)
    rows = []
    top = skyline_top(tokens)
    for t, notes, tops in zip(tokens, _note_mask(tokens), top):
        x = t[notes].astype(np.int64)
        if len(x) == 0:
            rows.append(np.zeros(_num_features()))
            continue
        pitch = x[:, vocab.PITCH]
        drums = pitch >= 128
        melodic = pitch[~drums] if (~drums).any() else np.zeros(1, np.int64)
        tops_pitch = t[tops & notes, vocab.PITCH].astype(np.int64)
        tops_pitch = tops_pitch[tops_pitch < 128]
        steps = np.clip(np.diff(tops_pitch), -12, 12)
        onsets = len({(b, p) for b, p in x[:, [vocab.BAR, vocab.POSITION]].tolist()})
        bars = len(set(x[:, vocab.BAR].tolist()))
        parts = [
            _hist(melodic % 12, 12),
            _hist(melodic // 12, 11),
            _hist(steps + 12, len(_INTERVALS)),
            _hist(np.minimum(x[:, vocab.DURATION] // 16, _DURATION_BINS - 1), _DURATION_BINS),
            _hist(np.minimum(x[:, vocab.VELOCITY] * _VELOCITY_BINS // vocab.NUM_VELOCITY_BINS, _VELOCITY_BINS - 1),
                  _VELOCITY_BINS),
            [melodic.mean() / 127, melodic.std() / 127, len(x) / bars / 32, len(x) / onsets / 8,
             np.minimum(x[:, vocab.TEMPO], len(vocab.TEMPO_VALUES) - 1).mean() / 48, drums.mean()],
        ]
        rows.append(np.concatenate([np.asarray(p, np.float64) for p in parts]))
    return np.stack(rows) if rows else np.zeros((0, _num_features()))


def _num_features() -> int:
    return 12 + 11 + len(_INTERVALS) + _DURATION_BINS + _VELOCITY_BINS + 6


def _hist(values: np.ndarray, bins: int) -> np.ndarray:
    counts = np.bincount(np.asarray(values, np.int64), minlength=bins)[:bins].astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, steps: int = 300) -> dict[str, np.ndarray]:
    """Multinomial logistic regression (mean cross-entropy + l2 * |W|^2) by L-BFGS (optax), on standardized x.

    Deterministic: zero initialisation, full batch. Returns {"mean", "scale", "w", "b"}.
    """
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    xs = jnp.asarray((x - mean) / scale, jnp.float32)
    onehot = jnp.eye(num_classes, dtype=jnp.float32)[jnp.asarray(y)]
    w, b = _lbfgs()(xs, onehot, jnp.float32(l2), steps)
    return {"mean": mean, "scale": scale, "w": np.asarray(w, np.float64), "b": np.asarray(b, np.float64)}


_LBFGS = None


def _lbfgs():
    """The jitted full-batch L-BFGS fit (built once; compiled once per data shape, the L2 strength is traced)."""
    global _LBFGS  # pylint: disable=global-statement
    if _LBFGS is None:
        import jax  # pylint: disable=import-outside-toplevel
        import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
        import optax  # pylint: disable=import-outside-toplevel

        def fit(xs, onehot, l2, steps):
            def loss(params):
                logits = xs @ params["w"] + params["b"]
                return optax.softmax_cross_entropy(logits, onehot).mean() + l2 * jnp.sum(params["w"] ** 2)

            solver = optax.lbfgs()
            value_and_grad = optax.value_and_grad_from_state(loss)

            def body(_, carry):
                params, state = carry
                value, grad = value_and_grad(params, state=state)
                updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
                return optax.apply_updates(params, updates), state

            params = {"w": jnp.zeros((xs.shape[1], onehot.shape[1])), "b": jnp.zeros((onehot.shape[1],))}
            params, _ = jax.lax.fori_loop(0, steps, body, (params, solver.init(params)))
            return params["w"], params["b"]

        _LBFGS = jax.jit(fit, static_argnames=("steps",))
    return _LBFGS


def predict_logistic(model: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """float64 [N, C] class probabilities."""
    logits = ((x - model["mean"]) / model["scale"]) @ model["w"] + model["b"]
    logits = logits - logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def _sequence_result(probs: np.ndarray, split: dict[str, np.ndarray], class_names: Sequence[str]) -> dict[str, Any]:
    k = len(class_names)
    window = cm.summarize(cm.confusion_matrix(split["target"], probs.argmax(-1), k), class_names)
    _, piece_probs, piece_labels = cm.aggregate_pieces(probs, split["piece_id"], split["target"])
    piece = cm.summarize(cm.confusion_matrix(piece_labels, piece_probs.argmax(-1), k), class_names)
    return {"accuracy": window["accuracy"], "macro_f1": window["macro_f1"], "count": window["count"],
            "confusion_matrix": window["confusion_matrix"], "piece_accuracy": piece["accuracy"],
            "piece_macro_f1": piece["macro_f1"], "num_pieces": piece["count"]}


def sequence_baselines(train: dict[str, np.ndarray], valid: dict[str, np.ndarray] | None, test: dict[str, np.ndarray],
                       class_names: Sequence[str], l2_grid: Sequence[float] = L2_GRID) -> dict[str, dict[str, Any]]:
    """Majority and the feature classifier (its L2 strength the best on `valid`) on the test windows."""
    k = len(class_names)
    major = majority_class(train["target"], k)
    out = {"majority": {"class": class_names[major],
                        **_sequence_result(np.eye(k)[np.full(len(test["target"]), major)], test, class_names)}}
    x_train = window_features(train["tokens"])
    best = None
    for l2 in l2_grid if valid is not None else l2_grid[:1]:
        model = fit_logistic(x_train, train["target"], k, l2)
        score = (float(np.mean(predict_logistic(model, window_features(valid["tokens"])).argmax(-1) == valid["target"]))
                 if valid is not None else 0.0)
        if best is None or score > best[0]:
            best = (score, l2, model)
    score, l2, model = best
    out["features"] = {"l2": l2, "validation_accuracy": score,
                       **_sequence_result(predict_logistic(model, window_features(test["tokens"])), test, class_names)}
    return out


# ----------------------------------------------------------------------------- a built dataset


def evaluate_baselines(dataset_dir: str) -> dict[str, Any]:
    """The baselines of a built task dataset on its test split: {task, level, class_names, test_count,
    baselines: {name: {accuracy, macro_f1, ...}}, published: {model: accuracy %}}."""
    from midibert_jax.data import tasks  # pylint: disable=import-outside-toplevel

    task = tasks.dataset_task(dataset_dir)
    target_key = "labels" if task.level == tasks.NOTE else "label"
    train = read_split(dataset_dir, "train", target_key)
    test = read_split(dataset_dir, "test", target_key)
    if task.level == tasks.NOTE:
        results = note_baselines(train, test, task.class_names)
    else:
        try:
            valid = read_split(dataset_dir, "validation", target_key)
        except KeyError:
            valid = None
        results = sequence_baselines(train, valid, test, task.class_names)
    return {"task": task.name, "level": task.level, "class_names": list(task.class_names),
            "baselines": results, "published": PUBLISHED.get(task.name, {})}
