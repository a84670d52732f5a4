"""Polling for the tests that watch other processes (batches, workers, logs)."""

import time


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    """Call ``predicate`` every ``interval`` s until it is true; AssertionError after ``timeout`` s."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
