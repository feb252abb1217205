"""Integer flags: one range check and one message, for the command line and the library call alike.

    parser.add_argument("--seeds", type=flags.int_type(1, 10))        # argparse: one line on a bad value
    problem = flags.int_problem(options.seeds, 1, 10)                  # a library caller: None when fine
"""

from __future__ import annotations

import argparse
from typing import Any, Callable


def range_text(low: int, high: int | None = None, multiple: int = 1) -> str:
    """'an integer in 1..10', 'an integer >= 0', with ', a multiple of 8' when it must be one."""
    text = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
    return text + (f", a multiple of {multiple}" if multiple > 1 else "")


def int_problem(value: Any, low: int, high: int | None = None, multiple: int = 1) -> str | None:
    """None when `value` is an int in the range, else 'must be <range>, got <value>'."""
    if (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high) and value % multiple == 0):
        return None
    return f"must be {range_text(low, high, multiple)}, got {value!r}"


def int_type(low: int, high: int | None = None, multiple: int = 1) -> Callable[[str], int]:
    """An argparse `type=`: the text as an int in the range, else argparse's one-line error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {range_text(low, high, multiple)}, got {text!r}") from None
        problem = int_problem(value, low, high, multiple)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse
