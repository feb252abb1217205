"""`midibert-jax predict --workdir DIR song.mid [-o out.mid] [--json]`: a fine-tuned model on one file.

  melody (and other note tasks)  -> out.mid with the notes split into one track per predicted class
                                     (named by the class); every input note appears exactly once
  velocity                       -> out.mid: the song with predicted velocities (the middle of each class)
  composer / emotion / sequence  -> the top classes with probabilities for the whole piece (window
                                     probabilities averaged); --json prints them as JSON

The file is tokenized exactly as the dataset builders do (midibert_jax.inference).
"""

from __future__ import annotations

import argparse
import json
import pathlib


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("midi", type=pathlib.Path, help="input MIDI file")
    parser.add_argument("--workdir", required=True, help="a fine-tuning run folder")
    parser.add_argument("-o", "--output", type=pathlib.Path,
                        help="output MIDI for note tasks (default: beside the input, <name>.<task>.mid)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--top", type=int, default=3, help="sequence tasks: classes to show (default %(default)s)")
    parser.add_argument("--step", default="best", help="checkpoint: best (default), latest or a step number")
    parser.add_argument("--views", type=int, default=None,
                        help="note tasks: predict every note in this many windows cut at different offsets and "
                             "average (default: the run's train.eval_views)")


def predict(args: argparse.Namespace) -> dict:
    """Runs the prediction and writes the output MIDI (note tasks); returns a JSON-ready summary."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    from midibert_jax import inference  # pylint: disable=import-outside-toplevel
    from midibert_jax.tokenizer import midi_io  # pylint: disable=import-outside-toplevel

    if not args.midi.exists():
        raise FileNotFoundError(f"{args.midi}: no such file")
    predictor = inference.Predictor.load(args.workdir, args.step, views=getattr(args, "views", None))
    task = predictor.task
    if task is None:
        raise inference.NotAClassifierError(
            f"{args.workdir}: not a fine-tuning run (no task head); predict needs a workdir of `midibert-jax finetune`"
        )
    summary = {"file": str(args.midi), "task": task.name, "level": task.level}
    if task.level == "sequence":
        tok, probs, per_window = predictor.piece_probabilities(args.midi)
        order = np.argsort(-probs, kind="stable")
        summary.update({
            "notes": tok.num_notes, "windows": int(len(per_window)),
            "predictions": [{"class": task.class_names[i], "probability": float(probs[i])} for i in order],
        })
        return summary
    tok, probs = predictor.note_probabilities(args.midi)
    classes = probs.argmax(-1)
    output = args.output or args.midi.with_name(f"{args.midi.stem}.{task.name}.mid")
    if task.name == "velocity":
        values = inference.velocity_values(task.num_classes)
        pm = inference.with_velocities(tok, values[classes])
    else:
        pm = inference.split_tracks(tok, classes, task.class_names)
    midi_io.write_midi(pm, output)
    counts = np.bincount(classes, minlength=task.num_classes)
    summary.update({
        "notes": tok.num_notes, "output": str(output),
        "class_counts": {name: int(c) for name, c in zip(task.class_names, counts)},
    })
    return summary


def run(args: argparse.Namespace) -> int:
    summary = predict(args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if summary["level"] == "sequence":
        print(f"{summary['file']}: {summary['task']} ({summary['notes']} notes, {summary['windows']} windows)")
        for p in summary["predictions"][: max(args.top, 1)]:
            print(f"  {p['class']:<20} {p['probability']:.3f}")
    else:
        counts = ", ".join(f"{k} {v}" for k, v in summary["class_counts"].items())
        print(f"{summary['file']}: {summary['notes']} notes -> {summary['output']} ({summary['task']}: {counts})")
    return 0
