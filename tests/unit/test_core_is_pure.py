"""core/ imports the standard library, pydantic and pluggy only: checked by reading its imports."""

import ast
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"
ALLOWED_THIRD_PARTY = {"pydantic", "pluggy", "annotated_types"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_imports_only_stdlib_pydantic_and_pluggy():
    offenders = {}
    for path in sorted(CORE.rglob("*.py")):
        bad = {
            root
            for root in _imported_roots(path)
            if root != "core" and root not in sys.stdlib_module_names and root not in ALLOWED_THIRD_PARTY
        }
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_the_check_would_catch_boto3(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import os\nfrom boto3.dynamodb.types import TypeSerializer\n")
    assert "boto3" in _imported_roots(sneaky)
