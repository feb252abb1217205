"""The common base of every data error a user can fix (missing folders, bad layouts, labels, builds).

Commands catch `DataError` and print its message as one line; anything else is a bug.
"""


class DataError(Exception):
    """A dataset that cannot be built or read as asked; the message names the file, folder or key."""
