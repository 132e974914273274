"""The OMS domain: models, statuses, services, ports and plugin hooks. Pure Python, no I/O, save
plugin_settings' read of the environment (the plugin API: a plugin's settings are its variables)."""

import os
import re
from collections.abc import Mapping

import pluggy

PROJECT = "oms"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

PLUGIN_SETTINGS_PREFIX = "OMS_PLUGIN_"
# What an environment variable's name may not hold (Lambda takes [a-zA-Z][a-zA-Z0-9_]+), which an
# entry-point name may (`acme-pay`, `acme.pay`): read as `_`.
_NOT_IN_A_VARIABLE_NAME = re.compile(r"[^A-Za-z0-9_]")


def plugin_settings_prefix(name: str) -> str:
    """What the settings variables of the plugin whose entry-point name is `name` start with:
    `OMS_PLUGIN_<NAME>_`, NAME upper-cased, `-` and `.` as `_` (see plugin_settings)."""
    return f"{PLUGIN_SETTINGS_PREFIX}{_NOT_IN_A_VARIABLE_NAME.sub('_', name).upper()}_"


def plugin_settings(name: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings of the plugin whose entry-point name is `name`: every `OMS_PLUGIN_<NAME>_<KEY>`
    variable (NAME upper-cased, each character a variable's name may not hold, `-` or `.`, as `_`:
    Lambda refuses such names), as {key in lower case: value}. Empty values are left out, so a
    template parameter left at "" means "not set".

    plugin_settings("tax_table") reads OMS_PLUGIN_TAX_TABLE_RATES_FILE as {"rates_file": ...}.

    The one read of core's outside its arguments, on purpose: it is the documented plugin API
    (README "Settings"), which a plugin calls from its hooks; `environ` is for tests."""
    prefix = plugin_settings_prefix(name)
    source = os.environ if environ is None else environ
    # Keys first, then the values of the few that match: os.environ decodes every value it
    # yields, and the pricing plugins read their settings on every call (~100 µs an order).
    return {
        variable[len(prefix) :].lower(): value
        for variable in source
        if variable.startswith(prefix) and len(variable) > len(prefix) and (value := source[variable].strip())
    }


__all__ = ["PROJECT", "hookimpl", "hookspec", "plugin_settings"]
