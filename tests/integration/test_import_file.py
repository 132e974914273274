"""The import tool (`make import`, infra/import_file.py) pointed at a deployed stack: the upload goes
to AWS with the default credential chain, not to a local endpoint with test credentials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
import pytest

from core.imports import import_id_for
from infra import import_file

BUCKET = "oms-prod-imports"
DEPLOYED = {
    "OMS_API_URL": "https://abc123.execute-api.eu-west-1.amazonaws.com/v1",
    "OMS_IMPORTS_BUCKET": BUCKET,
    "OMS_API_KEY": "oms_ops_key",
}


@pytest.fixture
def deployed(aws: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A versioned imports bucket (as the template declares it) and the environment an operator
    sets from the stack's outputs; a state file from a local stack lies around too."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    state = tmp_path / ".oms-local.json"
    state.write_text('{"api_url": "http://127.0.0.1:8080", "aws_endpoint": "http://127.0.0.1:4566"}')
    for name in ("OMS_AWS_ENDPOINT", "OMS_ADMIN_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**DEPLOYED, "OMS_STATE_FILE": str(state)}.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def test_a_deployed_stack_named_in_the_environment_wins_over_a_local_state_file(deployed: Path):
    stack = import_file.find_stack()

    assert stack["api_url"] == DEPLOYED["OMS_API_URL"]
    assert stack["aws_endpoint"] is None  # the local stack's endpoint is not used
    assert (stack["bucket"], stack["api_key"]) == (BUCKET, "oms_ops_key")


def test_the_upload_to_a_deployed_stack_uses_the_default_credentials_and_names_the_import(
    deployed: Path, monkeypatch: pytest.MonkeyPatch
):
    made: list[dict[str, Any]] = []
    real_client = boto3.client
    monkeypatch.setattr(boto3, "client", lambda *args, **kwargs: made.append(kwargs) or real_client(*args, **kwargs))
    orders = deployed / "orders.csv"
    orders.write_text("channel,external_id,sku,quantity\nweb,w-1,TSHIRT-BLK-M,1\n")

    key, import_id = import_file.upload(import_file.find_stack(), orders)

    assert made == [{"region_name": "us-east-1"}]  # no endpoint, no test credentials
    s3 = real_client("s3", region_name="us-east-1")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == orders.read_bytes()
    assert key.startswith("incoming/") and key.endswith("/orders.csv")
    # The id the splitter gives an object in a versioned bucket: GET /imports/{id} finds it.
    assert import_id == import_id_for(BUCKET, key, s3.head_object(Bucket=BUCKET, Key=key)["VersionId"])


class Reports:
    """GET /imports/{id} answering each poll with the next report (the last one again at the end)."""

    def __init__(self, *reports: dict[str, Any] | int | Exception):
        self.reports = list(reports)
        self.polls = 0
        self.headers: dict[str, str] = {}
        self.trust_env = True

    def get(self, url: str, timeout: float) -> Any:
        report = self.reports[min(self.polls, len(self.reports) - 1)]
        self.polls += 1
        if isinstance(report, Exception):  # no answer at all: the read timed out, the connection failed
            raise report
        if isinstance(report, int):  # the gateway's own answer: throttled, or the function unavailable
            return type("Answer", (), {"status_code": report, "json": lambda _: {}, "text": '{"message": "busy"}'})()
        return type("Answer", (), {"status_code": 200, "json": lambda _: report, "text": ""})()


def a_report(status: str, *errors: tuple[int | None, str], imported: int = 0) -> dict[str, Any]:
    return {
        "id": "imp_" + "a" * 24, "source": "s3://b/incoming/orders.csv", "status": status, "total": 2,
        "total_final": status != "failed", "imported": imported, "duplicates": 0, "failed": 0,
        "errors": [{"line": line, "external_id": None, "code": code, "message": code} for line, code in errors],
    }  # fmt: skip


def follow_reports(monkeypatch: pytest.MonkeyPatch, reports: Reports) -> dict[str, Any]:
    from rich.console import Console

    monkeypatch.setattr(import_file.requests, "Session", lambda: reports)
    monkeypatch.setattr(import_file, "POLL_SECONDS", 0)
    stack = {"api_url": "https://api.example.com/v1", "api_key": "k"}
    return import_file.follow(stack, "imp_" + "a" * 24, Console(file=open(os.devnull, "w")), timeout=None)


def test_an_interrupted_split_is_followed_until_its_retry_completes_the_import(monkeypatch: pytest.MonkeyPatch):
    """`split_interrupted` is no end: Lambda retries the file's event a minute later and the import
    resumes. `make import` reported it failed (exit 1) while its orders went on being imported."""
    interrupted = a_report("failed", (None, "split_interrupted"))
    reports = Reports(
        a_report("running"), interrupted, interrupted, a_report("running"), a_report("completed", imported=2)
    )

    assert follow_reports(monkeypatch, reports)["status"] == "completed"
    assert reports.polls == 5


def test_a_poll_throttled_or_answered_by_a_function_briefly_unavailable_is_polled_again(monkeypatch):
    """A 429 or a 502/503/504 is the gateway's, not the import's: `make import` gave up (exit 1) on the
    first one while the import went on, and a long import is polled hundreds of times."""
    reports = Reports(a_report("running"), 429, 503, 502, 504, a_report("completed", imported=2))

    assert follow_reports(monkeypatch, reports)["status"] == "completed"
    assert reports.polls == 6


def test_a_poll_the_busy_api_does_not_answer_within_its_timeout_is_polled_again(monkeypatch):
    """A flash sale's 30 storefront clients kept the local API busy past the poll's 10 s: `make
    import` printed "cannot reach the API ... Read timed out" and exited 2, the status of a file
    never uploaded, while its 40 orders went on being imported."""
    slow = import_file.requests.ReadTimeout("Read timed out. (read timeout=10)")
    reports = Reports(a_report("running"), slow, import_file.requests.ConnectionError("reset"), slow,
                      a_report("completed", imported=2))  # fmt: skip

    assert follow_reports(monkeypatch, reports)["status"] == "completed"
    assert reports.polls == 5


def test_an_api_that_stays_unreachable_ends_the_following_saying_the_file_was_uploaded(monkeypatch):
    monkeypatch.setattr(import_file, "BUSY_PATIENCE", 0)
    with pytest.raises(import_file.CliError, match=r"Read timed out.*uploaded"):
        follow_reports(monkeypatch, Reports(a_report("running"), import_file.requests.ReadTimeout("Read timed out")))


def test_a_gateway_that_keeps_failing_the_polls_ends_the_following_saying_so(monkeypatch):
    monkeypatch.setattr(import_file, "BUSY_PATIENCE", 0)
    with pytest.raises(import_file.CliError, match="answered 503"):
        follow_reports(monkeypatch, Reports(a_report("running"), 503))


def test_a_split_interrupted_for_good_or_a_file_that_cannot_be_imported_ends_the_following(monkeypatch):
    monkeypatch.setattr(import_file, "INTERRUPTED_PATIENCE", 0)
    held = Reports(a_report("failed", (None, "split_interrupted")))
    assert follow_reports(monkeypatch, held)["status"] == "failed" and held.polls == 1

    unknown = Reports(a_report("failed", (None, "unknown_format")))
    assert follow_reports(monkeypatch, unknown)["status"] == "failed" and unknown.polls == 1


def test_the_summary_of_a_failed_import_counts_its_file_error_among_its_errors():
    """A split interrupted after two lines had failed, whose retry found the file gone: three errors
    listed, and `make import` printed "first errors (3 of 2)"."""
    report = {
        **a_report("failed", (None, "file_unavailable"), (3, "invalid_number"), (5, "invalid_number")),
        "failed": 2,
    }

    assert "first errors (3 of 3):" in import_file.summary(report, 10)
    assert "first errors (2 of 3):" in import_file.summary(report, 2)


def test_the_summary_shows_a_file_s_control_characters_escaped_never_sent_to_the_terminal():
    """An error's external_id and message are the file's own text: a merchant's row naming its
    order "\\x1b]52;c;...\\x07" (a terminal's clipboard write) or "\\x1b[2J" (clear the screen) was
    printed as it was, and the operator's terminal obeyed it."""
    report = a_report("completed_with_errors", (2, "invalid_number"), (3, "order_reopened"))
    report["errors"][0]["external_id"] = "web-1\x1b]52;c;cm0gLXJmIH4K\x07"
    report["errors"][1]["message"] = "this row reopens order web/b\x1b[2J\u202e, closed earlier"
    report["source"] = "s3://b/incoming/\x1b[31morders.csv"

    text = "\n".join(import_file.summary(report, 10))

    assert not any(character in text for character in "\x1b\x07\u202e")
    assert "web-1\\x1b]52;c;cm0gLXJmIH4K\\x07" in text and "web/b\\x1b[2J\\u202e, closed" in text
    assert "s3://b/incoming/\\x1b[31morders.csv" in text


def short_report(done: int) -> dict[str, Any]:
    """A running import read whole: `done` of its 3 orders counted."""
    return {**a_report("running", imported=done), "total": 3, "total_final": True}


def follow_polled_a_minute_apart(monkeypatch: pytest.MonkeyPatch, reports: Reports) -> dict[str, Any]:
    import io

    from rich.console import Console

    monkeypatch.setattr(import_file.requests, "Session", lambda: reports)
    monkeypatch.setattr(import_file, "POLL_SECONDS", 0)
    minutes = iter(range(0, 1_000_000, 60))
    stack = {"api_url": "https://api.example.com/v1", "api_key": "k"}
    console = Console(file=io.StringIO())
    return import_file.follow(stack, "imp_" + "a" * 24, console, timeout=None, clock=lambda: next(minutes))


def test_an_import_whose_counts_stop_short_of_its_total_ends_the_following_saying_where_the_rest_wait(
    monkeypatch: pytest.MonkeyPatch,
):
    """An order that failed five times for a reason not its own waits in the import DLQ, and its
    import stays running one short until it is redriven: `make import` polled it for ever."""
    stalled = Reports(short_report(1), short_report(2), short_report(2))

    report = follow_polled_a_minute_apart(monkeypatch, stalled)

    # Counted 2 of 3 at the second poll, nothing since: given up once STALLED_PATIENCE had passed.
    assert report["status"] == "running" and report["imported"] == 2
    assert stalled.polls == 2 + import_file.STALLED_PATIENCE // 60
    said = import_file.stalled({"api_url": "https://api.example.com/v1"}, report)
    assert "counted 2 of its 3 orders" in said and "dead-letter queue" in said

    # Counting on, 30 minutes between two counts: followed to its end.
    moving = Reports(*(short_report(n // 30) for n in range(90)), a_report("completed", imported=3))
    assert follow_polled_a_minute_apart(monkeypatch, moving)["status"] == "completed"


def test_an_import_whose_uncounted_orders_all_wait_in_the_dlq_ends_the_following_at_once(monkeypatch):
    parked = short_report(2)
    parked["errors"] = [{"line": 4, "external_id": "ext-3", "code": "dead_lettered", "message": "waits in the DLQ"}]
    reports = Reports(short_report(1), parked)

    report = follow_polled_a_minute_apart(monkeypatch, reports)

    assert reports.polls == 2 and report["status"] == "running"
    said = import_file.stalled({"api_url": "https://api.example.com/v1"}, report)
    assert "counted 2 of its 3 orders, the other 1 wait in the import dead-letter queue" in said
    # Listed, not counted among the failed: "first errors (1 of 0)" otherwise.
    assert "first errors (1 of 1):" in import_file.summary(report, 10)


def test_an_import_counted_whole_and_not_yet_marked_completed_is_followed_to_its_end(monkeypatch):
    """The last line's count and the import's completion are two writes (whoever sees the total
    reached completes it): a poll between them read `running` with every order counted, and
    `make import` stopped there, said "the other 0 wait in the import dead-letter queue" and exited 1
    (seen on make run with events/orders-sample.jsonl) while the import completed a moment later."""
    counted = short_report(3)
    reports = Reports(short_report(1), counted, counted, {**counted, "status": "completed"})

    report = follow_polled_a_minute_apart(monkeypatch, reports)

    assert report["status"] == "completed" and reports.polls == 4
    # Should it stay so (a worker killed between the two writes, until its message comes again),
    # the following ends after STALLED_PATIENCE saying so, never that orders wait in the DLQ.
    stuck = Reports(short_report(1), counted)
    assert follow_polled_a_minute_apart(monkeypatch, stuck)["status"] == "running"
    said = import_file.stalled({"api_url": "https://api.example.com/v1"}, counted)
    assert "counted all 3 of its orders and is not marked completed yet" in said and "dead-letter" not in said


def test_an_import_the_key_cannot_see_ends_the_following_naming_a_key_bound_to_a_channel(monkeypatch):
    """Imports are visible only to keys bound to no channel: followed with a channel's key (OMS_API_KEY
    of a storefront), GET /imports/{id} answered 404 while the file was split and its orders placed,
    and `make import` said after a minute only that the stack's event sources might be off."""
    with pytest.raises(import_file.CliError) as raised:
        follow_polled_a_minute_apart(monkeypatch, Reports(404))

    said = str(raised.value)
    assert "did not start within 60 s" in said and "OMS_EVENT_SOURCES" in said
    assert "bound to a channel" in said and "OMS_API_KEY" in said


def test_the_cli_says_what_to_do_when_no_stack_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    # tests/e2e/test_bulk_import.py runs the CLI against a running stack, as `make import` and as
    # `python -m infra.import_file`; with none named nor written down, it says how to start one.
    for name in [name for name in os.environ if name.startswith("OMS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMS_STATE_FILE", str(tmp_path / "missing.json"))

    assert import_file.main([str(Path(__file__).resolve().parents[2] / "events" / "orders-sample.csv")]) == 2
    assert "make run" in capsys.readouterr().err
