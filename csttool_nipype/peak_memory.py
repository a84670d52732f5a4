"""Peak resident memory of a stretch of code, read from the kernel (Linux).

:class:`PeakMemory` resets the process's high-water mark (``/proc/self/clear_refs``,
value 5) on entry and reads it back (``VmHWM`` in ``/proc/self/status``) on exit: the
exact peak of this process during the block, with no sampling thread and no delay.
Helper processes the block forked and reaped count too (``RUSAGE_CHILDREN`` when it
rose during the block). Elsewhere (no ``/proc``, not permitted) the peak is ``None``.

Resetting the mark also loses the peak of what ran *before* the block, so a process that
wants its own overall peak takes the largest of its blocks' peaks and ``ru_maxrss``.
"""

from __future__ import annotations

import resource

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _children_maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def _hwm_kib() -> int | None:
    try:
        with open(_STATUS) as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """``with PeakMemory() as peak: ...``; then ``peak.gb`` (GiB, or None if unknown)."""

    def __init__(self):
        self.gb: float | None = None
        self._armed = False
        self._children = 0

    def __enter__(self) -> "PeakMemory":
        try:
            with open(_CLEAR_REFS, "w") as fh:
                fh.write("5")
            self._armed = True
        except OSError:
            self._armed = False
        self._children = _children_maxrss_kib()
        return self

    def __exit__(self, *exc) -> None:
        if not self._armed:
            return
        hwm = _hwm_kib()
        if hwm is None:
            return
        children = _children_maxrss_kib()
        peak = max(hwm, children if children > self._children else 0)
        self.gb = peak / 1024.0**2


def process_peak_mb() -> float:
    """Largest resident set (MB) of this process and of its reaped children so far (``ru_maxrss``).

    A :class:`PeakMemory` block resets this process's mark, so a process that used one
    takes the larger of this and the blocks' peaks.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # KiB on Linux
    return max(own, _children_maxrss_kib()) / 1024.0
