"""The package's layering, read from the source: no import cycle, the batch engine apart from diffusion.

Every import statement counts, those inside functions too (a lazy import still ties two
modules together). ``from . import x`` of a module is an import of that module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "csttool_nipype"
#: What the batch engine (csttool_nipype/batch/) must not import: it runs jobs, whatever they are.
NOT_FOR_THE_BATCH_ENGINE = ("science", "interfaces", "workflows", "bids", "derivatives", "run", "subject_job",
                            "cohort")


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """Modules of the package that module ``name`` imports, anywhere in its source."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = import_graph()
    assert "csttool_nipype.run" in graph["csttool_nipype.subject_job"]   # the finder sees lazy imports
    assert cycles(graph) == []


def test_the_batch_engine_imports_nothing_about_diffusion_or_bids():
    graph = import_graph()
    engine = {name: deps for name, deps in graph.items() if name.startswith("csttool_nipype.batch")}
    assert engine, "no batch engine modules found"
    forbidden = tuple(f"csttool_nipype.{name}" for name in NOT_FOR_THE_BATCH_ENGINE)
    wrong = {name: sorted(d for d in deps if d.startswith(forbidden)) for name, deps in engine.items()}
    assert {name: deps for name, deps in wrong.items() if deps} == {}


#: Words of the diffusion side (DWI input keys, BIDS labels and files) the engine's code never spells.
DIFFUSION_WORDS = ("nifti", "dicom", "bval", "bvec", ".nii", "bids", "sub-", "ses-")


def test_the_batch_engine_spells_no_dwi_file_key_or_bids_label():
    """Not in code (docstrings may give examples): subjects and their files are the diffusion side's
    (csttool_nipype/subjects.py, bids.py, subject_job.py); the engine sees keys and JSON payloads."""
    found = []
    for path in sorted((PACKAGE / "batch").glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                words = [w for w in DIFFUSION_WORDS if w in node.value.lower()]
                if words:
                    found.append(f"{path.name}:{node.lineno}: {node.value[:60]!r} ({', '.join(words)})")
    assert found == []


def test_the_derivatives_dataset_files_are_written_by_bids_py_for_the_commands_only():
    """The workflows name and copy a subject's files; ``dataset_description.json`` and ``.bidsignore``
    of OUT are bids.py's, called by the commands that make OUT a derivatives dataset."""
    callers = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
                     if "write_dataset_description" in path.read_text())
    assert callers == ["bids.py", "cli/bids_app.py", "run.py"]
    for folder in ("workflows", "interfaces"):
        text = "\n".join(p.read_text() for p in (PACKAGE / folder).glob("*.py"))
        assert "dataset_description" not in text and "bidsignore" not in text, folder
