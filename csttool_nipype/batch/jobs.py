"""What the engine schedules: one job per subject (and session)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Folder-safe job keys: BIDS-like labels, no path separators or dot-dot.
SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")


@dataclass(frozen=True)
class Job:
    """One unit of work.

    Attributes
    ----------
    key : str
        Folder under the output directory: ``sub-001`` or ``sub-001/ses-01``.
    payload : dict
        JSON-serialisable input for the job function (opaque to the engine).
    config_hash : str
        Fingerprint of every option that changes this job's results.
    invalid : str or None
        When set, the job is not run and is reported FAILED with this reason.
    """

    key: str
    payload: dict = field(default_factory=dict)
    config_hash: str = ""
    invalid: str | None = None


def is_safe_key(key: str) -> bool:
    """True for ``label`` or ``label/label`` (subject/session) made of safe path components."""
    parts = key.split("/")
    return 0 < len(parts) <= 2 and all(SAFE_KEY.match(p) for p in parts)
