"""Reading and plotting results: what the notebooks in notebooks/ call.

Kept in the package (not in the notebooks) so it is tested and reusable from scripts:
  read_metrics(workdir)                -> {key: (steps int [n], values float [n])}, current metric names
  time_to_accuracy(workdir)            -> (seconds [n], validation accuracy [n]) at each evaluation
  plot_curves(axes, runs, keys)        loss / accuracy curves of several workdirs
  note_rectangles(tokens)              onset, pitch, duration (in beats) of Octuple rows
  piano_roll(ax, tokens, values=...)   notes as bars, coloured by a per-note value (e.g. masker score)
  PretrainRun(workdir)                 checkpoints, masker scores and mask book of a pre-training run
  eval_result / per_class_table / draw_confusion    fine-tuning evaluations
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from midibert_jax import paths
from midibert_jax import run as run_lib
from midibert_jax.tokenizer import quantize, vocab


def read_metrics(workdir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalars of `workdir/metrics.jsonl`, per key, sorted by step (later lines win on a repeated step).

    Keys are the current metric names (`run.canonical_metric`): a run logged with the old names
    (`eval/acc/mean`, `loss/total`, ...) reads like a new one (`eval/accuracy`, `train/loss`, ...).
    """
    path = paths.resolve(workdir) / paths.METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
    series: dict[str, dict[int, float]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        step = int(record.pop("step"))
        record.pop("time", None)
        for key, value in record.items():
            if isinstance(value, (int, float)):
                series.setdefault(run_lib.canonical_metric(key), {})[step] = float(value)
    return {
        key: (np.array(sorted(points), np.int64), np.array([points[s] for s in sorted(points)], np.float64))
        for key, points in series.items()
    }


def time_to_accuracy(workdir: str | os.PathLike, key: str = "eval/accuracy",
                     clock: str = "time/elapsed_s") -> tuple[np.ndarray, np.ndarray]:
    """(wall-clock seconds of the run, validation `key`) at each evaluation that logged both: the run's
    time-to-accuracy curve (fine-tuning logs `clock`: compilation, training and evaluation, over resumes)."""
    metrics = read_metrics(workdir)
    if key not in metrics or clock not in metrics:
        return np.zeros(0), np.zeros(0)
    seconds = dict(zip(*metrics[clock]))
    steps, values = metrics[key]
    keep = [i for i, s in enumerate(steps) if s in seconds]
    return np.array([seconds[steps[i]] for i in keep], np.float64), values[keep]


def plot_curves(axes, runs: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], keys: Sequence[str]) -> None:
    """One subplot per key, one line per run (label -> read_metrics output)."""
    for ax, key in zip(np.ravel(axes), keys):
        for label, metrics in runs.items():
            if key in metrics:
                steps, values = metrics[key]
                ax.plot(steps, values, label=label, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    np.ravel(axes)[0].legend()


def note_rectangles(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Onset and duration in beats, pitch and row index of the note rows of int [rows, 8] tokens.

    Bars are laid end to end with each bar's own time signature; PAD/EOS/MASK rows are skipped.
    """
    tokens = np.asarray(tokens, np.int64)
    regular = np.all(tokens < np.asarray(vocab.VOCAB.num_regular), axis=1)
    rows = np.flatnonzero(regular)
    notes = tokens[rows]
    if len(notes) == 0:
        return {"onset": np.zeros(0), "duration": np.zeros(0), "pitch": np.zeros(0, np.int64), "row": rows}
    bar = notes[:, vocab.BAR]
    bar_len = np.zeros(int(bar.max()) + 1, np.int64)
    bar_len[bar] = quantize.bar_length(notes[:, vocab.TIMESIG])
    bar_len[bar_len == 0] = 4 * vocab.POSITIONS_PER_BEAT
    bar_start = np.concatenate([[0], np.cumsum(bar_len)[:-1]])
    onset = (bar_start[bar] + notes[:, vocab.POSITION]) / vocab.POSITIONS_PER_BEAT
    duration = np.maximum(quantize.token_to_duration(notes[:, vocab.DURATION]), 1) / vocab.POSITIONS_PER_BEAT
    return {"onset": onset, "duration": duration, "pitch": notes[:, vocab.PITCH], "row": rows}


def piano_roll(ax, tokens: np.ndarray, values: np.ndarray | None = None, *, cmap: str = "viridis",
               vmin: float | None = None, vmax: float | None = None, title: str = ""):
    """Draws the notes of `tokens` as horizontal bars; `values` [rows] colours each note's row.

    Returns the ScalarMappable (for a colorbar) when values are given, else None.
    """
    import matplotlib as mpl  # pylint: disable=import-outside-toplevel
    from matplotlib.collections import PatchCollection  # pylint: disable=import-outside-toplevel
    from matplotlib.patches import Rectangle  # pylint: disable=import-outside-toplevel

    notes = note_rectangles(tokens)
    patches = [Rectangle((o, p - 0.4), d, 0.8) for o, p, d in zip(notes["onset"], notes["pitch"], notes["duration"])]
    collection = PatchCollection(patches, linewidth=0)
    mappable = None
    if values is not None:
        note_values = np.asarray(values, np.float64)[notes["row"]]
        collection.set_array(note_values)
        collection.set_cmap(cmap)
        collection.set_clim(vmin if vmin is not None else note_values.min(initial=0.0),
                            vmax if vmax is not None else note_values.max(initial=1.0))
        mappable = collection
    else:
        collection.set_color("tab:blue")
    ax.add_collection(collection)
    if len(notes["onset"]):
        ax.set_xlim(0, float((notes["onset"] + notes["duration"]).max()) + 0.5)
        ax.set_ylim(float(notes["pitch"].min()) - 2, float(notes["pitch"].max()) + 2)
    ax.set_xlabel("beat")
    ax.set_ylabel("pitch")
    if title:
        ax.set_title(title)
    if mappable is not None:
        mpl.pyplot.colorbar(mappable, ax=ax)
    return mappable


def token_table(tokens: np.ndarray, rows: int = 12) -> str:
    """The first `rows` Octuple rows as a text table with field names (notebook display)."""
    names = vocab.token_names()
    lines = ["  ".join(f"{f:>10s}" for f in vocab.FIELDS)]
    for row in np.asarray(tokens)[:rows]:
        cells = []
        for f, field in enumerate(vocab.FIELDS):
            name = names[field][int(row[f])]
            cells.append(f"{name.split(' ', 1)[1]:>10s}"[:10].rjust(10))
        lines.append("  ".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pre-training runs


class PretrainRun:
    """A pre-training workdir opened for inspection: its checkpoints, masker and mask book.

        run = PretrainRun("runs/demo/pretrain")
        tokens, index = run.train_window()
        view = run.masker_view(run.steps[-1], tokens, index)   # scores, selected, frozen per row
    """

    def __init__(self, workdir: str):
        from midibert_jax.train import pretrain  # pylint: disable=import-outside-toplevel

        self.workdir = workdir
        self.run = run_lib.Run.open(workdir)  # read-only: safe on a run still training
        self.steps = self.run.steps
        self.config = run_lib.with_local_mesh(self.run.config)
        self.trainer = pretrain.Trainer(self.config)
        self.data = pretrain.load_data(self.config.data)

    def train_window(self, index: int = -1, search: int = 64) -> tuple[np.ndarray, int]:
        """(tokens int32 [L, 8], global index) of training window `index`; -1: the fullest of the first `search`."""
        source = self.data.train
        if index < 0:
            candidates = [source[i] for i in range(min(search, len(source)))]
            best = max(candidates, key=lambda e: int((np.asarray(e["tokens"])[:, vocab.BAR] != vocab.PAD_ROW[vocab.BAR]).sum()))
        else:
            best = next(e for e in (source[i] for i in range(len(source))) if int(e["index"]) == index)
        return np.asarray(best["tokens"], np.int32), int(best["index"])

    def restore(self, step: int):
        """(params, mask book uint8 [N, L/8]) of checkpoint `step`."""
        params = self.run.params(abstract=self.trainer.abstract_state.params, which=step)
        book = self.run.restore({"mask_book": None}, step)["mask_book"]["bits"]
        return params, np.asarray(book, np.uint8)

    def masker_view(self, step: int, tokens: np.ndarray, index: int) -> dict[str, np.ndarray]:
        """The masker's scores of one window at `step`, the notes the adversarial policy would mask
        (with that step's mask book) and the notes the book holds frozen. Each [L]."""
        import jax  # pylint: disable=import-outside-toplevel
        import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

        from midibert_jax.train import mask_book, masking  # pylint: disable=import-outside-toplevel

        params, book = self.restore(step)
        batch = jnp.asarray(tokens[None])
        nonpad = masking.non_pad(batch)
        scores = self.trainer.model.apply({"params": params}, batch, nonpad, deterministic=True, method="mask_scores")
        frozen = jnp.asarray(mask_book.gather(book, np.array([index])))
        idx = jnp.array([index], jnp.int32)
        masked = masking.adversarial_mask(jax.random.key(step), batch, idx, scores, frozen, self.trainer.masking_cfg)
        return {"step": step, "scores": np.asarray(scores[0]), "selected": np.asarray(masked.selected[0]),
                "frozen": np.asarray(frozen[0])}


# ----------------------------------------------------------------------------- fine-tuning results


from midibert_jax.train.classification_metrics import draw_confusion  # noqa: E402  (re-exported for notebooks)


def eval_result(workdir: str, split: str = "test") -> dict:
    """`workdir/eval_<split>.json`, evaluating the workdir first when it is missing."""
    path = paths.resolve(workdir) / paths.eval_file(split)
    if not path.exists():
        from midibert_jax import evaluate  # pylint: disable=import-outside-toplevel

        return evaluate.evaluate_workdir(workdir, split)
    return paths.read_json(path)


def per_class_table(result: dict) -> str:
    """Per-class precision / recall / F1 / support of an evaluation result, as text."""
    lines = [f"{'class':>16s} {'precision':>9s} {'recall':>7s} {'f1':>6s} {'support':>8s}"]
    per_class = result["per_class"]
    rows = per_class.items() if isinstance(per_class, dict) else ((c["name"], c) for c in per_class)
    for name, c in rows:
        lines.append(f"{name:>16s} {c['precision']:9.3f} {c['recall']:7.3f} {c['f1']:6.3f} {int(c['support']):8d}")
    return "\n".join(lines)
