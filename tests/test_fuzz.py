"""Fuzzing the tokenizer (a few hundred cases here; scripts/fuzz_tokenizer.py runs 10^4+).

Contract: any bytes either tokenize or raise a TokenizerError, and whatever tokenizes
round-trips exactly, in memory and through a written MIDI file.
"""

import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from midibert_jax.testing.midi_fuzz import check_bytes, mutate, mutation_strategy, midi_strategy, random_midi

REGRESSIONS = pathlib.Path(__file__).parent / "fixtures" / "fuzz_regressions"
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(midi_strategy())
def test_structured_midi_tokenizes_or_fails_typed(data):
    check_bytes(data)


@FUZZ
@given(mutation_strategy())
def test_mutated_midi_tokenizes_or_fails_typed(case):
    kind, data = case
    check_bytes(data, name=f"{kind}.mid")


def test_seeded_generator_and_every_mutation():
    rng = np.random.default_rng(2026)
    statuses = set()
    for _ in range(20):
        data = random_midi(rng)
        statuses.add(check_bytes(data).status)
        for kind in ("truncate", "flip", "chunk_length", "huge_delta", "splice", "insert"):
            check_bytes(mutate(data, rng, kind)[1])
    assert "ok" in statuses


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.mid")), ids=lambda p: p.name)
def test_regression_corpus(path):
    """Awkward files the fuzzer found (kept with the status they must keep)."""
    expected = path.name.split("__")[0]
    assert check_bytes(path.read_bytes(), name=path.name).status == expected
