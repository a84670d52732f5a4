"""Exceptions whose message is shown to the user as one line.

Every problem with user input is raised as :class:`InputError` with the offending
path first, so the command line can print ``error: <path>: <problem>`` and exit
non-zero without a traceback.
"""

from __future__ import annotations

from os import PathLike

#: Exit codes of every command: 0 success, 1 some subject or the pipeline failed, 2 a usage
#: error or unusable input (one line naming the file or the option, nothing written), 130
#: interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CsttoolError(Exception):
    """Base class for errors that are reported to the user without a traceback."""

    #: Error category shown in batch summaries and ``batch_metrics.csv``.
    category = "pipeline error"


class InputError(CsttoolError):
    """An input file or folder is missing, malformed or not usable.

    Parameters
    ----------
    path : path-like or None
        The file or folder at fault; it leads the message.
    problem : str
        What is wrong, in one short sentence (no newline).
    """

    category = "invalid input"

    def __init__(self, path: str | PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")


class OutputLocationError(InputError):
    """The output folder cannot be created or written: a usage error (exit code 2), like bad input."""


def check_writable_dir(path: str | PathLike) -> None:
    """Create ``path`` if needed and check that a file can be written in it.

    Raises :class:`OutputLocationError` (one line naming the folder) for a read-only
    filesystem, missing permissions or a path that is not a folder; leaves nothing behind.
    """
    import os
    import tempfile
    from pathlib import Path

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputLocationError(folder, f"cannot create the output folder ({exc.strerror or exc})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".csttool-write-test-", dir=folder)
    except OSError as exc:
        raise OutputLocationError(folder, f"output folder is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
