"""The notebooks, executed (nbclient) against real tiny workdirs made here through the CLI:
an adversarial and a random-mask pre-training run, a fine-tuning run from the first, and its
evaluation; 05 reads an experiment.json made here from synthetic run results (tests/test_experiment.py
runs the command itself). Each notebook must run without error and render its figures."""

import base64
import io
import pathlib
import subprocess
import sys

import matplotlib.image
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import midi_factory  # noqa: E402
import pretrain_helpers as ph  # noqa: E402

pytestmark = pytest.mark.slow

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def _cli(*args, env):
    result = subprocess.run([sys.executable, "-m", "midibert_jax.cli", *map(str, args)], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    env = ph.subprocess_env(1, root / "jax_cache")
    folder = ph.make_midi_folder(root / "midi")
    common = list(ph.TINY) + list(ph.data_overrides(folder, root / "tfds")) + [
        ("train.steps", "8"), ("train.eval_every", "4"), ("train.checkpoint_every", "4"),
        ("train.keep_checkpoints", "4"),
    ]
    masker_only = [("mask_book.unit", "step"), ("mask_book.every", "4")]  # the random policy has no masker
    runs = {}
    for policy in ("adversarial", "random"):
        runs[policy] = root / policy
        overrides = common + [("masking.policy", policy)] + (masker_only if policy == "adversarial" else [])
        _cli("pretrain", "--config", ph.SPEC, "--workdir", runs[policy], *[f"--config.{k}={v}" for k, v in overrides],
             env=env)

    labelled = root / "labelled"
    for label, program in (("strings", 40), ("piano", 0)):
        for i in range(8):
            midi_factory.write_piece(labelled / label / f"{label}{i}.mid", num_bars=6 + i, seed=100 + i, program=program)
    runs["finetune"] = root / "finetune"
    _cli("finetune", "--config", "configs/finetune.py:folder", "--workdir", runs["finetune"],
         f"--config.data.root={labelled}", f"--config.data.data_dir={root / 'tfds'}", "--config.data.max_len=32",
         "--config.data.num_workers=1", "--config.data.progress=False", "--config.data.valid_fraction=0.25",
         "--config.data.test_fraction=0.25", f"--config.train.init_from={runs['adversarial']}",
         "--config.train.steps=4", "--config.train.eval_every=2", "--config.data.batch_size=4",
         "--config.data.eval_batch_size=4", env=env)
    _cli("evaluate", "--workdir", runs["finetune"], "--split", "test", env=env)
    return root, runs


def _execute(name: str, parameters: dict, out_dir: pathlib.Path) -> list[bytes]:
    """Runs notebooks/<name> with `parameters` injected after its parameters cell; returns its PNGs."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items())))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(out_dir)}}).execute()
    images = [base64.b64decode(o["data"]["image/png"]) for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    for i, png in enumerate(images):
        (out_dir / f"{pathlib.Path(name).stem}_{i}.png").write_bytes(png)
    return images


def _colored_fraction(png: bytes) -> tuple[int, int, float]:
    """(width, height, fraction of pixels with a colour) of a PNG figure.

    Axes, ticks, labels and grids are drawn in greys; the plotted data (lines, bars, colour maps) is
    what has colour, so a figure whose panels stayed empty scores 0.
    """
    rgb = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    height, width = rgb.shape[:2]
    return width, height, float(np.mean(rgb.max(-1) - rgb.min(-1) > 0.25))


def _check(images: list[bytes], expected: int):
    assert len(images) >= expected
    for i, png in enumerate(images):
        width, height, colored = _colored_fraction(png)
        assert width >= 300 and height >= 200, f"figure {i} is {width}x{height}"
        assert colored > 0.002, f"figure {i} has no plotted data ({colored:.2%} coloured pixels)"


def test_01_tokenization(workdirs):
    root, _ = workdirs
    midi = midi_factory.write_piece(root / "song.mid", num_bars=12, notes_per_bar=6, seed=7)
    _check(_execute("01_tokenization.ipynb", {"midi_path": str(midi)}, root), 1)


def test_02_pretraining(workdirs):
    root, runs = workdirs
    _check(_execute("02_pretraining.ipynb", {"workdir": str(runs["adversarial"]),
                                             "baseline_workdir": str(runs["random"])}, root), 2)


def test_03_masker(workdirs):
    root, runs = workdirs
    _check(_execute("03_masker.ipynb", {"workdir": str(runs["adversarial"])}, root), 2)


def test_04_finetuning(workdirs):
    root, runs = workdirs
    assert (runs["finetune"] / "eval_test.json").exists()
    _check(_execute("04_finetuning.ipynb", {"workdirs": str(runs["finetune"]), "split": "test"}, root), 1)


def test_05_experiment(tmp_path):
    from midibert_jax import experiment_report

    rng = np.random.default_rng(0)
    base = {"adversarial": 0.8, "random": 0.75, "none": 0.6}
    runs = [{"task": task, "arm": arm, "seed": seed, "protocol": protocol, "fraction": fraction,
             "test": {"accuracy": base[arm] * (0.8 + 0.2 * fraction) + 0.02 * rng.standard_normal(),
                      "macro_f1": base[arm] - 0.1 + 0.02 * rng.standard_normal()}}
            for task in ("demo_note", "demo_sequence") for arm in base for seed in (0, 1, 2)
            for protocol in ("probe", "finetune") for fraction in (0.1, 1.0)]
    missing = [{**{k: runs[-1][k] for k in ("task", "arm", "protocol", "fraction")}, "seed": 3, "workdir": "w"}]
    report = experiment_report.build_report({"metrics": ["accuracy", "macro_f1"]}, runs, missing=missing,
                                     machine={"cpu": "synthetic", "backend": "cpu"}, metrics=("accuracy", "macro_f1"))
    experiment_report.write_report(report, tmp_path / "experiment")
    _check(_execute("05_experiment.ipynb", {"workdir": str(tmp_path / "experiment")}, tmp_path), 1)
