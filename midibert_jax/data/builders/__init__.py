"""TFDS dataset builders: `common` (shared parts), `corpus` (pre-training corpora), `beam`
(their Beam path), `task_base` and `task_kinds` (fine-tuning datasets). `data.prepare` builds
any of them from a config."""
