"""The OMS's plugin kit provides the fixtures: `oms_host` runs with the plugins `oms_plugins` names."""

import pytest
from oms_acme import courier, pay, tax

from plugins import catalog_price, flat_rate_carrier, flat_rate_shipping, nearest_sourcing, tax_table

pytest_plugins = ["plugins.testing.fixtures"]


@pytest.fixture
def oms_plugins():
    """Acme's plugins next to the built-ins they meet in a deployment."""
    return [tax, courier, pay, catalog_price, tax_table, flat_rate_shipping, nearest_sourcing, flat_rate_carrier]
