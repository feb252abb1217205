"""Writes the notebooks of this folder (outputs stripped). Edit here, then: python notebooks/make_notebooks.py"""
import nbformat as nbf

def nb(cells, path):
    book = nbf.v4.new_notebook()
    out = []
    for kind, src, *tags in cells:
        c = nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
        if tags:
            c.metadata["tags"] = tags[0]
        out.append(c)
    book.cells = out
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(book, path)

nb([
 ("md", "# 01 · Tokenization\nA demo piece (a score shipped with music21) as a piano roll beside its Octuple rows, and the exact round trip `encode(decode(x)) == x`."),
 ("code", "# Parameters\nmidi_path = \"\"  # a MIDI file; empty: the first piece of the demo corpus\nworkdir = \"\"  # unused here; every notebook takes it", ["parameters"]),
 ("code", "import matplotlib.pyplot as plt\nimport numpy as np\nfrom IPython.display import display\n\nfrom midibert_jax import analysis\nfrom midibert_jax.data import demo_corpus\nfrom midibert_jax.tokenizer import decode, encode, load_midi, vocab"),
 ("code", "path = midi_path or demo_corpus.demo_midi_files(max_pieces=3)[0]\nrows = encode(load_midi(path))\nprint(path)\nprint(f\"{len(rows)} rows x {rows.shape[1]} fields: {', '.join(vocab.FIELDS)}\")\nprint(analysis.token_table(rows, rows=12))"),
 ("code", "fig, ax = plt.subplots(figsize=(12, 4))\nshown = rows[:200]\nanalysis.piano_roll(ax, shown, values=shown[:, vocab.VELOCITY] * 4 + 2, cmap=\"magma\", title=\"first 200 notes, coloured by velocity\")\nplt.tight_layout()\nplt.show()"),
 ("code", "back = decode(rows)\nagain = encode(back)\nprint(\"instruments:\", [(i.program, i.is_drum, len(i.notes)) for i in back.instruments])\nprint(\"round trip exact:\", np.array_equal(again, rows))\nassert np.array_equal(again, rows)"),
], "notebooks/01_tokenization.ipynb")

nb([
 ("md", "# 02 · Pre-training curves\nLoss and per-field masked-token accuracy from `metrics.jsonl`; adversarial masking beside the random-mask baseline when both workdirs are given."),
 ("code", "# Parameters\nworkdir = \"runs/demo/pretrain/adversarial_s0\"  # an adversarial pre-training workdir (the demo's)\nbaseline_workdir = \"\"  # optional: a masking=random workdir to compare", ["parameters"]),
 ("code", "import matplotlib.pyplot as plt\n\nfrom midibert_jax import analysis\nfrom midibert_jax.tokenizer import vocab\n\nruns = {\"adversarial\": analysis.read_metrics(workdir)}\nif baseline_workdir:\n    runs[\"random\"] = analysis.read_metrics(baseline_workdir)\nfor label, m in runs.items():\n    steps, acc = m[\"eval/accuracy\"]\n    print(f\"{label:12s} eval accuracy: \" + \", \".join(f\"step {s}: {a:.3f}\" for s, a in zip(steps, acc)))"),
 ("code", "fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))\nanalysis.plot_curves(axes, runs, [\"train/loss\", \"eval/accuracy\", \"train/mask/selected_fraction\"])\nplt.tight_layout()\nplt.show()"),
 ("code", "fig, axes = plt.subplots(2, 4, figsize=(16, 6), sharex=True)\nanalysis.plot_curves(axes, runs, [f\"eval/accuracy/{f}\" for f in vocab.FIELDS])\nplt.tight_layout()\nplt.show()"),
], "notebooks/02_pretraining.ipynb")

nb([
 ("md", "# 03 · The masker\nWhat the masking-policy network scores, which notes the adversarial policy masks, and which notes the mask book has frozen, at each saved checkpoint of a pre-training run."),
 ("code", "# Parameters\nworkdir = \"runs/demo/pretrain/adversarial_s0\"  # an adversarial pre-training workdir (the demo's)\nwindow = -1  # training window to show; -1: the one with the most notes among the first 64", ["parameters"]),
 ("code", "import matplotlib.pyplot as plt\nimport numpy as np\n\nfrom midibert_jax import analysis\n\nrun = analysis.PretrainRun(workdir)\nprint(\"checkpoints:\", run.steps)\ntokens, index = run.train_window(window)\nprint(f\"window {index}: {int((tokens[:, 0] != 256).sum())} notes\")"),
 ("code", "views = [run.masker_view(step, tokens, index) for step in run.steps]\nfig, axes = plt.subplots(len(views), 3, figsize=(16, 3.2 * len(views)), squeeze=False)\nfor row, v in zip(axes, views):\n    analysis.piano_roll(row[0], tokens, values=v[\"scores\"], vmin=0, vmax=1, title=f\"step {v['step']}: masker score\")\n    analysis.piano_roll(row[1], tokens, values=v[\"selected\"].astype(float), cmap=\"coolwarm\", vmin=0, vmax=1,\n                        title=f\"masked by the policy: {int(v['selected'].sum())} notes\")\n    analysis.piano_roll(row[2], tokens, values=v[\"frozen\"].astype(float), cmap=\"Greys\", vmin=-0.3, vmax=1,\n                        title=f\"frozen in the mask book: {int(v['frozen'].sum())} notes\")\nplt.tight_layout()\nplt.show()"),
 ("code", "m = analysis.read_metrics(workdir)\nfig, axes = plt.subplots(1, 3, figsize=(15, 3.2))\nanalysis.plot_curves(axes, {\"adversarial\": m}, [\"train/mask/frozen_fraction\", \"train/masker/mean_score\", \"train/masker/entropy\"])\nplt.tight_layout()\nplt.show()"),
], "notebooks/03_masker.ipynb")

nb([
 ("md", "# 04 · Fine-tuning results\nConfusion matrices and per-class precision / recall / F1 from `midibert-jax evaluate`'s `eval_<split>.json` (evaluated here if the file is missing)."),
 ("code", "# Parameters\nworkdirs = \"runs/demo/finetune/demo_note/adversarial_s0_finetune_f0.1,runs/demo/finetune/demo_sequence/adversarial_s0_finetune_f0.1\"  # comma-separated fine-tuning workdirs\nsplit = \"test\"", ["parameters"]),
 ("code", "import matplotlib.pyplot as plt\n\nfrom midibert_jax import analysis\n\nresults = {w: analysis.eval_result(w, split) for w in workdirs.split(\",\") if w}\nfor w, r in results.items():\n    extra = f\", piece accuracy {r['piece_accuracy']:.3f}\" if \"piece_accuracy\" in r else \"\"\n    print(f\"{w}: {r['task']} {split} accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}{extra}\")\n    print(analysis.per_class_table(r))"),
 ("code", "fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.6), squeeze=False)\nfor ax, (w, r) in zip(axes[0], results.items()):\n    analysis.draw_confusion(ax, r[\"confusion_matrix\"], r[\"class_names\"], title=f\"{r['task']} ({split})\")\nplt.tight_layout()\nplt.show()"),
], "notebooks/04_finetuning.ipynb")

nb([
 ("md", "# 05 · The experiment\nAdversarial masking vs. random masking vs. no pre-training (`midibert-jax experiment`): test metrics per task, protocol (probe: frozen encoder; finetune: every weight) and fraction of the training pieces, mean ± sd over the seeds, and the paired differences (same seed) with a paired t-test. Reads `experiment.json`; a partial experiment shows what has finished."),
 ("code", "# Parameters\nworkdir = \"runs/experiment\"  # an experiment folder (midibert-jax experiment --workdir)\nmetric = \"accuracy\"  # the metric plotted: accuracy, macro_f1 or piece_accuracy", ["parameters"]),
 ("code", "import matplotlib.pyplot as plt\n\nfrom midibert_jax import experiment_report\n\nreport = experiment_report.load_report(workdir)\nprint(f\"{report['finished_runs']} of {report['planned_runs']} fine-tuning runs finished on {report['machine'].get('cpu', '?')} ({report['machine'].get('backend', '?')})\")\nprint(experiment_report.format_table(report))"),
 ("code", "fig = plt.figure(figsize=experiment_report.figure_size(report))\nexperiment_report.draw(fig, report, metric)\nplt.tight_layout()\nplt.show()"),
 ("code", "for p in report[\"paired\"]:\n    if p[\"metric\"] == metric:\n        test = f\"t={p['t']:.2f}, p={p['p']:.3g}\" if p[\"p\"] is not None else \"p n/a\"\n        print(f\"{p['task']:>16s} {p['protocol']:8s} f={p['fraction']:<4g} {p['a']:>11s} - {p['b']:<11s} {p['mean_diff']:+.3f} (n={p['n']}, {test})\")"),
], "notebooks/05_experiment.ipynb")
