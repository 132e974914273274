"""The reconciler's import recount reads past an import whose own recount raises (a line marker no
version of the code reads): the imports behind it are recounted all the same, and it is named for a
person. Stuck imports are taken oldest first, so one that stopped the pass stopped it every run."""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import csv_file, csv_row
from tests.integration.import_support import ImportAws, report, split, worker
from tests.integration.test_import_worker import (  # noqa: F401 (a fixture)
    kill_between_marking_and_counting,
    recount,
    stack,
)


def unreadable_marker(import_id: str, line: int) -> None:
    """The line's marker made one no version of the code reads (written by a bug, or by hand)."""
    from functions.adapters.imports import _marker_id
    from functions.import_worker.app import container

    ledger = container().import_ledger
    ledger._client.update_item(
        TableName=ledger._markers,
        Key={"id": {"S": _marker_id(import_id, line)}},
        UpdateExpression="SET outcome = :outcome",
        ExpressionAttributeValues={":outcome": {"S": "not an outcome"}},
    )


def test_an_import_whose_recount_raises_keeps_no_stuck_import_behind_it_short(
    stack: ImportAws,  # noqa: F811 (a fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: the recount raised on the oldest stuck import every run; the one behind it stayed running.
    kill_between_marking_and_counting(monkeypatch, {2})  # ext-1, the first file's line 2
    poison = split(stack, "incoming/first.csv", csv_file(csv_row("ext-1"), csv_row("ext-2")))
    stack.drain(worker)
    kill_between_marking_and_counting(monkeypatch, {2})  # ext-3, the second file's
    short = split(stack, "incoming/second.csv", csv_file(csv_row("ext-3"), csv_row("ext-4")))
    stack.drain(worker)
    assert [report(i)["status"] for i in (poison, short)] == ["running", "running"]
    unreadable_marker(poison, 2)

    done = recount()

    assert done.completed == [short] and list(done.failed) == [poison]
    assert report(short)["status"] == "completed"
    assert report(poison)["status"] == "running"  # left for a person: nothing written


def test_the_reconciler_logs_and_counts_an_import_its_recount_failed_on(
    stack: ImportAws,  # noqa: F811 (a fixture)
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from datetime import timedelta

    from core.deadline import never
    from core.models import utc_now
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    kill_between_marking_and_counting(monkeypatch, {2})
    poison = split(stack, "incoming/first.csv", csv_file(csv_row("ext-1"), csv_row("ext-2")))
    stack.drain(worker)
    unreadable_marker(poison, 2)
    later = utc_now() + timedelta(minutes=31)

    def isolated(name: str, run: Any, nothing: Any) -> Any:
        return run()

    with app.container.override(bootstrap(Config.from_env(), clock=lambda: later)):
        done = app.recount_imports(app.container, isolated, never)

    assert list(done.failed) == [poison]
    [logged] = [r for r in caplog.records if r.getMessage().startswith("import not recounted")]
    assert (logged.levelname, logged.import_id) == ("ERROR", poison)


def test_a_run_whose_import_recount_failed_fails_once_its_passes_are_done(
    stack: ImportAws,  # noqa: F811 (a fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # README: an import whose own recount raises is read past, "the run fails once done
    # (ReconcilerErrorsAlarm)": through the handler, not only the pass's report above.
    from datetime import timedelta

    from core.import_recount import ImportsNotRecounted
    from core.models import utc_now
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app
    from tests.integration.test_reconciler import Context

    kill_between_marking_and_counting(monkeypatch, {2})
    poison = split(stack, "incoming/first.csv", csv_file(csv_row("ext-1"), csv_row("ext-2")))
    stack.drain(worker)
    unreadable_marker(poison, 2)
    later = utc_now() + timedelta(minutes=31)

    scheduled = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
    with (
        app.container.override(bootstrap(Config.from_env(), clock=lambda: later)),
        pytest.raises(ImportsNotRecounted) as failed,
    ):
        app.lambda_handler(scheduled, Context())

    assert list(failed.value.failed) == [poison]
