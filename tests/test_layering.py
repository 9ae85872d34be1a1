"""Package boundaries: the packages meet only through sparse_lab.protocols and the neutral modules.

sparsity/ and measure/ read what models declare (protocols) and never import a model, a dataset or a
task; models/ are plain nn.Modules that import no method, task or dataset. Checked on the source (every
import statement, including those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sparse_lab"
FORBIDDEN = {
    "sparsity": ("models", "data", "tasks", "hardware"),
    "measure": ("models", "data", "tasks", "sparsity", "hardware"),
    "models": ("sparsity", "tasks", "data", "measure", "hardware"),
    "tasks": ("hardware", "measure", "models", "sparsity", "data"),
    "data": ("models", "sparsity", "tasks", "measure", "hardware"),
    "hardware": ("models", "data", "tasks", "sparsity"),
}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_its_boundaries(package):
    offending = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for module in imported_modules(path):
            if any(
                module == f"sparse_lab.{other}" or module.startswith(f"sparse_lab.{other}.")
                for other in FORBIDDEN[package]
            ):
                offending.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not offending, "\n".join(offending)


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from sparse_lab.models import vit\n")
    assert "sparse_lab.models.vit" in imported_modules(source)
