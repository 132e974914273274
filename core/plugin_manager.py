"""Builds the pluggy plugin manager: hookspecs plus every plugin installed under the `oms` group."""

from __future__ import annotations

import pluggy

from core import PROJECT, hookspecs


def build_plugin_manager(*extra_plugins: object, load_entry_points: bool = True) -> pluggy.PluginManager:
    """Built-in plugins are entry points of this distribution, exactly like third-party ones, so
    any of them can be blocked (`pm.set_blocked(name)`) or replaced by another distribution."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    if load_entry_points:
        manager.load_setuptools_entrypoints(PROJECT)
    for plugin in extra_plugins:
        manager.register(plugin)
    return manager
