"""Console logging for the command-line tools."""

from __future__ import annotations

import logging


def setup_logging(verbosity: int = 0) -> None:
    """INFO for csttool, WARNING for Nipype (INFO/DEBUG with -v/-vv)."""
    level = logging.DEBUG if verbosity > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    nipype_level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(nipype_level)
