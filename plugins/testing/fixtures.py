"""pytest fixtures for testing OMS plugins. Enable them in your tests' conftest.py:

    pytest_plugins = ["plugins.testing.fixtures"]

    @pytest.fixture
    def oms_plugins(recording_gateway):
        return [my_plugin, catalog_price, recording_gateway]   # what your tests run with

    def test_books_are_zero_rated(oms_host): ...

This module is not registered as a `pytest11` entry point on purpose: it would then load into
every pytest run on a machine where the OMS is installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plugins.data_files import load_data_file
from plugins.nearest_sourcing import GEO_CENTROIDS_FILE_ENV
from plugins.promotions import PROMOTIONS_FILE_ENV
from plugins.tax_table import TAX_RATES_FILE_ENV
from plugins.testing.gateway import RecordingGateway
from plugins.testing.host import PluginHost, plugin_host

# The built-in plugins' data files can be replaced through these variables (README, "Configuring
# the built-in plugins"); a developer's shell must not change what a test sees.
BUILT_IN_DATA_FILE_VARIABLES = (TAX_RATES_FILE_ENV, PROMOTIONS_FILE_ENV, GEO_CENTROIDS_FILE_ENV)


@pytest.fixture
def recording_gateway() -> RecordingGateway:
    """A fresh fake payment gateway for method "fake" that records every call."""
    return RecordingGateway()


@pytest.fixture
def oms_plugins() -> list[object]:
    """The plugins `oms_host` runs with. Override this fixture in your conftest.py."""
    return []


@pytest.fixture
def oms_host(oms_plugins: list[object], oms_builtin_data: None) -> PluginHost:
    """A plugin host (plugins.testing.host) with exactly the plugins of `oms_plugins`."""
    return plugin_host(*oms_plugins)


@pytest.fixture
def oms_builtin_data(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The built-in plugins read their packaged data files, with nothing cached from another test."""
    for name in BUILT_IN_DATA_FILE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    load_data_file.cache_clear()
    yield
    load_data_file.cache_clear()
