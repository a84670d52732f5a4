"""Record the live progress display of ``csttool batch`` on the demo's phantom cohort.

    python docs/record_progress_display.py [WORK_DIR]

Runs the demo cohort with 5 phantoms (sub-04 corrupt on purpose) two subjects at a time
through the same code as ``csttool demo`` and keeps one frame of the terminal: the lines
printed so far and the live panel as rich drew it, at the first moment when three subjects
had finished (one of them failed) and two were running. Writes ``docs/progress_display.svg`` and ``.txt``.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.text import Text

from csttool_nipype.batch.console import BatchConsole
from csttool_nipype.demo import run_demo

DOCS = Path(__file__).resolve().parent
WIDTH = 110


class RecordingConsole(BatchConsole):
    """The batch console, also keeping every printed line and the panel of the chosen moment."""

    def __init__(self):
        super().__init__(io.StringIO(), live=False)
        self.printed: list[str] = []
        self.frame = None

    def line(self, text: str) -> None:
        super().line(text)
        self.printed.extend(text.split("\n"))
        sys.stdout.write(text + "\n")

    def progress(self, running, total) -> None:
        super().progress(running, total)
        staged = [r for r in running if r.stage and r.stage != "starting"]
        if self.frame is None and len(self._outcomes) >= 3 and len(staged) >= 2:
            self.frame = (list(self.printed), self.render())


def main(work: Path) -> None:
    console = RecordingConsole()
    run_demo(work / "demo", n_subjects=5, nprocs=2, console=console)
    if console.frame is None:
        raise SystemExit("no moment with three subjects done and two running was seen")
    lines, panel = console.frame
    record = Console(record=True, width=WIDTH, file=io.StringIO(), force_terminal=True)
    for line in lines:
        record.print(Text(line))
    record.print(panel)
    record.save_svg(str(DOCS / "progress_display.svg"), title="csttool batch (live display, a terminal)",
                    clear=False)
    record.save_text(str(DOCS / "progress_display.txt"))
    print(f"wrote {DOCS / 'progress_display.svg'} and .txt")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
