"""Error messages on one line: what every layer shows the user instead of a traceback."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its class name when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line.

    An exception raised in a DataLoader worker is re-raised with the worker's traceback in its message;
    its last line (minus the exception class) is what the user needs.
    """
    text = str(error).strip()
    if not text:
        return type(error).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    if "Original Traceback" in text:
        last = lines[-1]
        head, sep, rest = last.partition(": ")
        return rest if sep and " " not in head else last
    return lines[0]


class UsageError(ValueError):
    """A command-line argument that cannot work (e.g. an input path that does not exist): status 2."""
