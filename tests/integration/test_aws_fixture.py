"""The `aws` fixture's accounts (tests/integration/conftest.py): each starts as the template makes
it, whatever the test before it wrote, created, changed or hooked, although only a process's first
gets its tables through CreateTable and the rest get copies of those."""

from __future__ import annotations

import gc
import json
import os
import weakref
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.local.template import create_table_request
from tests.integration.conftest import KEEP_BOTO3_SESSION, PASS_MACHINE, Aws, _table_properties, fresh_account

# What differs between two CreateTable of the same request: when, and the stream named after when.
WHEN = {"CreationDateTime", "LatestStreamLabel", "LatestStreamArn"}


@pytest.fixture(scope="module", autouse=True)
def collections_walk_only_this_modules_objects() -> Iterator[None]:
    """What earlier modules left to the collector freed once, and everything alive then out of the
    collector's walks (gc.freeze) until the module ends: its tests collect some twenty times (a
    client held in a reference cycle is freed only then), and each full collection walked the whole
    heap of the worker. Late in a `make test` worker this module's six collecting tests took 91 s
    (2 workers on a loaded machine), and 10 s in a process of its own, where 23 full collections
    took 3.1 s of its 4.5 s of CPU. Everything this module's tests make is collected as before; a
    client built before the module, which only the collector would free, stays held, so the pool
    never serves it (tests/client_pool.py), as it never served one held."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def test_each_account_starts_empty_as_the_template_makes_it_whatever_the_one_before_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hooked: list[str] = []
    first: dict[str, Any] = {}
    for account in range(3):  # the first may be the process's first account; the later two are copies
        with fresh_account(monkeypatch) as aws:
            described = _described(aws)
            first = first or described
            assert described == first
            assert sorted(aws.dynamodb.list_tables()["TableNames"]) == sorted(aws.tables.values())
            for name in aws.tables.values():
                assert aws.dynamodb.scan(TableName=name)["Items"] == []
                ttl = aws.dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
                assert ttl["TimeToLiveStatus"] == "DISABLED"
            sqs = boto3.client("sqs", region_name="us-east-1")
            queue_url = os.environ["ACCESS_LOG_QUEUE_URL"]
            assert sqs.list_queues()["QueueUrls"] == [queue_url]
            assert "Messages" not in sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)
            assert boto3.client("s3", region_name="us-east-1").list_buckets()["Buckets"] == []
            assert boto3.client("stepfunctions", region_name="us-east-1").list_state_machines()["stateMachines"] == []
            assert hooked == []  # a handler the last test hooked on its client hears nothing of this one's

            _leave_everything_changed(aws, sqs, queue_url, account, hooked)


def test_a_copied_table_describes_as_create_table_makes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_account(monkeypatch):
        pass  # the process's baseline is made by now, if it was not before
    with fresh_account(monkeypatch) as aws:
        copied = _described(aws)
    with mock_aws(config=KEEP_BOTO3_SESSION):
        client = boto3.client("dynamodb", region_name="us-east-1")
        for logical_id, props in _table_properties().items():
            client.create_table(**create_table_request(props, f"test-{logical_id}"))
        created = _described(Aws({logical_id: f"test-{logical_id}" for logical_id in _table_properties()}))
    assert copied == created


def _described(aws: Aws) -> dict[str, Any]:
    described = {}
    for logical_id, name in aws.tables.items():
        table = aws.dynamodb.describe_table(TableName=name)["Table"]
        described[logical_id] = {key: value for key, value in table.items() if key not in WHEN}
    return described


def _leave_everything_changed(aws: Aws, sqs: Any, queue_url: str, account: int, hooked: list[str]) -> None:
    """An item in every table, a message queued, TTL on, a table, a bucket and a state machine of the
    test's own, and a handler hooked on its DynamoDB client."""
    for logical_id, name in aws.tables.items():
        props = _table_properties()[logical_id]
        key = {element["AttributeName"]: {"S": f"leaked-{account}"} for element in props["KeySchema"]}
        aws.dynamodb.put_item(TableName=name, Item=key)
    aws.dynamodb.update_time_to_live(
        TableName=aws.tables["OrdersTable"], TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    aws.dynamodb.create_table(
        TableName=f"own-{account}",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
    )
    sqs.send_message(QueueUrl=queue_url, MessageBody="leaked")
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=f"own-{account}")
    boto3.client("stepfunctions", region_name="us-east-1").create_state_machine(
        name=f"own-{account}", definition=json.dumps(PASS_MACHINE), roleArn="arn:aws:iam::123456789012:role/own"
    )
    aws.dynamodb.meta.events.register("before-call.dynamodb", lambda **_: hooked.append("called"))


# --- The functions' clients: served again only when nothing holds them and nothing touched them ----
# (tests/client_pool.py). A client is followed through a weak reference, which neither holds it nor
# changes it: the same object served in the next account is the pool's doing.


def _function_client() -> Any:
    from functions.access_log.app import container

    return container().dynamodb


def _client_in_the_next_account(monkeypatch: pytest.MonkeyPatch, touch: Any) -> tuple[Any, list[str]]:
    """A function's DynamoDB client built in one account, `touch`ed there (given it and a list to
    append to); then the function's client in the next account, and what the list heard."""
    heard: list[str] = []
    with fresh_account(monkeypatch):
        # What earlier tests left to the collector, freed now, the account's start having forgotten
        # the warm containers: a client freed between the two accounts would be an untouched client
        # the pool rightly serves before this one, which it keeps in the order they were built.
        gc.collect()
        client = _function_client()
        client.describe_table(TableName=os.environ["ORDERS_TABLE"])
        touch(client, heard)
        built = weakref.ref(client)
        del client
    gc.collect()  # the container held it in a reference cycle: garbage, once the collector has run
    with fresh_account(monkeypatch):
        heard.clear()
        served = _function_client()
        served.describe_table(TableName=os.environ["ORDERS_TABLE"])
        assert served.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
        return (served is built()), heard


def test_an_untouched_client_nothing_holds_is_served_again_in_the_next_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    again, _ = _client_in_the_next_account(monkeypatch, lambda client, heard: None)
    assert again


def test_an_untouched_client_is_served_again_though_an_earlier_one_was_left_to_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An earlier test's client, held in a reference cycle that test left in the oldest generation
    # (which only a full collection looks at): a container, a stack or a run, garbage already or a
    # container left warm, which becomes garbage when the next account's start forgets it. The
    # next account built a client of its own; the collection between the two accounts freed the
    # earlier one, which the pool (rightly) found first: `again` was False, once in a full run.
    from functions.warm import Warm

    with fresh_account(monkeypatch):
        cycle: list[Any] = [_function_client()]
        cycle.append(cycle)
    warm = Warm([cycle].pop)  # what it builds, nothing else holds
    warm()  # kept until an account's start forgets it
    gc.collect()  # the cycle, still held, moves to the oldest generation
    del cycle
    again, _ = _client_in_the_next_account(monkeypatch, lambda client, heard: None)
    assert again
    del warm


def test_a_client_whose_events_were_hooked_is_never_served_again(monkeypatch: pytest.MonkeyPatch) -> None:
    def hook(client: Any, heard: list[str]) -> None:
        client.meta.events.register("before-call.dynamodb", lambda **_: heard.append("called"))

    again, heard = _client_in_the_next_account(monkeypatch, hook)
    assert not again
    assert heard == []

    def hook_and_unhook(client: Any, heard: list[str]) -> None:
        def handler(**_: Any) -> None:
            heard.append("called")

        client.meta.events.register_first("before-send.dynamodb", handler)
        client.meta.events.unregister("before-send.dynamodb", handler)

    again, heard = _client_in_the_next_account(monkeypatch, hook_and_unhook)
    assert not again


def test_a_client_left_patched_or_still_held_is_never_served_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest's monkeypatch undoes after the account has ended: the pool sees the patch then.
    def patched(client: Any, heard: list[str]) -> None:
        monkeypatch.setattr(client, "describe_table", lambda **_: heard.append("patched") or {})

    again, heard = _client_in_the_next_account(monkeypatch, patched)
    assert not again
    assert heard == []

    def class_patched(client: Any, heard: list[str]) -> None:
        monkeypatch.setattr(type(client), "can_paginate", lambda self, name: heard.append("patched"))

    assert _client_in_the_next_account(monkeypatch, class_patched) == (False, [])

    kept: list[Any] = []
    assert _client_in_the_next_account(monkeypatch, lambda client, heard: kept.append(client)) == (False, [])
    held_events: list[Any] = []
    events_held = _client_in_the_next_account(monkeypatch, lambda client, _: held_events.append(client.meta.events))
    assert events_held == (False, [])


def test_a_client_whose_retry_quota_was_spent_is_never_served_again(monkeypatch: pytest.MonkeyPatch) -> None:
    def throttled(client: Any, heard: list[str]) -> None:
        service = client.meta.service_model.service_id.hyphenize()
        (handler,) = client.meta.events._emitter._handlers.prefix_search(f"needs-retry.{service}")
        assert handler.__self__._retry_quota._quota.acquire(5)  # as a retry of a throttled call spends it

    again, _ = _client_in_the_next_account(monkeypatch, throttled)
    assert not again


def test_a_client_built_under_another_aws_environment_is_not_served(monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_account(monkeypatch):
        built = weakref.ref(_function_client())
    with fresh_account(monkeypatch):
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
        served = _function_client()
        assert served is not built()
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    with fresh_account(monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # a server's connections: never kept
        first = weakref.ref(_function_client())
    with fresh_account(monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        assert _function_client() is not first()
    monkeypatch.delenv("AWS_ENDPOINT_URL")


def test_only_the_service_an_endpoint_variable_names_is_never_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # A local stack names its own server for S3 (its presigned label URLs): its other clients are kept.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    assert _client_in_the_next_account(monkeypatch, lambda client, heard: None) == (True, [])
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:1")
    with fresh_account(monkeypatch):
        built = weakref.ref(_function_client())
    gc.collect()
    with fresh_account(monkeypatch):
        assert _function_client() is not built()


def test_a_client_of_a_running_local_stack_s_endpoint_is_kept_until_the_stack_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # moto's Step Functions interpreter builds a Lambda client for every task it runs, on the
    # stack's server (MOTO_PORT): kept while that server runs, never after it stopped.
    from tests import client_pool

    port = 1  # no server listens there: nothing below sends a request
    endpoint = f"http://localhost:{port}"
    with fresh_account(monkeypatch):
        built = weakref.ref(boto3.client("lambda", region_name="us-east-1", endpoint_url=endpoint))
        assert boto3.client("lambda", region_name="us-east-1", endpoint_url=endpoint) is not built()  # no server
        client_pool.serving(port)
        try:
            built = weakref.ref(boto3.client("lambda", region_name="us-east-1", endpoint_url=endpoint))
            assert boto3.client("lambda", region_name="us-east-1", endpoint_url=endpoint) is built()
            other = weakref.ref(boto3.client("lambda", region_name="us-east-1", endpoint_url="http://localhost:2"))
            assert boto3.client("lambda", region_name="us-east-1", endpoint_url="http://localhost:2") is not other()
        finally:
            client_pool.stopped(port)
        assert boto3.client("lambda", region_name="us-east-1", endpoint_url=endpoint) is not built()


def test_a_client_built_under_a_local_stack_s_endpoint_variable_is_let_go_when_the_stack_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stack names its server for S3 alone (AWS_ENDPOINT_URL_S3, its port in it): its functions'
    # other clients are kept under that environment, which no later stack has. The pool kept them
    # after the stack stopped, for a key nothing could ask for again: every stack of a `make test`
    # worker left its clients, their client classes and models behind (2.9 million objects at a
    # worker's end, each full collection of pytest's unconfigure 11-14 s on a loaded machine).
    from tests import client_pool

    port = 1  # no server listens there: nothing below sends a request
    with fresh_account(monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://localhost:{port}")
        try:
            # While the stack starts (its variable set, its server not yet serving), and once it serves.
            while_starting = weakref.ref(boto3.client("sqs", region_name="us-east-1"))
            assert boto3.client("sqs", region_name="us-east-1") is while_starting()
            client_pool.serving(port)
            built = weakref.ref(boto3.client("dynamodb", region_name="us-east-1"))
            assert boto3.client("dynamodb", region_name="us-east-1") is built()  # kept while the stack runs
        finally:
            client_pool.stopped(port)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    gc.collect()
    assert (while_starting(), built()) == (None, None)


def test_a_stack_s_own_session_is_let_go_with_its_clients_when_the_stack_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each stack runs on a botocore session of its own (infra/local/process.py). An S3 client holds
    # its session (its S3 Express identity resolver does), so the pool, whose sessions are weak
    # keys, held each stack's session through the S3 clients it kept for it, and with it every
    # client it kept for that session: some ten clients and 60,000-80,000 objects per stack, never
    # asked for again (2.9 million objects at a `make test` worker's end).
    import botocore.session

    from tests import client_pool

    port = 1  # no server listens there: nothing below sends a request
    with fresh_account(monkeypatch):
        session = botocore.session.get_session()
        client_pool.serving(port, session)
        try:
            built = weakref.ref(session.create_client("s3", region_name="us-east-1"))
            assert session.create_client("s3", region_name="us-east-1") is built()  # kept while the stack runs
        finally:
            client_pool.stopped(port)
    let_go = weakref.ref(session)
    del session
    gc.collect()
    assert (let_go(), built()) == (None, None)
