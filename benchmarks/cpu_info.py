"""The CPU model and the ISA extensions that decide matmul speed, from /proc/cpuinfo (Linux)."""

from __future__ import annotations

import os
import pathlib
import platform

# Extensions that matter for dense float32 / bfloat16 work, in the order they are printed.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """{'model': str, 'cpus': int, 'isa': {flag: bool}} (model 'unknown' and no flags where it cannot be read)."""
    model, flags = platform.processor() or "unknown", set()
    file = pathlib.Path(path)
    if file.exists():
        for line in file.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {"model": model, "cpus": os.cpu_count(), "isa": {f: f in flags for f in ISA_FLAGS}}


def describe(info: dict) -> str:
    have = [f for f, present in info["isa"].items() if present]
    return f"{info['model']}, {info['cpus']} CPUs; ISA: {' '.join(have) or 'none of ' + ' '.join(ISA_FLAGS)}"
