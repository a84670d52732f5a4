"""The batch console: the walkthrough's lines from real engine outcomes (a real timeout, a real
failure), nothing else when the output is not a terminal, and the live panel's data (stages the
jobs write to their progress files, polled by the runner)."""

import io
import re

from rich.console import Console

from csttool_nipype.batch.console import BatchConsole, outcome_line, remaining_estimate
from csttool_nipype.batch.jobs import Job
from csttool_nipype.batch.runner import BatchOptions, BatchRunner, RunningJob, _format_minutes
from csttool_nipype.batch.state import job_paths

from walkthrough import check_console


def _batch(tmp_path, jobs, console, function="tests.batch.fake_jobs:behave", **opts):
    out = tmp_path / "out"
    console.header(len(jobs), out, "0123456789abcdef")
    runner = BatchRunner(jobs, out, BatchOptions(function=function, **opts), on_finish=console.finished,
                         on_progress=console.progress)
    console.start()
    outcomes = runner.run()
    console.summary(outcomes, metrics_csv=out / "batch_metrics.csv", report=out / "batch_report.html")
    return out, outcomes


def test_plain_console_is_the_walkthrough_block_with_a_real_timeout_and_failure(tmp_path):
    jobs = [Job(f"sub-00{i}", {"name": f"sub-00{i}", "action": a, "seconds": 60}, "h")
            for i, a in enumerate(["ok", "raise", "sleep", "ok"], start=1)]
    stream = io.StringIO()   # not a terminal: plain lines only
    out, outcomes = _batch(tmp_path, jobs, BatchConsole(stream), nprocs=2, timeout_s=4)
    printed = stream.getvalue()
    subjects = check_console(printed, out)
    assert subjects["sub-001"].group("success") and subjects["sub-004"].group("success")
    assert subjects["sub-002"].group("kind") == "INVALID INPUT" and "bval count 64" in subjects["sub-002"].group(
        "reason")
    assert subjects["sub-003"].group("timeout"), "the runner's timeout reason reads like the walkthrough's"
    assert "Failed:     2 (sub-002, sub-003)" in printed
    assert "\x1b" not in printed and "\r" not in printed, "no terminal control codes off a terminal"
    assert len(printed.splitlines()) == 4 + len(jobs) + 10, "nothing but the walkthrough's lines"


def test_timeout_reason_of_the_default_limit_is_the_walkthroughs():
    # the runner's default limit is 120 minutes: its reason reads "exceeded 120m limit"
    limit = _format_minutes(BatchOptions(function="x").timeout_s)
    from csttool_nipype.batch.runner import TIMEOUT, Outcome

    line = outcome_line(Outcome("sub-003", TIMEOUT, 3, "timeout", f"exceeded {limit} limit", 7200.0))
    assert line == "3. sub-003: Failed (TIMEOUT) - exceeded 120m limit"


def test_live_panel_shows_running_jobs_and_the_stage_from_their_progress_files(tmp_path):
    jobs = [Job(f"sub-0{i}", {"stages": ["preprocess (denoise)", "tensor"], "seconds": 1.5}, "h")
            for i in (1, 2, 3)]
    snapshots = []

    class Recording(BatchConsole):
        def progress(self, running, total):
            super().progress(running, total)
            if running:
                frame = Console(record=True, width=110, file=io.StringIO())
                frame.print(self.render())
                snapshots.append(({r.key: r.stage for r in running}, frame.export_text()))

    stream = io.StringIO()
    out, outcomes = _batch(tmp_path, jobs, Recording(stream, live=False), function="tests.batch.fake_jobs:stages",
                           nprocs=2, progress_s=0.3)
    assert all(o.status == "SUCCESS" for o in outcomes)
    stages = {stage for running, _ in snapshots for stage in running.values()}
    assert {"preprocess (denoise)", "tensor"} <= stages, stages
    assert max(len(running) for running, _ in snapshots) == 2, "two jobs at once, both shown"
    text = next(t for running, t in reversed(snapshots) if "sub-03" in running)
    assert re.search(r"2/3 done · 1 running · 0 failed · elapsed 0:00:\d\d · remaining ~0:00:\d\d", text), text
    assert re.search(r"sub-03\s+(preprocess \(denoise\)|tensor|starting)\s+0:00:0\d", text), text
    assert not job_paths(out, "sub-01").progress.exists(), "the progress file goes with _work"


def test_remaining_time_is_the_mean_duration_spread_over_running_jobs():
    running = [RunningJob("a", 1, 10.0), RunningJob("b", 2, 50.0)]
    # mean 30 s; 2 pending: 60 s, plus 20 s and 0 s left of the running ones, over 2 at once
    assert remaining_estimate([20.0, 40.0], running, pending=2) == 40.0
    assert remaining_estimate([], running, pending=2) is None


def test_log_lines_go_to_the_batch_log_not_between_the_console_lines(tmp_path, capsys):
    import logging
    import warnings

    from csttool_nipype.batch.console import log_to_file
    from csttool_nipype.cli.logging_setup import setup_logging

    log = logging.getLogger("csttool_nipype.test")
    for verbosity, shown in ((0, False), (1, True)):
        setup_logging(verbosity, quiet=True)   # what csttool batch does
        with log_to_file(tmp_path / f"batch_run_{verbosity}.log"):
            log.info("info line")
            log.warning("warning line")
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("a library's warning", UserWarning)
        err = capsys.readouterr().err
        assert ("info line" in err and "warning line" in err) if shown else err == "", err
        written = (tmp_path / f"batch_run_{verbosity}.log").read_text()
        assert "INFO csttool_nipype.test: info line" in written and "WARNING" in written
        assert "a library's warning" in written
    setup_logging(0, quiet=True)
    log.warning("after the run")
    assert "after the run" in capsys.readouterr().err, "the console handler is restored"
