"""House rules of the package's shape (issue #20), checked on the source: modules under 600
lines, functions under 100 lines of code, no import cycle between the package's modules, and
the layers' boundaries (science imports no Nipype; the batch engine knows no diffusion or BIDS)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "csttool_nipype"
MAX_MODULE_LINES = 600
MAX_FUNCTION_CODE_LINES = 100


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _code_lines(lines: list[str], node: ast.AST) -> int:
    """Lines of a function that hold code: no docstring, blank or comment-only lines."""
    skip = set()
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        skip = set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for i in range(node.lineno, node.end_lineno + 1)
               if i not in skip and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def _imported_names(name: str, path: Path) -> set[str]:
    """Absolute dotted names module ``name`` imports, anywhere in it (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Package modules that module ``name`` imports."""
    found = set()
    for target in _imported_names(name, path):
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def test_no_module_over_600_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_100_lines_of_code():
    long = []
    for path in MODULES.values():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := _code_lines(lines, node)) > MAX_FUNCTION_CODE_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({n})")
    assert not long, f"functions over {MAX_FUNCTION_CODE_LINES} lines of code: {long}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def test_no_import_cycle():
    # a package's __init__ importing its own submodules is not a cycle of design
    graph = {m: {t for t in targets if not m.startswith(t + ".") and not t.startswith(m + ".")}
             for m, targets in IMPORTS.items()}
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


@pytest.mark.parametrize("layer, forbidden", [
    ("csttool_nipype.science", ("nipype", "matplotlib", "csttool_nipype.interfaces", "csttool_nipype.workflows",
                                "csttool_nipype.batch", "csttool_nipype.cli")),
    ("csttool_nipype.batch", ("csttool_nipype.science", "csttool_nipype.interfaces", "csttool_nipype.workflows",
                              "csttool_nipype.bids", "csttool_nipype.reports", "csttool_nipype.derivatives",
                              "csttool_nipype.subjects", "csttool_nipype.subject_job", "csttool_nipype.run",
                              "csttool_nipype.cohort", "dipy", "bids")),
])
def test_layer_boundaries(layer, forbidden):
    crossing = sorted(f"{name} imports {imported}"
                      for name, path in MODULES.items() if name == layer or name.startswith(layer + ".")
                      for imported in _imported_names(name, path)
                      if any(imported == f or imported.startswith(f + ".") for f in forbidden))
    assert not crossing, crossing


def test_the_import_reader_resolves_relative_imports():
    """``from ..bids import x`` in cli/main.py reads as csttool_nipype.bids (else the checks above see nothing)."""
    assert "csttool_nipype.bids" in IMPORTS["csttool_nipype.cli.main"]
    assert "csttool_nipype.batch.runner" in IMPORTS["csttool_nipype.batch.console"]
    assert "csttool_nipype.run" in IMPORTS["csttool_nipype.subject_job"]   # a function-level import


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


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
    callers = sorted(path.relative_to(PACKAGE).as_posix() for path in MODULES.values()
                     if "write_dataset_description" in path.read_text())
    assert callers == ["bids.py", "cli/bids_app.py", "run.py"]
    for folder in ("workflows", "interfaces"):
        text = "\n".join(p.read_text() for p in (PACKAGE / folder).glob("*.py"))
        assert "dataset_description" not in text and "bidsignore" not in text, folder
