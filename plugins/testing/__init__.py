"""The plugin author's kit: builders, a plugin host that runs the OMS's own checks, a recording
payment gateway and pytest fixtures (`pytest_plugins = ["plugins.testing.fixtures"]`).

Installed with the OMS, so a plugin package tests against the version it runs on. README.md,
"Testing a plugin", walks through it; plugins/examples/oms-acme/tests uses all of it.
"""

from plugins.testing.builders import (
    NOW,
    ORDER_ID,
    a_customer,
    a_draft,
    a_draft_line,
    a_location,
    a_place_order,
    a_product,
    a_stock_level,
    an_address,
    an_order,
    money,
    shipment_lines,
    sourced_from,
)
from plugins.testing.gateway import PaymentCall, RecordingGateway
from plugins.testing.host import PluginHost, plugin_host

__all__ = [
    "NOW",
    "ORDER_ID",
    "PaymentCall",
    "PluginHost",
    "RecordingGateway",
    "a_customer",
    "a_draft",
    "a_draft_line",
    "a_location",
    "a_place_order",
    "a_product",
    "a_stock_level",
    "an_address",
    "an_order",
    "money",
    "plugin_host",
    "shipment_lines",
    "sourced_from",
]
