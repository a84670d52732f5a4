"""Peak memory of a block from the kernel's high-water mark (Linux), and the stage
interfaces that record it per node."""

from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np
import pytest

from csttool_nipype.peak_memory import PeakMemory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")

MB = 1024.0**2


def _touch(n_bytes: int) -> None:
    a = np.ones(n_bytes, dtype=np.uint8)   # written, so resident
    del a


def _rss_gb() -> float:
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmRSS:"))
    return int(line.split()[1]) / MB


def test_peak_of_a_block_and_reset_between_blocks():
    start = _rss_gb()
    with PeakMemory() as big:
        _touch(300 * 2**20)
    with PeakMemory() as small:
        _touch(10 * 2**20)
    assert big.gb - start >= 0.28          # the 300 MB array was resident inside the block
    assert small.gb < big.gb - 0.2        # the second block does not inherit the first's peak


def _child(n_bytes):
    _touch(n_bytes)


def test_forked_helpers_count():
    ctx = mp.get_context("fork")
    with PeakMemory() as peak:
        p = ctx.Process(target=_child, args=(400 * 2**20,))
        p.start()
        p.join()
    assert p.exitcode == 0
    assert peak.gb >= 0.38


def test_stage_interface_records_its_peak(tmp_path):
    from csttool_nipype.interfaces.preprocess import PreprocRecord

    result = PreprocRecord(config={"denoise_method": "none"}).run(cwd=str(tmp_path))
    assert 0 < result.runtime.mem_peak_gb < 100
