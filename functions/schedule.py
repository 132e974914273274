"""A scheduled function's run number, so each run can start with the next part of its work.

The number is taken from the schedule's `time` in EventBridge's event (a cold start keeps the
turn) and the period the function is actually run on, its OMS_SCHEDULE_MINUTES_<FUNCTION>: the
template sets it from the same Mappings entry as the function's Schedule rate, so the two cannot
disagree; under `make run` the local runtime runs a schedule more often (OMS_JEOPARDY_SCAN_SECONDS,
OMS_LOCAL_SCHEDULE_SECONDS) and sets the variable to the period it uses, so there too each run
starts with the next part instead of the same one for every run of the template's period.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any


def period_variable(function_logical_id: str) -> str:
    """The variable that holds the minutes between the runs of the function's schedule (template.yaml;
    the local runtime's own period under `make run`)."""
    return f"OMS_SCHEDULE_MINUTES_{function_logical_id.upper()}"


def run_number(event: dict[str, Any], function_logical_id: str) -> int:
    """This run's number: the next for each scheduled run; 0 when the event has no time (a run by hand).
    The period's variable unset or not a positive number of minutes is a ValueError naming it."""
    try:
        at = datetime.fromisoformat(event["time"])
    except (KeyError, TypeError, ValueError):
        return 0
    from functions.bootstrap import _number, _required, _within  # the settings' own checks

    name = period_variable(function_logical_id)
    _required(os.environ.get(name, "").strip(), name)
    minutes = _within(_number(name, 0), name, "minutes")
    return int(at.timestamp() // (minutes * 60))
