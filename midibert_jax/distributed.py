"""Joining a multi-process run before anything touches a device.

Launchers (launch/) start the same command on every host. On GPU clusters and for local
multi-process runs they set MIDIBERT_COORDINATOR (host:port), MIDIBERT_NUM_PROCESSES and
MIDIBERT_PROCESS_ID; on Cloud TPU pods (MIDIBERT_DISTRIBUTED=auto) jax finds its peers itself.
A single process needs nothing.
"""

from __future__ import annotations

import os

import jax

_initialized = False


def initialize_from_environment() -> bool:
    """Calls jax.distributed.initialize when the environment asks for it; True if it did."""
    global _initialized
    if _initialized:
        return True
    num = int(os.environ.get("MIDIBERT_NUM_PROCESSES", "1"))
    if num > 1:
        coordinator = os.environ.get("MIDIBERT_COORDINATOR")
        process_id = os.environ.get("MIDIBERT_PROCESS_ID")
        if not coordinator or process_id is None:
            raise RuntimeError(
                "MIDIBERT_NUM_PROCESSES > 1 needs MIDIBERT_COORDINATOR (host:port) and MIDIBERT_PROCESS_ID"
            )
        # Collectives between CPU devices of different processes need gloo (no effect on GPU/TPU).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes=num, process_id=int(process_id))
    elif os.environ.get("MIDIBERT_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
    else:
        return False
    _initialized = True
    return True
