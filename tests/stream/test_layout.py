"""The package layout's import rules, checked on the source (no broker)."""

import ast
import subprocess
import sys
from pathlib import Path

import stream

ROOT = Path(stream.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_core_imports_nothing_above_it():
    allowed = ("stream.core", "stream.events", "stream.settings", "stream.exceptions")
    for path in (ROOT / "core").glob("*.py"):
        upward = {m for m in imported_modules(path)
                  if m.startswith("stream.") and not m.startswith(allowed)}
        assert not upward, f"{path.name} imports {upward}"
        assert "kafka" not in {m.split(".")[0] for m in imported_modules(path)}


def test_the_fetch_process_starts_without_the_learning_stack():
    """The worker's child imports stream.kafka.fetch only: no torch, no learning core."""
    code = ("import sys, stream.kafka.fetch; "
            "print(sorted({'torch', 'learners', 'stream.core'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"
