"""The tree mirrors the pipeline: every package is installed, arrows point one way, the kernels
stand alone, the docs keep up with the schema, the README stays a guide."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "attnbench"


def _module_imports(path: pathlib.Path) -> list[str]:
    """attnbench modules ``path`` imports at module level (not inside functions)."""
    mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    if path.name == "__init__.py":
        base = base[:-1]
    out = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            parts = base[: len(base) - node.level + 1] if node.level else []
            name = (
                ".".join(parts + ([node.module] if node.module else []))
                if node.level
                else node.module
            )
            out.append(name or "")
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("attnbench")]


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "attnbench"


def test_every_package_folder_is_installed():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py")} | {
        "attnbench.configs"
    }
    assert found == listed, f"missing: {found - listed}; stale: {listed - found}"


def test_kernels_never_import_the_harness():
    bad = []
    for f in (PKG / "kernels").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                name = node.module if not node.level else "." * node.level + node.module
                if re.match(r"^(attnbench\.(?!kernels)|\.\.\.)", name):
                    bad.append(f"{f.relative_to(ROOT)}: {name}")
    assert not bad, bad


def test_module_level_imports_between_parts_have_no_circle():
    edges: dict[str, set[str]] = {}
    for f in PKG.rglob("*.py"):
        src = _part(".".join(f.relative_to(ROOT).with_suffix("").parts))
        for m in _module_imports(f):
            dst = _part(m)
            if dst != src and dst != "attnbench":
                edges.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}

    def visit(n, path):
        if state.get(n) == 1:
            pytest.fail("import circle: " + " -> ".join(path + [n]))
        if state.get(n) == 2:
            return
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            visit(m, path + [n])
        state[n] = 2

    for n in sorted(edges):
        visit(n, [])
    # views read rows only: never the run driver or the backends
    assert not edges.get("views", set()) & {"run", "backends", "cli", "distributed"}, edges["views"]


def test_docs_schema_names_every_column():
    from attnbench.results import row_schema

    text = (ROOT / "docs" / "schema.md").read_text()
    missing = [c for c in row_schema().names if not re.search(rf"\b{c}\b", text)]
    assert not missing, f"docs/schema.md does not describe {missing}"


def test_readme_is_a_guide_and_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), f"README links to a missing {link}"
