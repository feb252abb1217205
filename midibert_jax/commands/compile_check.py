"""`midibert-jax compile-check --config configs/pretrain.py:base,v4_32 --devices 16`: memory without running.

Compiles the pre-training step ahead of time for the config's mesh and per-device batch and
prints what XLA's memory analysis says one device needs (arguments: parameters, optimizer
state, batch, mask book; temporaries: activations), plus compile time and step FLOPs. Nothing
is trained and no data is read. `--devices N` simulates N CPU devices when no accelerator is
attached: the figures are then the CPU backend's, a close guide (same sharding, same shapes),
not the TPU's or GPU's own; run it on the target machine for exact numbers.
"""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/pretrain.py:base", help="PATH[:ARG] (default: %(default)s)")
    parser.add_argument("--devices", type=int, default=0, help="simulate this many CPU devices (0: the real ones)")
    parser.add_argument("--num-windows", type=int, default=100_000, help="training windows (size of the mask book)")
    parser.add_argument("--json", dest="json_out", help="also write the report here")


def run(args: argparse.Namespace) -> int:
    if args.devices:
        if "jax" in __import__("sys").modules:
            raise RuntimeError("--devices must be set before jax is imported")
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax  # pylint: disable=import-outside-toplevel

    from midibert_jax import config_loading  # pylint: disable=import-outside-toplevel
    from midibert_jax.config_validation import validate_pretrain  # pylint: disable=import-outside-toplevel
    from midibert_jax.train.pretrain import Trainer  # pylint: disable=import-outside-toplevel

    config = config_loading.load_with_overrides(args.config, args.config_overrides)
    validate_pretrain(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    trainer = Trainer(config)
    report = trainer.compile_report(args.num_windows)
    mesh = dict(trainer.mesh.shape)
    per_device_batch = config.data.batch_size // (mesh["data"] * mesh["fsdp"])
    report.update({
        "config": args.config, "devices": jax.device_count(), "platform": jax.devices()[0].platform,
        "mesh": mesh, "global_batch": config.data.batch_size, "per_device_batch": per_device_batch,
        "max_len": config.model.max_len, "model": {k: config.model[k] for k in ("num_layers", "hidden_size", "num_heads", "mlp_dim")},
    })
    gib = 2**30
    print(f"{args.config} on {report['devices']} {report['platform']} device(s), mesh {mesh}")
    print(f"  batch {config.data.batch_size} global = {per_device_batch} per batch shard, L = {config.model.max_len}")
    print(f"  compile {report['compile_seconds']:.1f} s, {report['flops_per_step'] / 1e12:.2f} TFLOP per step (XLA count)")
    for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "peak_bytes_estimate"):
        if key in report:
            print(f"  {key.replace('_in_bytes', '').replace('_', ' '):24s} {report[key] / gib:8.2f} GiB per device")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0
