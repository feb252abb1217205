"""Tools for testing midibert-jax and code that uses it (fuzzers, generators)."""
