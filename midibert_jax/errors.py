"""The one base class of every error a user can fix: bad config, missing data, bad MIDI.

`cli.main` catches `UserError` and prints its message as one line (exit status 2); anything
else that escapes a command is a bug and keeps its traceback. Kept free of heavy imports so
that every layer (tokenizer, data, configs) can derive from it.
"""


class UserError(Exception):
    """A condition the user can fix; the message names the file, folder or config key."""
