"""What a batch prints: a header, one line per finished subject, a summary block."""

from __future__ import annotations

import sys
import threading

from .runner import FAILED, INTERRUPTED, SKIPPED, SUCCESS, TIMEOUT, Outcome


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f}m" if seconds >= 60 else f"{seconds:.1f}s"


def outcome_line(outcome: Outcome) -> str:
    """``1. sub-001: Success in 15.2m`` / ``3. sub-003: Failed (TIMEOUT) - exceeded 120m limit``."""
    head = f"{outcome.index}. {outcome.key}:"
    if outcome.status == SUCCESS:
        return f"{head} Success in {_duration(outcome.duration_s)}"
    if outcome.status == SKIPPED:
        return f"{head} Skipped ({outcome.reason})"
    if outcome.status == INTERRUPTED:
        return f"{head} INTERRUPTED - {outcome.reason}"
    kind = "TIMEOUT" if outcome.status == TIMEOUT else outcome.category.upper() or "ERROR"
    return f"{head} Failed ({kind}) - {outcome.reason}"


class BatchConsole:
    """Writes the batch's progress to ``stream`` (stdout); a live status line on terminals."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._lock = threading.Lock()
        self._done = 0

    def line(self, text: str) -> None:
        with self._lock:
            if self.live:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self.stream.flush()

    def header(self, n_subjects: int, out_dir, config_hash: str, n_invalid: int = 0) -> None:
        extra = f" ({n_invalid} invalid)" if n_invalid else ""
        self.line(f"csttool batch: {n_subjects} subject(s){extra} -> {out_dir}")
        self.line(f"config hash: {config_hash}")

    def finished(self, outcome: Outcome, total: int) -> None:
        self._done += 1
        self.line(outcome_line(outcome))
        if self.live and self._done < total:
            with self._lock:
                self.stream.write(f"[{self._done}/{total}] running...")
                self.stream.flush()

    def summary(self, outcomes: list[Outcome], metrics_csv=None, report=None) -> None:
        failed = [o.key for o in outcomes if o.status in (FAILED, TIMEOUT)]
        lines = [
            "",
            "Summary",
            f"  Total:   {len(outcomes)}",
            f"  Success: {sum(o.status == SUCCESS for o in outcomes)}",
            f"  Failed:  {len(failed)}" + (f" ({', '.join(failed)})" if failed else ""),
            f"  Skipped: {sum(o.status == SKIPPED for o in outcomes)}",
        ]
        stopped = [o for o in outcomes if o.status == INTERRUPTED]
        if stopped:
            ran = [o.key for o in stopped if o.log]   # the others had not started
            lines.append(f"  Interrupted: {len(ran)}" + (f" ({', '.join(ran)})" if ran else "")
                         + f", not started: {len(stopped) - len(ran)}")
        if metrics_csv:
            lines.append(f"  Metrics: {metrics_csv}")
        if report:
            lines.append(f"  Report:  {report}")
        self.line("\n".join(lines))
