"""A training step served to a parent process one step at a time, so two implementations can be timed round robin.

Each side (our JAX step, the reference PyTorch step) runs in its own child process: the environment that
caps its ISA applies to it alone, and its resident-memory high-water mark (ru_maxrss) is its own. The
parent writes `step` or `quit` lines to the child's stdin; the child answers one line `@@ <json>` per
command on stdout (other output is ignored by the parent). This module imports neither jax nor torch.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable

PREFIX = "@@ "
# bench size -> (model size, global batch, length), shared by both sides; smoke is for tests.
CASES = {"tiny": ("tiny", 8, 512), "base": ("base", 2, 1024), "smoke": ("tiny", 2, 64)}


def _say(payload: dict[str, Any]) -> None:
    sys.stdout.write(PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def max_rss_bytes() -> int:
    """This process's resident-set high-water mark (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def serve(setup: Callable[[], tuple[Callable[[], Any], dict[str, Any]]]) -> int:
    """Child side: `setup()` -> (step, info); answer `ready` with info, then one timing per `step` line."""
    t = time.perf_counter()
    step, info = setup()
    step()  # warm-up (and, for JAX, the first run of the compiled program)
    _say({"ready": True, "setup_s": time.perf_counter() - t, **info})
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            t, c = time.perf_counter(), time.process_time()
            extra = step() or {}
            _say({"step_s": time.perf_counter() - t, "cpu_s": time.process_time() - c, **extra})
        elif command == "quit":
            _say({"max_rss_bytes": max_rss_bytes()})
            return 0
        else:
            _say({"error": f"unknown command {command!r}"})
    return 0


class Worker:
    """Parent side: one child process that serves a step (started by the constructor)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]):
        self.name = name
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
        )
        self.ready: dict[str, Any] | None = None
        self.steps: list[dict[str, Any]] = []

    def _answer(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                payload = json.loads(line[len(PREFIX):])
                if "error" in payload:
                    raise RuntimeError(f"{self.name}: {payload['error']}")
                return payload
        raise RuntimeError(f"{self.name}: the child exited with status {self.proc.wait()} (its stderr is above)")

    def wait_ready(self) -> dict[str, Any]:
        self.ready = self._answer()
        return self.ready

    def step(self) -> dict[str, Any]:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        answer = self._answer()
        self.steps.append(answer)
        return answer

    def quit(self) -> dict[str, Any]:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        answer = self._answer()
        self.proc.wait(timeout=60)
        return answer
