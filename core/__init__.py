"""The OMS domain: models, statuses, services, ports and plugin hooks. Pure Python, no I/O."""

import pluggy

PROJECT = "oms"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "hookimpl", "hookspec"]
