"""core/ imports the standard library, pydantic and pluggy only, and does no I/O of the deployment's:
checked by reading its imports and the names it uses."""

import ast
import functools
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "core"
ALLOWED_THIRD_PARTY = {"pydantic", "pluggy", "annotated_types"}


@functools.cache
def _nodes(path: Path) -> tuple[ast.AST, ...]:
    """Every node of the module at `path`, parsed once per test process: both checks read every
    file of core/ (the source does not change while the tests run; a test's own file is its own
    path), each parse of core/ 0.3-1 s."""
    return tuple(ast.walk(ast.parse(path.read_text(), filename=str(path))))


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in _nodes(path):
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


# What finds the installed distributions' plugins (their metadata on disk): the deployment's
# business (functions/plugin_loading.py), which hands core's plugin manager what to register.
PACKAGE_METADATA = {"importlib.metadata", "pkg_resources"}
PACKAGE_METADATA_NAMES = {"entry_points", "load_setuptools_entrypoints", "distributions"}


def _package_metadata_uses(path: Path) -> set[str]:
    found = set()
    for node in _nodes(path):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if any(a.name.startswith(m) for m in PACKAGE_METADATA))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            found.update(m for m in modules if m in PACKAGE_METADATA)
        elif isinstance(node, ast.Attribute) and node.attr in PACKAGE_METADATA_NAMES:
            found.add(node.attr)
        elif isinstance(node, ast.Name) and node.id in PACKAGE_METADATA_NAMES:
            found.add(node.id)
    return found


def test_core_reads_no_package_metadata_nor_entry_points():
    offenders = {
        path.name: sorted(found) for path in sorted(CORE.rglob("*.py")) if (found := _package_metadata_uses(path))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "source",
    [
        "import importlib.metadata\n",
        "from importlib import metadata\n",
        "from importlib.metadata import version\n",
        "import importlib\nimportlib.import_module('x').entry_points(group='oms')\n",
        "def load(manager):\n    manager.load_setuptools_entrypoints('oms')\n",
    ],
)
def test_the_check_would_catch_entry_points_read_in_core(tmp_path, source):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(source)
    assert _package_metadata_uses(sneaky)
