"""Imports left `running` short of their total by a line that was recorded and never counted.

A line's outcome is recorded as a marker, then added to its import's counters (two writes, no
transaction: functions/adapters/imports.py). A worker killed between the two leaves the line
marked and uncounted: every redelivery of its message finds the marker and counts nothing, so the
import never reaches its total. This pass finds imports whose file was read whole, still running
short of their total and idle for RECOUNT_IDLE, and recounts each from its line markers: when every
order of the file is marked (none still in flight, none in the dead-letter queue), the counters
are set to what the markers say, conditional on the counters being what the recount read, and the
import completes; a worker's count that comes after that is refused (the import is marked
recounted), so nothing is counted twice. When some order is not marked yet, nothing changes: its
message is still to come (from the queue, or a redrive from the DLQ), and counts it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from core.deadline import TimeUp, never
from core.errors import CandidatesReadPast, dependency_down

# An import whose counters have not moved for this long is recounted: far past a worker's 30 s and
# the splitter's 15 minutes, and past a message's five receives (6 x 30 s visibility each).
RECOUNT_IDLE = timedelta(minutes=30)
# A recount that found orders not marked yet (their messages in the DLQ) is not repeated before
# this, unless the import changed meanwhile: a recount reads one marker per line of the file.
RECOUNT_AGAIN = timedelta(hours=24)


class Recount(StrEnum):
    COMPLETED = "completed"  # every order marked: counters set from the markers, the import ended
    WAITING = "waiting"  # some order not marked yet: its message is still to come
    CUT_SHORT = "cut_short"  # the pass's time ran out: the next run goes on where it stopped
    CHANGED = "changed"  # the import moved while it was recounted: nothing written, read again later


class ImportCounts(ABC):
    """The imports' counters and line markers, as the recount sees them."""

    @abstractmethod
    def stuck(self, now: datetime, idle: timedelta, again: timedelta) -> list[str]:
        """Imports read whole, running short of their total, not updated for `idle`, and not found
        waiting by a recount in the last `again` (unless updated since), oldest first; and those
        a recount counted and died before ending (its counters set, still running)."""

    @abstractmethod
    def recount(self, import_id: str, at: datetime, time_up: TimeUp) -> Recount:
        """Recount the import from its markers (see the module's docstring)."""


@dataclass
class Recounted:
    completed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    cut_short: list[str] = field(default_factory=list)
    # The imports whose own recount raised (a marker or record no version reads), by id: read
    # past, nothing written, recounted again by the next pass.
    failed: dict[str, Exception] = field(default_factory=dict)


class ImportsNotRecounted(CandidatesReadPast):
    """An import recount went on past imports whose own work raised (CandidatesReadPast)."""

    def __init__(self, done: Recounted):
        super().__init__(done, f"{len(done.failed)} import(s) not recounted")


class StuckImportRecount:
    def __init__(
        self,
        counts: ImportCounts,
        clock: Callable[[], datetime],
        *,
        outage: Callable[[Exception], bool] = dependency_down,
    ):
        self._counts = counts
        self._clock = clock
        self._outage = outage  # whether an error says a dependency is down (not the import's own)

    def run(self, done: Recounted | None = None, time_up: TimeUp = never) -> Recounted:
        """One pass over the stuck imports, oldest first. An import whose own recount raises is
        read past, in `done.failed`: stuck imports are taken oldest first, so one that stopped the
        pass would stop it every run; a dependency found down (`outage`) ends the pass there."""
        done = done if done is not None else Recounted()
        for import_id in self._counts.stuck(self._clock(), RECOUNT_IDLE, RECOUNT_AGAIN):
            if time_up():
                break
            try:
                result = self._counts.recount(import_id, self._clock(), time_up)
            except Exception as error:  # any: the import's own, unless it says a dependency is down
                if self._outage(error):
                    raise
                done.failed[import_id] = error
                continue
            if result is Recount.COMPLETED:
                done.completed.append(import_id)
            elif result is Recount.WAITING:
                done.waiting.append(import_id)
            elif result is Recount.CUT_SHORT:
                done.cut_short.append(import_id)
        return done
