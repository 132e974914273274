"""The deployment's plugins: the `oms` entry points of the installed distributions (the built-ins
are this project's own), read here from their metadata and handed to core's plugin manager, which
reads nothing itself. The composition root (functions/bootstrap.py) loads them once per container."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable

from core import PROJECT
from core.plugin_manager import OmsPluginManager, PluginSource, build_plugin_manager


class EntryPointSource:
    """An `oms` entry point as core's plugin manager loads it (core.plugin_manager.PluginSource)."""

    __slots__ = ("_entry_point",)

    def __init__(self, entry_point: importlib.metadata.EntryPoint) -> None:
        self._entry_point = entry_point

    @property
    def name(self) -> str:
        return self._entry_point.name

    def load(self) -> object:
        return self._entry_point.load()

    def origin(self) -> tuple[str | None, str | None]:
        # Parses the distribution's metadata (~10 ms a plugin): only GET /plugins and a broken
        # plugin's report ask, never a cold start whose plugins all load.
        dist = self._entry_point.dist
        if dist is None:
            return None, None
        return dist.metadata["Name"], dist.version


def entry_point_sources() -> list[PluginSource]:
    """Every installed `oms` entry point, in the order importlib.metadata finds them."""
    return [EntryPointSource(entry_point) for entry_point in importlib.metadata.entry_points(group=PROJECT)]


def load_plugin_manager(
    *extra_plugins: object, disabled: Iterable[str] = (), enable_test_payments: bool = False
) -> OmsPluginManager:
    """The plugin manager of every installed `oms` entry point, one at a time (one that cannot load
    is recorded broken and the others load regardless), but those `disabled` (OMS_DISABLED_PLUGINS)
    and the test gateway unless `enable_test_payments`; `extra_plugins` registered last (so they
    run first)."""
    return build_plugin_manager(
        *extra_plugins,
        sources=entry_point_sources(),
        disabled=disabled,
        enable_test_payments=enable_test_payments,
    )
