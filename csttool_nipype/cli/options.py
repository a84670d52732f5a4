"""What both command-line tools share: value types, path resolution, the error policy.

Exit codes (one policy for ``csttool`` and ``csttool-nipype``): see
:data:`csttool_nipype.errors.EXIT_OK` and the codes beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from ..config import DEFAULT_TIMEOUT_MINUTES, PipelineConfig
from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CsttoolError, InputError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors in one line (``prog: error: ...``), exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _number(text: str, ok, rule: str) -> float:
    """argparse helper: ``text`` as a float that satisfies ``ok``, else a usage error quoting ``rule``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, not {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    return _number(text, lambda v: v > 0, "more than 0")


def timeout_minutes(text: str) -> float:
    """argparse type of ``--timeout-minutes``: 0 is no limit, negative is an error."""
    return _number(text, lambda v: v >= 0, "0 (no limit) or more minutes")


def add_timeout_option(group) -> None:
    group.add_argument("--timeout-minutes", "--timeout_minutes", dest="timeout_minutes", type=timeout_minutes,
                       default=None, metavar="MIN",
                       help=f"per-subject time limit in minutes, 0 = none (default: {DEFAULT_TIMEOUT_MINUTES:g}; "
                            "none with a SLURM plugin, where the jobs' --time applies)")


def resolve_timeout(value: float | None, slurm: bool = False) -> float:
    """Minutes of the per-subject limit (``inf``: none) from the flag's value."""
    if value is None:
        value = 0.0 if slurm else DEFAULT_TIMEOUT_MINUTES
    return value if value > 0 else float("inf")


def absolute_paths(args, *names: str) -> None:
    """Make the named path arguments absolute against the current folder, once, here.

    Jobs and Nipype nodes run in other folders: a relative path must not reach them.
    """
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, Path):
            setattr(args, name, Path(os.path.abspath(value.expanduser())))


def check_pipeline_options(parser: argparse.ArgumentParser, options: dict) -> PipelineConfig:
    """The options as a config, or a usage error (exit 2) naming the bad value."""
    try:
        return PipelineConfig.from_dict(options)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


def run_command(func, args, logger: logging.Logger) -> int:
    """Call ``func(args)`` under the exit-code policy of this module (never a traceback)."""
    try:
        return func(args)
    except InputError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    except CsttoolError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE if getattr(exc, "category", "") == InputError.category else EXIT_FAILED
    except KeyboardInterrupt:
        logger.error("interrupted")
        return EXIT_INTERRUPTED


def read_filters(path: Path | None) -> dict | None:
    """The ``dwi`` query of a NiPreps-style BIDS filter file."""
    if path is None:
        return None
    try:
        filters = json.loads(path.read_text())
        return dict(filters.get("dwi", {}))
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise InputError(path, f"not a readable BIDS filter file ({exc})") from None
