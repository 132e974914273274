"""`make run`: the whole stack in one process, no Docker, no AWS account, until Ctrl-C."""

# ruff: noqa: E402 (the imports after the handlers below)
from __future__ import annotations

import signal
import threading

# Taken before anything else loads: the stack's modules (moto's among them) take about half a
# second to import, and a Ctrl-C then was a KeyboardInterrupt traceback. main() reads it first.
INTERRUPTED = threading.Event()
if __name__ == "__main__":
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, lambda *_: INTERRUPTED.set())

import json
import logging
import os
import shlex
import sys
import time
from contextlib import suppress
from pathlib import Path

from infra.import_file import state_file
from infra.local.seed import SeedError
from infra.local.stack import EmbeddedStack
from infra.local.template import REGION

FIRST_ORDER = {
    "channel": "web", "external_id": "web-1001", "currency": "USD",
    "customer": {"id": "cus_1", "email": "ada@example.com", "name": "Ada Lovelace"},
    "lines": [{"sku": "TSHIRT-BLK-M", "quantity": 2}],
    "shipping_address": {"name": "Ada Lovelace", "line1": "1 Main St", "city": "Springfield", "region": "CA",
                         "postal_code": "94105", "country": "US"},
    "payment": {"method": "test", "token": "tok_approve"},
}  # fmt: skip


def write_state(stack: EmbeddedStack) -> Path:
    """What other local tools need (make import): addresses, names, the admin key."""
    path = state_file()
    state = {"api_url": stack.api_url, "aws_endpoint": stack.aws_endpoint, "region": "us-east-1",
             "admin_key": stack.admin_key, "stack_name": stack.stack_name, "buckets": stack.bucket_names,
             "queues": stack.queue_urls, "tables": stack.table_names, "pid": os.getpid()}  # fmt: skip
    # It holds the admin key: created readable by its owner alone (never for a moment by others,
    # as a write then a chmod left it), and a file left by an earlier run is made so too.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(json.dumps(state, indent=2) + "\n")
    path.chmod(0o600)
    return path


def remove_state(path: Path) -> None:
    with suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def banner(stack: EmbeddedStack, started: float) -> str:
    from core.ids import order_id_for  # pure: the id the API derives from channel + external_id

    auth = f'-H "Authorization: Bearer {stack.admin_key}"'
    body = shlex.quote(json.dumps(FIRST_ORDER, separators=(",", ":")))
    order_id = order_id_for(FIRST_ORDER["channel"], FIRST_ORDER["external_id"])
    aws = f"AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test aws --endpoint-url {stack.aws_endpoint} --region {REGION}"
    routes = len(stack.gateway.router.routes) if stack.gateway else 0
    workflows = "".join(
        f"\n\nWorkflow {logical_id}: state machine {arn.rsplit(':', 1)[-1]} runs locally (moto's ASL interpreter; "
        f"its Lambda tasks run in this process). Watch its executions:\n"
        f"  {aws} stepfunctions list-executions --state-machine-arn {arn}"
        for logical_id, arn in stack.state_machine_arns.items()
    )
    workflows += f"\n\nEvent sources ({'running' if stack.event_sources else 'paused (OMS_EVENT_SOURCES=0)'}):"
    # The first order pays with the built-in `test` method, which OMS_ENABLE_TEST_PAYMENTS=false turns off.
    test_payments = str(stack.template.parameter_overrides.get("EnableTestPayments", "")).lower() == "true"
    pay = (
        ""
        if test_payments
        else (
            " (test payments are off, OMS_ENABLE_TEST_PAYMENTS=false: put your payment plugin's method and token"
            " in its `payment`)"
        )
    )
    for mapping in stack.mappings.values():
        workflows += f"\n  {mapping.kind:<8} {mapping.source_label} -> {mapping.function_logical_id}"
    # Without the demo catalog (OMS_SEED=0, or its load refused) the first order's sku is unknown: 422.
    skus = ", ".join(line["sku"] for line in FIRST_ORDER["lines"])
    catalog = (
        ""
        if stack.seeded
        else f" (no demo catalog, OMS_SEED=0: put the product {skus}, a location and its stock first,"
        " as README's Quick start does)"
    )
    imported = "" if stack.seeded else "; its skus must be in the catalog"
    return f"""\
OMS local stack ready in {time.monotonic() - started:.1f} s ({len(stack.table_names)} tables, {routes} routes\
{", demo data loaded" if stack.seeded else ""})

  API        {stack.api_url}
  Docs       {stack.api_url}/docs
  AWS        {stack.aws_endpoint}  (region us-east-1, any credentials)
  Admin key  {stack.admin_key}

Place a first order{catalog}{pay}:
  curl -sS -X POST {stack.api_url}/orders {auth} -H "Content-Type: application/json" \
-H "Idempotency-Key: first-order" -d {body}
Read it back:
  curl -sS {stack.api_url}/orders/{order_id} {auth}
Look inside DynamoDB:
  {aws} dynamodb scan --table-name {stack.table_names["OrdersTable"]}{workflows}

Import a file of orders (CSV or JSON Lines{imported}) and follow it:
  make import FILE=events/orders-sample.csv

Ctrl-C stops it (everything is in memory)."""


def local_parameters() -> dict[str, str]:
    """The template parameters `make run` sets for a laptop: the demo orders pay with the `test`
    gateway; OMS_ENABLE_TEST_PAYMENTS=false turns it off."""
    return {"EnableTestPayments": os.environ.get("OMS_ENABLE_TEST_PAYMENTS") or "true"}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    started = time.monotonic()
    stopping = threading.Event()
    # Before anything loads: a Ctrl-C from here on stops what started, never a traceback.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    if INTERRUPTED.is_set():  # while the modules above loaded: nothing started yet
        print("stopped.", flush=True)
        return 0
    try:
        stack = EmbeddedStack(parameter_overrides=local_parameters())
        if stopping.is_set():  # while the template loaded: nothing to start or stop
            print("stopped.", flush=True)
            return 0
        # Seeded after start() so that a refused seed is a warning, not a stack that will not start.
        wants_seed, stack.seed = stack.seed, False
        try:
            stack.start()
        except OSError as error:
            print(f"cannot start the local stack: {error} (set OMS_PORT / OMS_AWS_PORT to free ports)", file=sys.stderr)
            return 1
    except ValueError as error:  # a setting or the template refused (EventSourceError, AslError), named in it
        print(f"cannot start the local stack: {error}", file=sys.stderr)
        return 2
    try:
        # A Ctrl-C while it started (or seeded) stops it without the banner of a stack going away.
        if wants_seed and not stopping.is_set():
            try:
                stack.seed_demo_data()
            except SeedError as error:
                print(f"warning: demo data not loaded: {error}", file=sys.stderr)
        if not stopping.is_set():
            try:
                write_state(stack)
            except OSError as error:
                print(
                    f"warning: {state_file()} not written ({error}): make import needs OMS_* variables", file=sys.stderr
                )
            print(banner(stack, started), flush=True)
        while not stopping.wait(0.5):
            pass
    finally:
        remove_state(state_file())
        stack.stop()
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
