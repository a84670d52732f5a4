"""What a batch prints: the walkthrough's header, one line per finished subject, its summary block.

On any stream the lines are exactly these (extra lines, such as the invalid-entry count,
go below the block)::

    Starting batch processing for 50 subjects
    Output directory: /data/study_results
    Config hash: a1b2c3d4

    1. sub-001: Success in 15.2m
    3. sub-003: Failed (TIMEOUT) - exceeded 120m limit

    BATCH PROCESSING COMPLETE
    ========================================
    Total:      50
    Success:    48
    Failed:     1 (sub-003)
    Skipped:    0

    Main metrics: /data/study_results/batch_metrics.csv
    Batch Report: /data/study_results/batch_report.html

On a terminal a live panel (rich) sits below the scrolling lines while jobs run: jobs
done / running / failed, elapsed and estimated remaining time, and each running job with
the stage its progress file names. Knows nothing about diffusion: a stage is a string.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

from .runner import FAILED, INTERRUPTED, SKIPPED, SUCCESS, TIMEOUT, Outcome, RunningJob

RULE = "=" * 40
SUMMARY_WIDTH = 12   # "Total:      50": labels padded to one column


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f}m" if seconds >= 60 else f"{seconds:.1f}s"


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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


def header_lines(n_subjects: int, out_dir, config_hash: str) -> list[str]:
    return [f"Starting batch processing for {n_subjects} subjects", f"Output directory: {out_dir}",
            f"Config hash: {config_hash}", ""]


def summary_lines(outcomes: list[Outcome], metrics_csv=None, report=None, report_missing: str = "") -> list[str]:
    """The block after the subject lines; ``report_missing`` is said when there is no report."""
    failed = [o.key for o in outcomes if o.status in (FAILED, TIMEOUT)]

    def row(label: str, value) -> str:
        return f"{label + ':':<{SUMMARY_WIDTH}}{value}"

    lines = ["", "BATCH PROCESSING COMPLETE", RULE, row("Total", len(outcomes)),
             row("Success", sum(o.status == SUCCESS for o in outcomes)),
             row("Failed", len(failed)) + (f" ({', '.join(failed)})" if failed else ""),
             row("Skipped", sum(o.status == SKIPPED for o in outcomes)), ""]
    if metrics_csv:
        lines.append(f"Main metrics: {metrics_csv}")
    lines.append(f"Batch Report: {report}" if report else f"Batch Report: not written{report_missing}")
    stopped = [o for o in outcomes if o.status == INTERRUPTED]
    if stopped:   # not in the walkthrough: below its block
        ran = [o.key for o in stopped if o.log]   # the others had not started
        lines.append(f"Interrupted: {len(ran)}" + (f" ({', '.join(ran)})" if ran else "")
                     + f", not started: {len(stopped) - len(ran)}")
    return lines


def remaining_estimate(durations: list[float], running: list[RunningJob], pending: int) -> float | None:
    """Seconds left: each unstarted job and the rest of each running one take the mean finished
    duration, spread over as many jobs at once as are running now. None before any job finished."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = pending * mean + sum(max(0.0, mean - r.elapsed_s) for r in running)
    return work / max(1, len(running))


class BatchConsole:
    """Writes a batch's lines to ``stream`` (stdout); on a terminal also a live progress panel.

    ``live`` forces the panel on or off (default: on when ``stream`` is a terminal and
    rich is importable).
    """

    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream or sys.stdout
        if live is None:
            live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.live = live and _rich_available()
        self._lock = threading.Lock()
        self._panel = None
        self._total = 0
        self._started = time.monotonic()
        self._outcomes: list[Outcome] = []
        self._running: list[RunningJob] = []

    # ----------------------------------------------------------------- plain lines
    def line(self, text: str) -> None:
        with self._lock:
            if self._panel is not None:
                self._panel.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def header(self, n_subjects: int, out_dir, config_hash: str) -> None:
        self._total = n_subjects
        self._started = time.monotonic()
        self.line("\n".join(header_lines(n_subjects, out_dir, config_hash)))

    def finished(self, outcome: Outcome, total: int) -> None:
        self._total = total
        self._outcomes.append(outcome)
        self._running = [r for r in self._running if r.key != outcome.key]
        self.line(outcome_line(outcome))

    def progress(self, running: list[RunningJob], total: int) -> None:
        """The runner's periodic snapshot of running jobs (only the live panel shows it)."""
        self._total = total
        self._running = list(running)

    def summary(self, outcomes: list[Outcome], metrics_csv=None, report=None, report_missing: str = "") -> None:
        self.stop()
        self.line("\n".join(summary_lines(outcomes, metrics_csv, report, report_missing)))

    # ----------------------------------------------------------------- live panel
    def start(self) -> None:
        """Show the live panel (terminals only) until :meth:`stop` or :meth:`summary`."""
        if not self.live or self._panel is not None:
            return
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream, highlight=False)
        self._panel = Live(_Renderable(self), console=console, refresh_per_second=4, transient=True,
                           redirect_stdout=False, redirect_stderr=False)
        self._panel.start()
        self._handlers = _log_handlers_to(console)

    def stop(self) -> None:
        with self._lock:
            panel, self._panel = self._panel, None
        if panel is not None:
            panel.stop()
            _restore_handlers(self._handlers)

    def render(self):
        """The panel: a bar of jobs done, the counts, times, and one row per running job."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        outcomes, running = list(self._outcomes), list(self._running)
        done = len(outcomes)
        failed = sum(o.status in (FAILED, TIMEOUT) for o in outcomes)
        elapsed = time.monotonic() - self._started
        durations = [o.duration_s for o in outcomes if o.status in (SUCCESS, FAILED, TIMEOUT) and o.duration_s > 0]
        left = remaining_estimate(durations, running, max(0, self._total - done - len(running)))
        line = Table.grid(padding=(0, 1))
        line.add_row(ProgressBar(total=max(1, self._total), completed=done, width=30), Text(
            f"{done}/{self._total} done · {len(running)} running · {failed} failed · elapsed {_clock(elapsed)}"
            f" · remaining {'~' + _clock(left) if left is not None else 'unknown'}"))
        rows = Table.grid(padding=(0, 2))
        for job in sorted(running, key=lambda r: r.index):
            rows.add_row(f"  {job.key}", job.stage or "starting", _clock(job.elapsed_s))
        return Group(line, rows)


class _Renderable:
    """Re-rendered by rich's refresh thread, so the clocks tick between the runner's polls."""

    def __init__(self, console: BatchConsole):
        self.owner = console

    def __rich__(self):
        return self.owner.render()


class StageStatus:
    """A one-line live status for one job (``csttool run``): its name, current stage and clock.

    Use as a context manager; :meth:`update` takes the stage string. Does nothing when
    ``stream`` is not a terminal.
    """

    def __init__(self, name: str, stream=None, live: bool | None = None):
        self.name = name
        self.stream = stream or sys.stdout
        if live is None:
            live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.live = live and _rich_available()
        self.stage = "starting"
        self._started = time.monotonic()
        self._panel = None

    def update(self, stage: str) -> None:
        self.stage = stage

    def __rich__(self):
        from rich.text import Text

        return Text(f"{self.name}: {self.stage} · {_clock(time.monotonic() - self._started)}")

    def __enter__(self):
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, highlight=False)
            self._panel = Live(self, console=console, refresh_per_second=4, transient=True,
                               redirect_stdout=False, redirect_stderr=False)
            self._panel.start()
            self._handlers = _log_handlers_to(console)
        return self

    def __exit__(self, *exc):
        if self._panel is not None:
            self._panel.stop()
            _restore_handlers(self._handlers)
            self._panel = None
        return False


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class _ConsoleStream:
    """A file-like sink for logging that prints above rich's live area."""

    def __init__(self, console):
        self.console = console

    def write(self, text: str) -> int:
        text = text.rstrip("\n")
        if text:
            self.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass


def _console_handlers() -> list[logging.Handler]:
    """Handlers printing to a stream: the root logger's and the one Nipype adds on stdout."""
    return [h for name in (None, "nipype") for h in logging.getLogger(name).handlers
            if type(h) is logging.StreamHandler]


def _log_handlers_to(console) -> list:
    """Point the terminal log handlers at ``console`` (their lines print above the panel)."""
    changed = []
    for handler in _console_handlers():
        if getattr(handler.stream, "isatty", lambda: False)():
            changed.append((handler, handler.setStream(_ConsoleStream(console))))
    return changed


def _restore_handlers(changed: list) -> None:
    for handler, stream in changed:
        handler.setStream(stream)


class _QuietFileHandler(logging.FileHandler):
    """A log file whose write errors (a full disk) are dropped, not printed as tracebacks."""

    def handleError(self, record) -> None:
        pass


@contextlib.contextmanager
def log_to_file(path):
    """Send every log line of this process to ``path`` (appended) for the duration.

    When the console handler is set above INFO (the CLI's quiet default, see
    :func:`csttool_nipype.cli.logging_setup.setup_logging`) every console handler (Nipype's
    too) is silenced meanwhile, so log lines never interleave with the batch's own lines;
    with ``-v`` they stay.
    """
    from pathlib import Path

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = _QuietFileHandler(path)
    except OSError as exc:   # an unwritable folder: the batch itself will say so, in one line
        logging.getLogger(__name__).warning("cannot write the batch log %s (%s)", path, exc)
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    quiet = any(h.level > logging.INFO for h in root.handlers if type(h) is logging.StreamHandler)
    muted = [(h, h.level) for h in _console_handlers()] if quiet else []
    for h, _ in muted:
        h.setLevel(logging.CRITICAL + 1)
    root.addHandler(handler)
    logging.captureWarnings(True)   # Python warnings of the libraries too: into the log, not the console
    try:
        yield Path(path)
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()
        for h, level in muted:
            h.setLevel(level)
