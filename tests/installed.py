"""Throwaway plugin distributions on sys.path (a dist-info with `oms` entry points, and modules), as pip would."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


class Installer:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        self.modules: list[str] = []
        monkeypatch.syspath_prepend(str(root))

    def install(self, distribution: str, version: str, plugins: dict[str, str]) -> dict[str, str]:
        """`plugins` maps entry-point names to module source; returns entry-point name -> module."""
        modules = {}
        for name, source in plugins.items():
            module = f"oms_test_plugin_{name}_{uuid.uuid4().hex[:8]}"  # never one a test imported before
            (self.root / f"{module}.py").write_text(textwrap.dedent(source))
            modules[name] = module
            self.modules.append(module)
        info = self.root / f"{distribution.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        lines = "".join(f"{name} = {module}\n" for name, module in modules.items())
        (info / "entry_points.txt").write_text(f"[oms]\n{lines}")
        return modules

    def uninstall_all(self) -> None:
        for module in self.modules:
            sys.modules.pop(module, None)


def installing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Installer]:
    """For a test module's `installer` fixture: `yield from installing(tmp_path, monkeypatch)`."""
    installed = Installer(tmp_path / "site-packages", monkeypatch)
    installed.root.mkdir()
    yield installed
    installed.uninstall_all()


# A plugin distribution whose module cannot be imported: its dependency is missing.
FAILS_TO_IMPORT = """
    import oms_no_such_dependency
"""
