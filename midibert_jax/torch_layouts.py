"""The module layouts (`kind`s) of the published PyTorch checkpoints that `import-torch` converts.

A leaf without jax, so the CLI offers them as `--kind` choices before jax loads;
model/torch_import.py describes each layout and converts it.
"""

KINDS = ("encoder", "pretrain", "masker", "token", "sequence")
