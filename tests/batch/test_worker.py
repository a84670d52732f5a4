"""The job process ends without the interpreter's teardown, but only after its log and
output are flushed."""

from __future__ import annotations

import subprocess
import sys


def test_exit_now_keeps_the_exit_code_log_and_output(tmp_path):
    log = tmp_path / "job.log"
    code = (
        "import logging, sys\n"
        "from csttool_nipype.batch.worker import exit_now\n"
        f"logging.basicConfig(filename={str(log)!r}, level=logging.INFO)\n"
        "logging.getLogger('job').info('last words')\n"
        "sys.stdout.write('unflushed output')\n"
        "exit_now(3)\n"
        "raise SystemExit(0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert proc.stdout == "unflushed output"
    assert "last words" in log.read_text()
