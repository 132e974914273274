"""`make import FILE=orders.csv`: upload a file of orders to a stack's imports bucket, follow the
import with a progress bar until it ends, then print its totals and first errors.

It works against the local stack and against a deployed one. The stack comes from the
environment (OMS_API_URL, OMS_IMPORTS_BUCKET, OMS_API_KEY: a key with `orders:read` bound to no
channel, or OMS_ADMIN_API_KEY), or else from the state file `make run` writes (.oms-local.json,
OMS_STATE_FILE). OMS_AWS_ENDPOINT (the local stack's, from the state file) sends the upload there
with test credentials; without it the upload goes to AWS with the default credential chain.
Exit status: 0 when the import completed (with or without errors), 1 when it failed or could not
be followed to its end, 2 for a usage or connection problem or a key that cannot follow the import
(asked of the API before anything is uploaded: see check_key). An interrupted split
(`split_interrupted`) is followed on while Lambda retries it, up to INTERRUPTED_PATIENCE; a poll the
gateway throttles (429) or answers 502, 503 or 504, or that the API does not answer within its
timeout, is made again, for up to BUSY_PATIENCE in a row.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core.import_recount import RECOUNT_IDLE
from core.import_service import DEAD_LETTERED, import_has_ended
from core.imports import import_id_for
from core.log_text import escape_for_log

POLL_SECONDS = 0.5
APPEAR_TIMEOUT = 60.0  # how long the splitter may take to pick the file up
# Lambda retries an interrupted split's event twice, a minute or two apart, and the import runs
# again; one still interrupted after this long is held for an operator (ImportSplitFailureQueue).
INTERRUPTED_PATIENCE = 300.0
# What the gateway answers by itself for a moment (throttled; the function throttled, unavailable or
# late), or no answer within the poll's timeout (a burst of orders keeping the API busy): the import
# goes on, so the poll is made again, for up to BUSY_PATIENCE seconds in a row.
BUSY_STATUSES = frozenset({429, 502, 503, 504})
BUSY_PATIENCE = 60.0
# A file read whole whose counts stop short of its total: an order that failed five times for a
# reason not its own waits in the import DLQ, and the import stays running until it is redriven.
# Followed this long without a count moving (past the 15 minutes a message takes to be parked, and
# the reconciler's recount of a line marked and never counted, RECOUNT_IDLE and its 5-minute pass),
# the following ends saying so rather than polling for ever.
STALLED_PATIENCE = RECOUNT_IDLE.total_seconds() + 600.0


class CliError(Exception):
    pass


def state_file() -> Path:
    """Where `make run` writes what other local tools need (gitignored, removed on exit)."""
    return Path(os.environ.get("OMS_STATE_FILE") or Path(__file__).resolve().parents[1] / ".oms-local.json")


def find_stack() -> dict[str, str | None]:
    """api_url, aws_endpoint (None: AWS itself), bucket, api_key and region of the stack to import into."""
    path, state = state_file(), {}
    if path.exists() and not os.environ.get("OMS_API_URL"):
        try:
            state = json.loads(path.read_text())
        except ValueError as error:
            raise CliError(f"{path} is not JSON ({error}): restart `make run`") from None
    keys = (("OMS_API_KEY", os.environ.get("OMS_API_KEY")), ("OMS_ADMIN_API_KEY", os.environ.get("OMS_ADMIN_API_KEY")),
            (f"{path.name}'s admin_key", state.get("admin_key")))  # fmt: skip
    key_from, api_key = next(((name, value) for name, value in keys if value), (None, None))
    found = {
        "api_url": os.environ.get("OMS_API_URL") or state.get("api_url"),
        "bucket": os.environ.get("OMS_IMPORTS_BUCKET") or (state.get("buckets") or {}).get("ImportsBucket"),
        "api_key": api_key,
    }
    missing = [name for name, value in found.items() if not value]
    if missing == ["api_key"]:
        raise CliError(f"no API key: {KEY_NEEDED}. {create_a_key(str(found['api_url']))}")
    if missing:
        raise CliError(
            f"no stack found ({', '.join(missing)} unknown): start `make run` in another terminal (it "
            f"writes {path.name}), or set OMS_API_URL, OMS_IMPORTS_BUCKET and OMS_API_KEY (a deployed "
            "stack's outputs ApiUrl and ImportsBucketName, and a key with orders:read and no channel)"
        )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or state.get("region")
    return {**found, "aws_endpoint": os.environ.get("OMS_AWS_ENDPOINT") or state.get("aws_endpoint"),
            "region": region, "api_key_from": key_from}  # fmt: skip


KEY_NEEDED = "set OMS_API_KEY to a key with orders:read bound to no channel (imports span channels)"


def create_a_key(api_url: str) -> str:
    """How an admin issues a key `make import` can follow imports with (README, Bulk import)."""
    return (
        f'An admin creates one with: curl -sS -X POST {api_url}/api-keys -H "Authorization: Bearer $ADMIN_KEY" '
        '-H "Content-Type: application/json" -d \'{"name": "importer", "scopes": ["orders:read"]}\''
    )


def check_key(stack: dict[str, str | None]) -> None:
    """Asks the API, before anything is uploaded, whether the key can follow an import: two reads
    that write nothing. GET /imports is 401 to a key the stack does not know and 403 to one without
    orders:read, and a key bound to a channel is shown no imports (an empty page, as a stack with
    none); GET /orders for a channel no key is bound to is 403 to a channel's key only. Uploaded
    first, the file was imported by a command that then exited 1 on the same answers."""
    session = api_session(stack)
    key, api_url = stack["api_key_from"], stack["api_url"]
    channel = f"make-import-{secrets.token_hex(4)}"
    for path, scope in (("/imports?limit=1", "orders:read"), (f"/orders?limit=1&channel={channel}", None)):
        response = session.get(f"{api_url}{path}", timeout=10)
        if response.status_code == 200:
            continue
        if response.status_code == 401:
            wrong = f"the API refused the key in {key} (401): not a key of this stack, or revoked"
        elif response.status_code == 403 and scope:
            wrong = f"the key in {key} lacks the scope {scope} (403)"
        elif response.status_code == 403:
            wrong = f"the key in {key} is bound to a channel, and imports are shown only to keys bound to no channel"
        else:
            raise CliError(
                f"GET {path.split('?')[0]} answered {response.status_code}: {response.text[:300]} (nothing was "
                "uploaded: try again)"
            )
        raise CliError(f"{wrong}; nothing was uploaded: {KEY_NEEDED}. {create_a_key(str(api_url))}")


def api_session(stack: dict[str, str | None]) -> requests.Session:
    """A session that asks the stack's API with its key (no proxy for the local stack)."""
    session = requests.Session()
    session.trust_env = not str(stack["api_url"]).startswith(("http://127.0.0.1", "http://localhost"))
    session.headers["Authorization"] = f"Bearer {stack['api_key']}"
    return session


def upload(stack: dict[str, str | None], file: Path) -> tuple[str, str]:
    """Put the file under incoming/ (streamed from disk; multipart when large) and return its key
    and the import id the splitter will give it. The key is new on every run, so importing the
    same file twice is two imports (the second one finds only duplicates)."""
    import boto3

    local = {"endpoint_url": stack["aws_endpoint"], "aws_access_key_id": "local", "aws_secret_access_key": "local"}
    s3 = boto3.client("s3", region_name=stack["region"], **(local if stack["aws_endpoint"] else {}))
    key = f"incoming/{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}/{file.name}"
    bucket = str(stack["bucket"])
    s3.upload_file(str(file), bucket, key)
    head = s3.head_object(Bucket=bucket, Key=key)
    version = head.get("VersionId")
    return key, import_id_for(bucket, key, version if version not in (None, "", "null") else head["ETag"])


def follow(
    stack: dict[str, str | None],
    import_id: str,
    console: Console,
    timeout: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Polls GET /imports/{id} until the import ends, with a progress bar; returns its report."""
    session = api_session(stack)
    started = clock()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("orders"),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("waiting for the splitter", total=None)
        interrupted_at: float | None = None
        busy_since: float | None = None
        counts: tuple[int, int] | None = None  # (counted, total) of a file read whole, and since when
        counted_since = 0.0
        while True:
            try:
                response: requests.Response | None = session.get(f"{stack['api_url']}/imports/{import_id}", timeout=10)
            except (requests.Timeout, requests.ConnectionError) as error:
                response, unanswered = None, error  # an API too busy to answer in time is busy too
            elapsed = clock() - started
            if response is None or response.status_code in BUSY_STATUSES:
                busy_since = elapsed if busy_since is None else busy_since
            else:
                busy_since = None
            patient = busy_since is not None and elapsed - busy_since < BUSY_PATIENCE
            if response is None:
                if not patient:
                    raise CliError(
                        f"GET /imports/{import_id} had no answer for {BUSY_PATIENCE:.0f} s: {unanswered} "
                        "(the file was uploaded and may be importing)"
                    )
                time.sleep(POLL_SECONDS)
                continue
            if response.status_code not in (200, 404) and not patient:
                raise CliError(f"GET /imports/{import_id} answered {response.status_code}: {response.text[:300]}")
            if response.status_code == 404 and elapsed > APPEAR_TIMEOUT:
                # A key bound to a channel is answered 404 for every import (one import spans
                # channels) while the file is split and its orders placed all the same.
                raise CliError(
                    f"import {import_id} did not start within {APPEAR_TIMEOUT:.0f} s: locally, is `make run` "
                    "running with its event sources on (OMS_EVENT_SOURCES)? On AWS, see the import runbooks. "
                    "Or the API key is bound to a channel, and imports are shown only to keys bound to none "
                    "(the file was uploaded and may be importing): set OMS_API_KEY to such a key"
                )
            if response.status_code == 200:
                report = response.json()
                done = report["imported"] + report["duplicates"] + report["failed"]
                reading = "" if report["total_final"] else " (reading the file)"
                progress.update(
                    task,
                    description=f"{import_id} {report['status']}{reading}",
                    total=max(report["total"], done) if report["total_final"] or report["total"] else None,
                    completed=done,
                )
                failure = next((e["code"] for e in report.get("errors") or [] if e.get("line") is None), None)
                if import_has_ended(report["status"], failure):
                    return report
                if report["status"] != "failed":
                    interrupted_at = None
                elif interrupted_at is None:
                    interrupted_at = elapsed
                if interrupted_at is not None and elapsed - interrupted_at >= INTERRUPTED_PATIENCE:
                    return report
                parked = sum(1 for error in report.get("errors") or [] if error.get("code") == DEAD_LETTERED)
                if not report["total_final"] or report["status"] != "running":
                    counts = None
                elif parked and done + parked >= report["total"]:
                    return report  # every order not counted waits in the dead-letter queue (see stalled())
                elif counts != (done, report["total"]):
                    counts, counted_since = (done, report["total"]), elapsed
                elif elapsed - counted_since >= STALLED_PATIENCE:
                    return report  # stalled (see stalled())
            if timeout is not None and elapsed > timeout:
                raise CliError(f"gave up following import {import_id} after {timeout:.0f} s (it goes on)")
            time.sleep(POLL_SECONDS)


def stalled(stack: dict[str, str | None], report: dict[str, Any]) -> str:
    """What `make import` says of an import it stopped following short of its total."""
    done = report["imported"] + report["duplicates"] + report["failed"]
    parked = sum(1 for error in report.get("errors") or [] if error.get("code") == DEAD_LETTERED)
    if done >= report["total"]:
        # Every order counted, the import not marked completed: the write that counts its last order
        # and the one that completes it are two, and a worker that died between them completes it
        # when its message is delivered again.
        return (
            f"import {report['id']} has counted all {report['total']} of its orders and is not marked "
            f"completed yet: it is once the last order's message is delivered again (GET {stack['api_url']}"
            f"/imports/{report['id']})"
        )
    where = (
        f"the other {report['total'] - done} wait in the import dead-letter queue ({DEAD_LETTERED} above)"
        if parked and done + parked >= report["total"]
        else f"none counted for {STALLED_PATIENCE / 60:.0f} minutes: the rest most likely wait in the import "
        "dead-letter queue"
    )
    return (
        f"import {report['id']} has counted {done} of its {report['total']} orders, {where} "
        "(ImportDeadLetterQueue: orders that failed 5 times for a reason that is not theirs, such as a "
        "broken plugin; the worker's log names each by import_id and line). Fix the cause and redrive "
        f"them: the import completes once they are counted (GET {stack['api_url']}/imports/{report['id']})"
    )


def summary(report: dict[str, Any], shown_errors: int) -> list[str]:
    """The report's totals and first errors as printed. An error's external_id and message, and the
    source's key, are the file's (or its uploader's) own text: a control character in them is shown
    escaped, never sent to the terminal, which would obey an escape sequence (clear the screen,
    retitle the window, write the clipboard)."""
    lines = [
        f"import {report['id']}: {report['status']} - {report['total']} orders: {report['imported']} imported, "
        f"{report['duplicates']} duplicates, {report['failed']} failed",
        f"  source {escape_for_log(report['source'])}",
    ]
    errors = report.get("errors") or []
    if errors:
        # `failed` counts the failed lines; an import that failed as a whole lists its file's error
        # too, and one with orders parked in the dead-letter queue lists them, not counted.
        listed = report["failed"] + sum(
            1 for error in errors if error.get("line") is None or error.get("code") == DEAD_LETTERED
        )
        lines.append(f"first errors ({min(len(errors), shown_errors)} of {listed}):")
        for error in errors[:shown_errors]:
            where = f"line {error['line']}" if error.get("line") is not None else "file"
            external_id = escape_for_log(error.get("external_id") or "-")
            lines.append(f"  {where:<10} {external_id:<20} {error['code']:<22} {escape_for_log(error['message'])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make import FILE=", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="a .csv or .jsonl file of orders")
    parser.add_argument("--errors", type=int, default=10, help="how many errors to print (default 10)")
    parser.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds")
    args = parser.parse_args(argv)
    # No markup: error messages name fields like lines[0].sku, which rich would take for tags.
    console = Console(highlight=False, markup=False)
    err = Console(stderr=True, highlight=False, markup=False)
    if not args.file.is_file():
        err.print(f"no such file: {args.file}")
        return 2
    try:
        stack = find_stack()
    except CliError as error:
        err.print(str(error), soft_wrap=True)
        return 2
    try:
        check_key(stack)
    except CliError as error:
        err.print(str(error), soft_wrap=True)  # unwrapped: its curl is copied whole
        return 2
    except requests.RequestException as error:
        err.print(f"cannot reach the API at {stack['api_url']} (nothing was uploaded): {error}", soft_wrap=True)
        return 2
    try:
        key, import_id = upload(stack, args.file)
    except Exception as error:  # botocore's connection errors and the like: say where it tried
        err.print(f"cannot upload to s3://{stack['bucket']} ({stack['aws_endpoint'] or 'AWS'}): {error}")
        return 2
    console.print(f"uploaded {args.file} to s3://{stack['bucket']}/{key}", soft_wrap=True)
    try:
        report = follow(stack, import_id, console, args.timeout)
    except CliError as error:
        err.print(str(error))
        return 1
    except requests.RequestException as error:
        err.print(f"cannot reach the API at {stack['api_url']}: {error}")
        return 2
    for line in summary(report, args.errors):
        console.print(line, soft_wrap=True)
    console.print(f"  GET {stack['api_url']}/imports/{import_id} has the whole report", soft_wrap=True)
    if report["status"] == "running":
        err.print(stalled(stack, report), soft_wrap=True)
    return 0 if report["status"] in ("completed", "completed_with_errors") else 1


if __name__ == "__main__":
    sys.exit(main())
