"""The batch walkthrough's console block, and a line-by-line check of a captured console against it.

``WALKTHROUGH`` is the "Example Output" of the walkthrough the batch feature was specified
from (``../shared/seed/000_fee3d22de6b4f722.txt``), verbatim. :func:`check_console` turns
each of its fixed lines into a pattern (numbers, the output folder and the hash aside) and
checks a captured console line by line: the header, one line per subject in the shape of
the walkthrough's subject lines, the summary block with counts that agree with those
lines, then the two paths; anything after that is extra and allowed.
"""

import re

WALKTHROUGH = """\
Starting batch processing for 50 subjects
Output directory: /data/study_results
Config hash: a1b2c3d4

1. sub-001: Success in 15.2m
2. sub-002: Success in 14.8m
3. sub-003: Failed (TIMEOUT) - exceeded 120m limit
4. sub-004: Success in 15.5m
...

BATCH PROCESSING COMPLETE
========================================
Total:      50
Success:    48
Failed:     1 (sub-003)
Skipped:    0

Main metrics: /data/study_results/batch_metrics.csv
Batch Report: /data/study_results/batch_report.html"""

WALKTHROUGH_OUT = "/data/study_results"
NUMBER = r"\d+(?:\.\d+)?"
#: The walkthrough's subject lines, generalised: ``Success in 15.2m`` (seconds below a minute),
#: ``Failed (TIMEOUT) - exceeded 120m limit`` and, with the same shape, any other failure kind.
SUBJECT_LINE = re.compile(r"^(?P<index>\d+)\. (?P<key>sub-[\w-]+(?:/ses-[\w-]+)?): (?:"
                          rf"(?P<success>Success in {NUMBER}[ms])"
                          rf"|(?P<timeout>Failed \(TIMEOUT\) - exceeded {NUMBER}[ms] limit)"
                          r"|Failed \((?P<kind>[A-Z][A-Z ]*)\) - (?P<reason>.+)"
                          r"|(?P<skipped>Skipped \(.+\)))$")


def _pattern(line: str, out: str) -> str:
    """A walkthrough line as a regex: its output folder → ``out``, hash and numbers → any."""
    parts = re.split(r"(/data/study_results|a1b2c3d4|\(sub-003\)|\d+)", line)
    regex = ""
    for part in parts:
        if part == WALKTHROUGH_OUT:
            regex += re.escape(out)
        elif part == "a1b2c3d4":
            regex += "[0-9a-f]{8,}"
        elif part == "(sub-003)":
            regex += r"\((?P<failed>[^)]*)\)"
        elif part.isdigit():
            regex += r"(?P<n>\d+)"
        else:
            regex += re.escape(part)
    return "^" + regex + "$"


def check_console(printed: str, out) -> dict:
    """Check ``printed`` against :data:`WALKTHROUGH`; return ``{key: subject line match}``.

    Raises AssertionError naming the first line that differs.
    """
    out = str(out)
    lines = printed.splitlines()
    spec = WALKTHROUGH.splitlines()
    header, summary = spec[:4], spec[spec.index("...") + 1:]
    assert len(lines) >= len(header) + len(summary), f"console too short:\n{printed}"
    for i, line in enumerate(header):
        assert re.match(_pattern(line, out), lines[i]), f"line {i + 1}: {lines[i]!r} is not like {line!r}"
    n = int(re.match(_pattern(header[0], out), lines[0]).group("n"))
    subjects, i = {}, len(header)
    while i < len(lines) and lines[i]:
        match = SUBJECT_LINE.match(lines[i])
        assert match, f"line {i + 1}: {lines[i]!r} is not a walkthrough subject line"
        subjects[match.group("key")] = match
        i += 1
    assert len(subjects) == n, f"{len(subjects)} subject lines for {n} subjects"
    counts = {}
    for j, line in enumerate(summary):
        got = lines[i + j] if i + j < len(lines) else ""
        match = re.match(_pattern(line, out), got)
        if match is None and line.startswith("Failed:"):   # "(sub-003)" only when some failed
            match = re.match(_pattern(line.split(" (")[0], out), got)
        assert match, f"line {i + j + 1}: {got!r} is not like {line!r}"
        if "n" in match.groupdict():
            counts[line.split(":")[0]] = (int(match.group("n")), match.groupdict().get("failed"))
    failed = [k for k, m in subjects.items() if not (m.group("success") or m.group("skipped"))]
    assert counts["Total"][0] == n
    assert counts["Success"][0] == sum(bool(m.group("success")) for m in subjects.values())
    assert counts["Failed"][0] == len(failed) and (counts["Failed"][1] or "") == ", ".join(failed)
    assert counts["Skipped"][0] == sum(bool(m.group("skipped")) for m in subjects.values())
    return subjects
