"""Optional PDF copies of the HTML reports, printed by headless Chromium when it is installed.

No Python PDF library is needed: the reports are self-contained HTML, and Chromium
(Debian package ``chromium``) prints them as they look in a browser.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import InputError

LOGGER = logging.getLogger(__name__)

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def pdf_engine() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def html_to_pdf(html: Path, pdf: Path | None = None, timeout_s: float = 120.0) -> Path:
    """Print ``html`` to ``pdf`` (default: same name, ``.pdf``) and return the PDF's path."""
    engine = pdf_engine()
    if engine is None:
        raise InputError(None, "no PDF engine: install Chromium (Debian/Ubuntu: apt-get install chromium) "
                               "or open the HTML report in a browser and print it")
    html = Path(html).absolute()
    pdf = Path(pdf or html.with_suffix(".pdf")).absolute()
    with tempfile.TemporaryDirectory(prefix="csttool-chromium-") as profile:
        subprocess.run([engine, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                        "--no-pdf-header-footer", f"--print-to-pdf={pdf}", html.as_uri()],
                       check=True, capture_output=True, timeout=timeout_s)
    if not pdf.is_file():
        raise RuntimeError(f"{engine} did not write {pdf}")
    LOGGER.info("PDF: %s", pdf)
    return pdf
