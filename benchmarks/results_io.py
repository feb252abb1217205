"""Where benchmark figures go: one JSON file per benchmark under benchmarks/results/ (gitignored)."""

from __future__ import annotations

import json
import pathlib
from typing import Any


def write_results(path: str | pathlib.Path, result: dict[str, Any]) -> pathlib.Path:
    """Writes `result` as indented JSON to `path` (parents created) and says where."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out
