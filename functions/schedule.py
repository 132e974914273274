"""A scheduled function's run number, so each run can start with the next part of its work.

The number is taken from the schedule's `time` in EventBridge's event (a cold start keeps the
turn) and the period the function is actually run on: the template's rate on AWS; under `make
run` the local runtime runs a schedule more often (OMS_JEOPARDY_SCAN_SECONDS,
OMS_LOCAL_SCHEDULE_SECONDS) and sets the function's period variable to the period it uses, so
there too each run starts with the next part instead of the same one for every run of the
template's period.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any


def period_variable(function_logical_id: str) -> str:
    """The variable the local runtime sets to the seconds between the runs of the function's
    schedule (unset on AWS, where the template's rate is the period)."""
    return f"OMS_SCHEDULE_SECONDS_{function_logical_id.upper()}"


def run_number(event: dict[str, Any], function_logical_id: str, template_minutes: int) -> int:
    """This run's number: the next for each scheduled run; 0 when the event has no time (a run by hand)."""
    try:
        at = datetime.fromisoformat(event["time"])
    except (KeyError, TypeError, ValueError):
        return 0
    period = float(os.environ.get(period_variable(function_logical_id)) or template_minutes * 60)
    return int(at.timestamp() // period)
