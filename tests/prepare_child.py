"""A separate process that prepares one dataset (tests/test_prepare_concurrency.py starts it).

    python prepare_child.py CONFIG_JSON OUT_JSON [--pause READY GO]

CONFIG_JSON: a prepare config (configs/prepare.py fields) as JSON. Writes OUT_JSON with the
dataset folder and a digest of every split's examples. With --pause, the build stops once the
windows are tokenized (inside the lock, before TFDS writes the shards): it creates READY, then
waits for GO to exist, so that the test can start a rival or kill this process mid-build.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
import time


def digest(dataset_dir) -> dict[str, str]:
    """sha256 per split over (index, piece_id, window, tokens) of every example, in index order."""
    from midibert_jax.data import pipeline  # pylint: disable=import-outside-toplevel

    out = {}
    for split in ("train", "validation"):
        source = pipeline.load_split(dataset_dir, split)
        examples = sorted((source[i] for i in range(len(source))), key=lambda e: int(e["index"]))
        h = hashlib.sha256()
        for e in examples:
            h.update(f"{int(e['index'])},{int(e['piece_id'])},{int(e['window'])};".encode())
            h.update(e["tokens"].tobytes())
        out[split] = f"{len(examples)}:{h.hexdigest()}"
    return out


def pause_after_tokenizing(ready: str, go: str) -> None:
    from midibert_jax.data.builders import corpus  # pylint: disable=import-outside-toplevel

    tokenize = corpus.MidiFolder._tokenize_locally  # pylint: disable=protected-access

    def paused(self, pending):
        tokenize(self, pending)
        pathlib.Path(ready).write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.05)

    corpus.MidiFolder._tokenize_locally = paused  # pylint: disable=protected-access


def main(argv: list[str]) -> None:
    import ml_collections  # pylint: disable=import-outside-toplevel

    from midibert_jax.data import prepare  # pylint: disable=import-outside-toplevel

    config_json, out_json = argv[0], argv[1]
    if argv[2:3] == ["--pause"]:
        pause_after_tokenizing(argv[3], argv[4])
    config = ml_collections.ConfigDict(json.loads(pathlib.Path(config_json).read_text()))
    dataset_dir = prepare.prepare(config)
    pathlib.Path(out_json).write_text(json.dumps({"dataset_dir": os.fspath(dataset_dir), "digest": digest(dataset_dir)}))


if __name__ == "__main__":
    main(sys.argv[1:])
