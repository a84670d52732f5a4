"""Console logging for the command-line tools."""

from __future__ import annotations

import logging


def setup_logging(verbosity: int = 0, quiet: bool = False) -> None:
    """INFO for csttool, WARNING for Nipype (INFO/DEBUG with -v/-vv).

    ``quiet`` (commands with a console of their own: ``csttool batch``, ``csttool demo``,
    the BIDS-App's participant level) shows only warnings and errors on the console unless
    ``-v`` is given; a batch then silences even those while it runs and writes every log line
    to its log file (:func:`csttool_nipype.batch.console.log_to_file`), so log lines never
    interleave with the batch's own lines.
    """
    level = logging.DEBUG if verbosity > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if quiet and verbosity == 0:
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    nipype_level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(nipype_level)
