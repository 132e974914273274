"""The OMS domain: models, statuses, services, ports and plugin hooks. Pure Python, no I/O."""

import os
from collections.abc import Iterable, Mapping

import pluggy

PROJECT = "oms"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

PLUGIN_SETTINGS_PREFIX = "OMS_PLUGIN_"


def plugin_settings(name: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings of the plugin whose entry-point name is `name`: every `OMS_PLUGIN_<NAME>_<KEY>`
    variable (NAME upper-cased), as {key in lower case: value}. Empty values are left out, so a
    template parameter left at "" means "not set".

    plugin_settings("tax_table") reads OMS_PLUGIN_TAX_TABLE_RATES_FILE as {"rates_file": ...}."""
    prefix = f"{PLUGIN_SETTINGS_PREFIX}{name.upper()}_"
    source = os.environ if environ is None else environ
    # Keys first, then the values of the few that match: the pricing plugins read their settings
    # on every call (the tax table once a line). os.environ decodes every key and value it yields,
    # through a Python call each: on POSIX its keys are matched as the bytes it holds them as, and
    # only a match is decoded (a tenth of the time for the ~80 variables of a Lambda function).
    variables = _named(source, prefix)
    return {
        variable[len(prefix) :].lower(): value
        for variable in variables
        if variable.startswith(prefix) and len(variable) > len(prefix) and (value := source[variable].strip())
    }


def _named(source: Mapping[str, str], prefix: str) -> Iterable[str]:
    """The names in `source` that may start with `prefix`: all of them, but for the process's own
    environment on POSIX, where os.environ keeps the names as bytes (encoded as os.fsencode
    encodes them, so a name starts with `prefix` exactly when its bytes start with prefix's)."""
    held = getattr(source, "_data", None) if source is os.environ and os.name == "posix" else None
    if not isinstance(held, dict):
        return source
    encoded = os.fsencode(prefix)
    return [os.fsdecode(raw) for raw in held if raw.startswith(encoded)]


__all__ = ["PROJECT", "hookimpl", "hookspec", "plugin_settings"]
