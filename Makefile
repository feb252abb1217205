# Shortcuts for the README's commands; each creates .venv on first use.
PY := .venv/bin/python

.venv:
	python3.11 -m venv .venv

demo: .venv
	$(PY) -m pip install -q -e . && .venv/bin/midibert-jax demo --workdir runs/demo

test: .venv
	$(PY) -m pip install -q -e ".[test]" && $(PY) -m pytest -q

ci:
	bash .ci/run

bench: .venv
	$(PY) benchmarks/bench_tokenizer.py

.PHONY: demo test ci bench
