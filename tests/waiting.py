"""Polling for the tests that watch other processes (batches, workers, logs)."""

import time


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    """Call ``predicate`` every ``interval`` s until it is true; AssertionError after ``timeout`` s."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def default_sigint() -> None:
    """``preexec_fn`` for a process a test will send SIGINT to, as Ctrl-C reaches a foreground batch.

    A shell without job control starts background commands with SIGINT ignored, and the test
    runner's children inherit that (``.ci/run &`` in a script): Python then installs no
    KeyboardInterrupt handler and the batch never sees the test's SIGINT.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
