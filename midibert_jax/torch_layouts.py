"""The module layouts (`kind`s) of the published PyTorch checkpoints that `import-torch` converts and
`export` writes, and the export's file formats and dtypes.

A leaf without jax, so the CLI offers them as choices before jax loads; model/torch_import.py
describes each layout and holds the table of names both directions read.
"""

KINDS = ("encoder", "pretrain", "masker", "token", "sequence")
EXPORT_FORMATS = ("safetensors", "torch")  # model.safetensors | pytorch_model.bin (paths.EXPORT_WEIGHTS)
EXPORT_DTYPES = ("float32", "bfloat16")
