"""Classification metrics: the step's cross-entropy sums (jax); on the host (numpy) confusion matrix,
accuracy, macro-F1, per-class P/R/F1, and the summary of a fine-tuning evaluation.

Conventions (those of scikit-learn with `zero_division=0`):
  * confusion[i, j] counts items of true class i predicted as class j.
  * precision_c = tp / predicted_c, recall_c = tp / support_c, F1 = 2PR / (P + R); 0 where undefined.
  * macro-F1 is the mean F1 over the classes that occur in the labels or the predictions (a class
    absent from both does not pull the mean down).

Sequence tasks classify every window of a piece; `aggregate_pieces` averages the window
probabilities per piece (the piece's prediction is the argmax of the mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int, weights: np.ndarray | None = None) -> np.ndarray:
    """int64 [C, C] from integer labels and predictions of any equal shape; label < 0 or weight 0 is skipped."""
    labels = np.asarray(labels).reshape(-1)
    preds = np.asarray(preds).reshape(-1)
    keep = labels >= 0
    if weights is not None:
        keep &= np.asarray(weights).reshape(-1).astype(bool)
    labels, preds = labels[keep].astype(np.int64), preds[keep].astype(np.int64)
    if labels.size and (labels.max() >= num_classes or preds.min() < 0 or preds.max() >= num_classes):
        raise ValueError(f"labels or predictions outside 0..{num_classes - 1}")
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def summarize(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready metrics of a confusion matrix.

    Returns:
      {"accuracy", "macro_f1", "count", "per_class": {name: {"precision", "recall", "f1", "support"}},
       "confusion_matrix": [[int]]}
    """
    cm = np.asarray(confusion, np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(class_names)} class names")
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)
    total = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "count": total,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
    }


def aggregate_pieces(probs: np.ndarray, piece_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean window probabilities per piece.

    Args:
      probs: float [N, C] window class probabilities; piece_ids: int [N]; labels: int [N] (one per window,
        the same for every window of a piece).
    Returns:
      (piece ids [P] ascending, mean probabilities [P, C], labels [P]).
    Raises:
      ValueError: the windows of one piece carry different labels.
    """
    probs = np.asarray(probs, np.float64)
    piece_ids = np.asarray(piece_ids).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    pieces, inverse = np.unique(piece_ids, return_inverse=True)
    sums = np.zeros((len(pieces), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    counts = np.bincount(inverse, minlength=len(pieces))
    piece_labels = np.full(len(pieces), -1, np.int64)
    piece_labels[inverse] = labels
    mismatch = piece_labels[inverse] != labels
    if mismatch.any():
        raise ValueError(f"the windows of piece {piece_ids[np.argmax(mismatch)]} carry different labels")
    return pieces, sums / counts[:, None], piece_labels


def draw_confusion(ax, confusion: np.ndarray, class_names: Sequence[str], title: str = ""):
    """Row-normalised confusion matrix on a matplotlib `ax`, raw counts in the cells; returns the image."""
    cm = np.asarray(confusion, np.int64)
    n = len(class_names)
    norm = _safe_div(cm, cm.sum(1, keepdims=True).repeat(n, axis=1))
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    return image


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path, title: str = "") -> None:
    """Writes a PNG (local or cloud path) of the row-normalised confusion matrix, counts in the cells (Agg)."""
    import io  # pylint: disable=import-outside-toplevel

    from etils import epath  # pylint: disable=import-outside-toplevel

    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel  # no pyplot: no global backend

    n = len(class_names)
    size = max(4.0, 0.6 * n + 2.5)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.subplots()
    image = draw_confusion(ax, confusion, class_names, title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    epath.Path(path).write_bytes(buffer.getvalue())


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """Sums over the weighted items: {"loss", "correct", "count"} (float32 scalars). logits [..., C]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    t = jnp.maximum(targets, 0)
    nll = -jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    return {
        "loss": jnp.sum(nll * w),
        "correct": jnp.sum((jnp.argmax(logits, -1) == t) * w),
        "count": jnp.sum(w),
    }


def summarize_eval(outputs: list[dict[str, np.ndarray]], task) -> dict[str, Any]:
    """Per-batch evaluation outputs of the fine-tuning eval step -> JSON-ready metrics.

    `task`: level ('note' | 'sequence'), num_classes, class_names. Keys: accuracy, macro_f1, per_class,
    confusion_matrix, count, loss; sequence tasks add piece_accuracy, piece_macro_f1, piece_per_class,
    piece_confusion_matrix, num_pieces (windows averaged per piece) and window_accuracy (= accuracy).
    """
    loss = sum(float(o["loss"]) for o in outputs)
    count = sum(float(o["count"]) for o in outputs)
    if task.level == "note":
        cm = sum((np.asarray(o["confusion"], np.int64) for o in outputs), np.zeros((task.num_classes,) * 2, np.int64))
        result = summarize(cm, task.class_names)
    else:
        valid = np.concatenate([np.asarray(o["valid"], bool) for o in outputs]) if outputs else np.zeros(0, bool)
        probs = np.concatenate([o["probs"] for o in outputs])[valid] if outputs else np.zeros((0, task.num_classes))
        labels = np.concatenate([o["label"] for o in outputs])[valid] if outputs else np.zeros(0, np.int64)
        pieces = np.concatenate([o["piece_id"] for o in outputs])[valid] if outputs else np.zeros(0, np.int64)
        result = summarize(confusion_matrix(labels, probs.argmax(-1), task.num_classes), task.class_names)
        result["window_accuracy"] = result["accuracy"]
        _, piece_probs, piece_labels = aggregate_pieces(probs, pieces, labels)
        piece = summarize(confusion_matrix(piece_labels, piece_probs.argmax(-1), task.num_classes), task.class_names)
        result.update({
            "piece_accuracy": piece["accuracy"], "piece_macro_f1": piece["macro_f1"],
            "piece_per_class": piece["per_class"], "piece_confusion_matrix": piece["confusion_matrix"],
            "num_pieces": piece["count"],
        })
    result["loss"] = loss / count if count else float("nan")
    return result


def eval_scalars(result: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """The scalar entries of an evaluation result, for the metrics writer."""
    keys = ("accuracy", "macro_f1", "loss", "piece_accuracy", "piece_macro_f1")
    return {prefix + k: float(result[k]) for k in keys if k in result}
