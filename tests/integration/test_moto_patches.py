"""The local runtime's changes to moto (infra/local/moto_patches/): each answers exactly what moto
answers without it; each is counted and undone; and the canaries fail when moto changes under a
patch (a replaced attribute moved or changed its signature, or moto stopped doing what a patch
works around), so the patch is revisited, or dropped, on the next moto upgrade."""

from __future__ import annotations

import collections
import copy
import gc
import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from moto import mock_aws

import infra.local.moto_patches as moto_patches
import infra.local.moto_patches.memory as moto_memory
import infra.local.moto_patches.sqs as moto_sqs
import infra.local.moto_patches.streams as moto_streams
import infra.local.moto_patches.transactions as moto_transactions
import infra.local.moto_patches.update_expressions as moto_update_expressions
from infra.local.moto_patches import MOTO_VERSION, AppliedBy, MotoPatch, all_patches, describe, readme_list
from tests.conftest import PROCESS_PATCHES

ROOT = Path(__file__).resolve().parents[2]

COUNTS = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"]


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


def _queue_with_messages_in_every_state() -> tuple[object, str]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="counts")["QueueUrl"]
    for n in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=f"visible {n}")
    for n in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"delayed {n}", DelaySeconds=60)
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=60)["Messages"]
    assert len(received) == 2
    return sqs, url


def test_sqs_counts_are_moto_s_own_with_the_replacements_installed(aws: None) -> None:
    sqs, url = _queue_with_messages_in_every_state()
    original = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=COUNTS)["Attributes"]
    moto_sqs.PATCH.apply()
    try:
        replaced = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=COUNTS)["Attributes"]
        # Retention is still enforced through the replacement: the 5 sent messages are received.
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    finally:
        moto_sqs.PATCH.undo()
    assert (
        original
        == replaced
        == {
            "ApproximateNumberOfMessages": "3",
            "ApproximateNumberOfMessagesNotVisible": "2",
            "ApproximateNumberOfMessagesDelayed": "3",
        }
    )
    assert len(received) == 3
    assert not moto_sqs.PATCH.is_applied()


def test_sqs_counts_are_of_one_instant_so_a_message_whose_delay_ends_meanwhile_is_counted(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto scans the queue once per count asked: a message whose delay ended between the scan for
    # visible messages and the one for delayed ones was in neither, and the local SQS mapping took
    # its queue for drained (and slept until the next arrival). Here the clock jumps past the delay
    # after each number of reads in turn, as the mapping asks.
    import moto.core.utils

    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="instant")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=1)
    names = [COUNTS[1], COUNTS[0], COUNTS[2]]  # not visible, visible, delayed: the mapping's order
    real, totals = moto.core.utils.unix_time_millis, []
    moto_sqs.PATCH.apply()
    try:
        for jump_after in range(30):  # moto reads the clock up to 27 times for these three
            reads = iter(range(1000))

            def jumping(*args: Any, after: int = jump_after, reads: Any = reads) -> float:
                return real(*args) + (5000 if next(reads) >= after else 0)

            monkeypatch.setattr(moto.core.utils, "unix_time_millis", jumping)
            counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
            monkeypatch.setattr(moto.core.utils, "unix_time_millis", real)
            totals.append(sum(int(counts[name]) for name in names))
    finally:
        moto_sqs.PATCH.undo()
    assert totals == [1] * 30


def test_moto_keeps_every_message_it_ever_made_unless_installed(aws: None) -> None:
    """Canary of `memory`: the leak it fixes, shown on moto itself, so the fix is dropped once moto stops."""
    from moto.sqs.models import Message

    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="leak")["QueueUrl"]
    before = len(Message.instances_tracked)  # type: ignore[attr-defined]
    sqs.send_message(QueueUrl=url, MessageBody="kept forever")
    message = sqs.receive_message(QueueUrl=url)["Messages"][0]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert len(Message.instances_tracked) > before  # type: ignore[attr-defined]


def test_deleted_messages_and_overwritten_items_are_freed_when_installed(aws: None) -> None:
    from moto.dynamodb.models.dynamo_type import Item
    from moto.sqs.models import Message

    # Items an earlier test in this process left alive are not this test's: held (so no new item
    # can take one's id) and left out of the count.
    gc.collect()
    earlier = [o for o in gc.get_objects() if isinstance(o, Item)]
    earlier_ids = {id(o) for o in earlier}
    moto_memory.PATCH.apply()
    try:
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="freed")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="gone once deleted")
        queue = next(iter(_sqs_backend().queues.values()))
        alive = weakref.ref(queue._messages[0])
        message = sqs.receive_message(QueueUrl=url)["Messages"][0]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb.create_table(
            TableName="items",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for version in range(20):
            dynamodb.put_item(TableName="items", Item={"id": {"S": "one"}, "v": {"N": str(version)}})
            dynamodb.update_item(
                TableName="items", Key={"id": {"S": "one"}}, UpdateExpression="ADD n :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
            )  # fmt: skip
        gc.collect()
        assert alive() is None
        assert Message.instances_tracked == []  # type: ignore[attr-defined]
        assert Item.instances_tracked == []  # type: ignore[attr-defined]
        live_items = [o for o in gc.get_objects() if isinstance(o, Item) and id(o) not in earlier_ids]
        assert len(live_items) == 1  # the one stored item, no copies
        assert dynamodb.get_item(TableName="items", Key={"id": {"S": "one"}})["Item"]["n"] == {"N": "1"}
    finally:
        moto_memory.PATCH.undo()
    assert not moto_memory.PATCH.is_applied()


def test_s3_keys_stay_tracked_for_moto_s_reset_to_close_their_files(aws: None) -> None:
    from moto.s3.models import FakeKey

    moto_memory.PATCH.apply()
    try:
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="kept")
        before = len(FakeKey.instances_tracked)  # type: ignore[attr-defined]
        s3.put_object(Bucket="kept", Key="a", Body=b"x" * 10)
        assert len(FakeKey.instances_tracked) > before  # type: ignore[attr-defined]
    finally:
        moto_memory.PATCH.undo()


@pytest.fixture
def paced_at_eight(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, str, list[float]]]:
    """moto_sqs installed with a high-water mark of 8; each wait for room is recorded in the list
    and drains whatever `drain` says (nothing unless a test sets it)."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="paced")["QueueUrl"]
    for n in range(25):
        sqs.send_message(QueueUrl=url, MessageBody=f"earlier {n}")
    waits: list[float] = []
    monkeypatch.setattr(moto_sqs, "HIGH_WATER", 8)
    monkeypatch.setattr(moto_sqs, "_sleep", waits.append)
    moto_sqs.PATCH.apply()
    try:
        yield sqs, url, waits
    finally:
        moto_sqs.PATCH.undo()


def _receive_and_delete(sqs: object, url: str, count: int = 10) -> None:
    for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=count)["Messages"]:  # type: ignore[attr-defined]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])  # type: ignore[attr-defined]


def _depth(sqs: object, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])  # type: ignore[attr-defined]
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def test_a_batch_waits_while_its_queue_is_above_the_high_water_mark(paced_at_eight, monkeypatch) -> None:
    sqs, url, waits = paced_at_eight
    depths_seen: list[int] = []

    def consumer_drains(seconds: float) -> None:
        waits.append(seconds)
        _receive_and_delete(sqs, url)
        depths_seen.append(_depth(sqs, url))

    monkeypatch.setattr(moto_sqs, "_sleep", consumer_drains)

    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "0", "MessageBody": "new"}])

    assert depths_seen == [15, 5]  # it waited twice, and sent once 8 or fewer were waiting
    assert _depth(sqs, url) == 6


def test_a_queue_nobody_drains_is_waited_on_once_then_not_until_it_has_drained(paced_at_eight, monkeypatch) -> None:
    sqs, url, waits = paced_at_eight
    monkeypatch.setattr(moto_sqs, "STALL_SECONDS", 0.0)

    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "0", "MessageBody": "first"}])
    after_first = len(waits)
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "0", "MessageBody": "second"}])
    after_second = len(waits)
    for _ in range(3):
        _receive_and_delete(sqs, url)  # 27 -> 0 visible: drained
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "0", "MessageBody": "third"}])
    for n in range(10):
        sqs.send_message(QueueUrl=url, MessageBody=f"later {n}")
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "0", "MessageBody": "fourth"}])

    assert (after_first, after_second - after_first) == (1, 0)
    assert len(waits) == 2  # waited on again once it had drained and filled up
    assert _depth(sqs, url) == 12


def test_canary_moto_s_sqs_still_reads_the_clock_per_message_and_every_attribute_per_retention_check(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Canary of `sqs`: once moto counts a queue at one clock reading and checks a message's
    retention without rebuilding the queue's attributes, drop those replacements."""
    import moto.sqs.models as sqs_models

    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="canary")["QueueUrl"]
    for n in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{n}")
    reads: list[float] = []
    clock = sqs_models.unix_time_millis
    monkeypatch.setattr(sqs_models, "unix_time_millis", lambda *args: reads.append(1) or clock(*args))
    sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert len(reads) >= 5  # one per message at least
    retention = inspect.getsource(sqs_models.SQSBackend.is_message_valid_based_on_retention_period)
    assert "self.get_queue_attributes(" in retention


def test_canary_moto_s_sqs_send_still_builds_every_attribute_and_delete_still_scans_the_queue() -> None:
    """Canary of `sqs`'s pacing (its `changes` say a send and a delete still grow with the queue's
    depth): once moto's SendMessage reads its queue's attribute without building every attribute
    (three counts, each a scan of the queue) and its DeleteMessage finds a message without scanning
    the queue, the pacing may go, and the README's words with it."""
    import moto.sqs.models as sqs_models

    assert "queue.attributes.get(" in inspect.getsource(sqs_models.SQSBackend.send_message)
    assert "for message in self._messages" in inspect.getsource(sqs_models.Queue.delete_message)
    assert "for attribute in self.BASE_ATTRIBUTES" in inspect.getsource(sqs_models.Queue.attributes.fget)
    assert {"ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"} <= set(
        sqs_models.Queue.BASE_ATTRIBUTES
    )


def _sqs_backend() -> object:
    from moto.sqs.models import sqs_backends

    return sqs_backends["123456789012"]["us-east-1"]


PATCHES = {patch.name: patch for patch in all_patches()}


@pytest.mark.parametrize("name", sorted(PATCHES))
def test_each_patch_is_counted_and_the_last_undo_restores_moto(name: str) -> None:
    patch = PATCHES[name]
    if patch in PROCESS_PATCHES:  # applied by the suite for the whole process: one more apply() is counted
        patch.apply()
        patch.undo()
        assert patch.is_applied()
        return
    # An attribute the patch adds ("missing" in its `expects`) is None here, and must be gone again.
    originals = {(owner, attribute): owner.__dict__.get(attribute) for owner, attribute in patch.replacements()}

    def replaced() -> list[bool]:
        return [owner.__dict__.get(attribute) is not original for (owner, attribute), original in originals.items()]

    patch.apply()
    patch.apply()
    patch.undo()
    assert patch.is_applied() and all(replaced())
    assert [describe(value) for value in patch.targets().values()] == list(patch.expects.values())  # moto's own
    patch.undo()
    assert not patch.is_applied() and not any(replaced())
    patch.undo()  # one too many is harmless
    assert not any(replaced())


def test_registered_items_are_read_newest_first_and_leave_with_their_block() -> None:
    patch = PATCHES["retry_delay"]
    with patch.registered(0.5):
        with patch.registered(0.01, 0.02):
            assert patch.registrations() == [0.02, 0.01, 0.5] and patch.is_applied()
        assert patch.registrations() == [0.5] and patch.is_applied()
    assert patch.registrations() == [] and not patch.is_applied()


@pytest.mark.parametrize("name", sorted(PATCHES))
def test_canary_what_each_patch_replaces_is_still_what_moto_has(name: str) -> None:
    """Every replaced attribute still exists in moto with the signature (or kind) it had in the
    version the patch was checked against. If this fails after a moto upgrade: read the new moto
    code, adapt the patch (or drop it if moto fixed the behaviour), then update `expects`."""
    patch = PATCHES[name]
    found = {target: describe(original) for target, original in patch.targets().items()}
    assert found == patch.expects, f"moto changed under the {name!r} patch (checked against moto {MOTO_VERSION})"


def test_canary_moto_still_does_not_implement_flush_stage_authorizers_cache(aws: None) -> None:
    from botocore.exceptions import ClientError

    client = boto3.client("apigateway", region_name="us-east-1")
    with pytest.raises(ClientError, match="Not yet implemented"):
        client.flush_stage_authorizers_cache(restApiId="api", stageName="v1")


def test_canary_moto_still_notifies_put_from_inside_complete_multipart_upload(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.s3 import notifications

    delivered: list[str] = []
    monkeypatch.setattr(notifications, "_invoke_awslambda", lambda _a, event, _f, _r: delivered.append(
        event["Records"][0]["eventName"]
    ))  # fmt: skip
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="multipart-canary")
    arn = "arn:aws:lambda:us-east-1:123456789012:function:f"
    s3.put_bucket_notification_configuration(
        Bucket="multipart-canary",
        NotificationConfiguration={
            "LambdaFunctionConfigurations": [{"LambdaFunctionArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    upload = s3.create_multipart_upload(Bucket="multipart-canary", Key="k")["UploadId"]
    part = s3.upload_part(Bucket="multipart-canary", Key="k", UploadId=upload, PartNumber=1, Body=b"x")
    s3.complete_multipart_upload(
        Bucket="multipart-canary", Key="k", UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )  # fmt: skip
    assert delivered == ["ObjectCreated:Put", "ObjectCreated:CompleteMultipartUpload"]


def test_canary_moto_s_retries_still_sleep_through_their_module_s_time() -> None:
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    assert "time.sleep(" in inspect.getsource(retrier_decl)


def test_the_readme_lists_every_patch() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert readme_list() in readme, "README's list of moto patches is stale; paste readme_list():\n" + readme_list()


def _applied(patches: list[MotoPatch]) -> set[str]:
    return {patch.name for patch in patches if patch.is_applied()}


def _saying(*who: AppliedBy) -> set[str]:
    return {patch.name for patch in all_patches() if any(one in patch.applied_by for one in who)}


def test_every_module_of_the_package_is_a_patch_of_all_patches_that_someone_applies() -> None:
    modules = [module.name for module in pkgutil.iter_modules(moto_patches.__path__)]
    patches = all_patches()
    assert sorted(patch.name for patch in patches) == sorted(modules)
    assert [importlib.import_module(f"infra.local.moto_patches.{patch.name}").PATCH for patch in patches] == patches
    assert [patch.name for patch in patches if not patch.applied_by] == []


def test_the_suite_applies_each_patch_where_it_says_and_nowhere_else() -> None:
    assert _applied(all_patches()) == _saying(AppliedBy.TEST_PROCESS)
    with mock_aws():
        assert _applied(all_patches()) == _saying(AppliedBy.TEST_PROCESS, AppliedBy.MOCK_AWS)
        with mock_aws():  # only the outermost start applies them; the inner stop leaves them
            pass
        assert _applied(all_patches()) == _saying(AppliedBy.TEST_PROCESS, AppliedBy.MOCK_AWS)
    assert _applied(all_patches()) == _saying(AppliedBy.TEST_PROCESS)


@pytest.fixture(scope="module")
def a_fresh_stack() -> dict[str, Any]:
    """What a fresh interpreter, as `make run`'s, saw while a stack ran and after it stopped: this
    one's conftest applies the suite's patches too, and has long imported moto's Batch and EC2. The
    stack has every registered patch's objects: state machines (and a retry delay scale other than
    1.0), an S3 notification, mappings and the API. Two tests read it (one interpreter and stack
    start, about 3 s of CPU, instead of one each)."""
    code = """
import json, sys
from infra.local.moto_patches import all_patches
from infra.local.stack import running_stack
def applied():
    return sorted(patch.name for patch in all_patches() if patch.is_applied())
with running_stack(admin_key_bootstrap=lambda secret: None, event_sources=False, retry_delay_scale=0.5) as stack:
    inside = applied()
    loaded = sorted(sys.modules)
    machines = len(stack.state_machine_arns)
print(json.dumps({"inside": inside, "after": applied(), "loaded": loaded, "machines": machines,
                  "batch_after": "moto.batch" in sys.modules}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_stack_applies_each_patch_where_it_says_and_nowhere_else(a_fresh_stack: dict[str, Any]) -> None:
    found = {key: a_fresh_stack[key] for key in ("inside", "after")}
    assert found == {"inside": sorted(_saying(AppliedBy.STACK, AppliedBy.STACK_REGISTRY)), "after": []}


def test_a_stack_reads_its_state_machines_without_importing_moto_s_batch_models_or_ec2(
    a_fresh_stack: dict[str, Any],
) -> None:
    # moto's ASL interpreter imports moto.batch.utils, and moto.batch's own body imported moto's
    # Batch models and with them all of moto.ec2: ~1 s of CPU in every `make run` start.
    found = a_fresh_stack
    assert found["machines"] > 0 and "moto.stepfunctions.parser.asl.parse.asl_parser" in found["loaded"]
    assert [name for name in found["loaded"] if name.startswith(("moto.ec2", "moto.ecs", "moto.batch.models"))] == []
    assert not found["batch_after"]  # the stop takes the package out, as before the start


@contextmanager
def _moto_s_own_transactions() -> Iterator[None]:
    """moto's own TransactWriteItems for the block, inside the suite's mock_aws (which applies the
    `transactions` patch, tests/conftest.py)."""
    from moto.dynamodb import models

    originals = moto_transactions.PATCH.targets()
    with (
        mock.patch.object(models, "copy", originals["moto.dynamodb.models.copy"]),
        mock.patch.object(
            models.DynamoDBBackend,
            "transact_write_items",
            originals["moto.dynamodb.models.DynamoDBBackend.transact_write_items"],
        ),
    ):
        yield


def _cancelled_transaction(monkeypatch: pytest.MonkeyPatch, patched: bool) -> tuple[list[dict], int]:
    """A streamed table, then a transaction that updates, puts and deletes before its last check
    fails (with the patch, or moto's own): what the table and its stream hold afterwards."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.table import Table

    def key(pk: str) -> dict:
        return {"pk": {"S": pk}, "sk": {"S": "1"}}

    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb.create_table(
            TableName="t", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk")],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )  # fmt: skip
        dynamodb.put_item(TableName="t", Item={**key("a"), "n": {"N": "1"}})
        dynamodb.put_item(TableName="t", Item=key("b"))
        if patched:
            monkeypatch.setattr(
                Table, "__deepcopy__", lambda *_: pytest.fail("a whole table was copied"), raising=False
            )
            moto_transactions.PATCH.apply()
        try:
            with (
                nullcontext() if patched else _moto_s_own_transactions(),
                pytest.raises(dynamodb.exceptions.TransactionCanceledException),
            ):
                dynamodb.transact_write_items(TransactItems=[
                    {"Update": {"TableName": "t", "Key": key("a"), "UpdateExpression": "SET n = n + :one",
                                "ExpressionAttributeValues": {":one": {"N": "1"}}}},
                    {"Put": {"TableName": "t", "Item": {**key("c"), "n": {"N": "7"}}}},
                    {"Delete": {"TableName": "t", "Key": key("b")}},
                    {"ConditionCheck": {"TableName": "t", "Key": key("d"),
                                        "ConditionExpression": "attribute_exists(pk)"}},
                ])  # fmt: skip
        finally:
            if patched:
                moto_transactions.PATCH.undo()
        items = sorted(dynamodb.scan(TableName="t")["Items"], key=lambda item: item["pk"]["S"])
        return items, len(dynamodb_backends["123456789012"]["us-east-1"].tables["t"].stream_shard.items)


def test_a_cancelled_transaction_is_undone_as_moto_undoes_it_without_copying_a_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_moto = _cancelled_transaction(monkeypatch, patched=False)
    assert by_moto == ([{"pk": {"S": "a"}, "sk": {"S": "1"}, "n": {"N": "1"}}, {"pk": {"S": "b"}, "sk": {"S": "1"}}], 2)
    assert _cancelled_transaction(monkeypatch, patched=True) == by_moto


def test_the_suite_s_mock_aws_applies_the_transactions_patch_from_its_start_to_its_stop() -> None:
    from moto.dynamodb.models import DynamoDBBackend

    moto_own = moto_transactions.PATCH.targets()["moto.dynamodb.models.DynamoDBBackend.transact_write_items"]
    assert not moto_transactions.PATCH.is_applied()
    with mock_aws():
        assert moto_transactions.PATCH.is_applied()
        assert DynamoDBBackend.__dict__["transact_write_items"] is not moto_own
        with mock_aws():
            assert moto_transactions.PATCH.is_applied()
        assert moto_transactions.PATCH.is_applied()
    assert not moto_transactions.PATCH.is_applied()
    assert DynamoDBBackend.__dict__["transact_write_items"] is moto_own


def test_canary_moto_still_copies_every_table_a_transaction_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Canary of `transactions`: once moto stops deep-copying whole tables, drop the patch."""
    from moto.dynamodb.models.table import Table

    copied: list[str] = []
    monkeypatch.setattr(Table, "__deepcopy__", lambda table, _memo: copied.append(table.name) or table, raising=False)
    _cancelled_transaction(monkeypatch, patched=False)
    assert copied and set(copied) == {"t"}


def _streamed_table(dynamodb: Any, name: str) -> str:
    """A table keyed by `pk` with a NEW_IMAGE stream: the stream's ARN."""
    return dynamodb.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )["TableDescription"]["LatestStreamArn"]  # fmt: skip


def _stream_reads(patched: bool) -> tuple[list[list[str]], int]:
    """Two items put into a streamed table, read by following NextShardIterator three times: the
    keys each read returned, and how many shard iterators moto still holds afterwards."""
    from moto.dynamodbstreams.models import dynamodbstreams_backends

    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        arn = _streamed_table(dynamodb, "s")
        streams = boto3.client("dynamodbstreams", region_name="us-east-1")
        shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        iterator, reads = iterator["ShardIterator"], []
        if patched:
            moto_streams.PATCH.apply()
        try:
            for pk in ("a", "b", None):
                if pk:
                    dynamodb.put_item(TableName="s", Item={"pk": {"S": pk}})
                answer = streams.get_records(ShardIterator=iterator, Limit=1)
                reads.append([record["dynamodb"]["Keys"]["pk"]["S"] for record in answer["Records"]])
                iterator = answer["NextShardIterator"]
        finally:
            if patched:
                moto_streams.PATCH.undo()
        return reads, len(dynamodbstreams_backends["123456789012"]["us-east-1"].shard_iterators)


def test_a_message_or_stream_record_wakes_only_the_mappings_reading_its_source(aws: None) -> None:
    from infra.local.moto_patches import arrivals

    class Mapping:
        def __init__(self, source_arn: str, wanted: str = "") -> None:
            self.source_arn, self.woken, self.wanted, self.visible_at = source_arn, 0, wanted, 0.0

        def wants(self, record: dict) -> bool:  # a stream record as GetRecords answers it
            return not self.wanted or record["eventName"] == self.wanted

        def wake(self) -> None:
            self.woken += 1

        def visible_again(self, message_id: str, visible_at: float) -> None:
            self.visible_at = visible_at

    sqs, dynamodb = boto3.client("sqs", region_name="us-east-1"), boto3.client("dynamodb", region_name="us-east-1")
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": "1"}}'
    url = sqs.create_queue(QueueName="q", Attributes={"RedrivePolicy": redrive, "VisibilityTimeout": "0"})["QueueUrl"]
    stream_arn = _streamed_table(dynamodb, "t")
    queue, dead, stream = Mapping(dlq_arn.replace(":dlq", ":q")), Mapping(dlq_arn), Mapping(stream_arn)
    removals = Mapping(stream_arn, wanted="REMOVE")  # a filtered mapping: woken only by what it lets through
    with arrivals.PATCH.registered(queue, dead, stream, removals):
        sqs.send_message(QueueUrl=url, MessageBody="m")
        assert (queue.woken, dead.woken, stream.woken) == (1, 0, 0)
        sqs.receive_message(QueueUrl=url)  # received once, then moved to the DLQ by the next receive
        assert sqs.receive_message(QueueUrl=url).get("Messages") is None
        assert (queue.woken, dead.woken, stream.woken) == (1, 1, 0)
        dynamodb.put_item(TableName="t", Item={"pk": {"S": "a"}})
        assert (stream.woken, removals.woken) == (1, 0)
        dynamodb.delete_item(TableName="t", Key={"pk": {"S": "a"}})
        assert (queue.woken, dead.woken, stream.woken, removals.woken) == (1, 1, 2, 1)
        sent = time.time()
        sqs.send_message(QueueUrl=url, MessageBody="delayed", DelaySeconds=5)  # told when it becomes visible
        assert queue.woken == 2 and sent + 4 < queue.visible_at < time.time() + 6
    sqs.send_message(QueueUrl=url, MessageBody="after")  # the patch's block ended: nobody is woken
    assert (queue.woken, dead.woken, stream.woken, removals.woken) == (2, 1, 2, 1)
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=dlq)["Messages"]] == ["m"]  # moto's own, unchanged


def test_a_received_message_tells_the_mappings_reading_its_queue_when_it_is_visible_again(aws: None) -> None:
    from infra.local.moto_patches import arrivals

    class Mapping:
        def __init__(self, source_arn: str) -> None:
            self.source_arn, self.told = source_arn, []

        def wake(self) -> None:
            pass

        def visible_again(self, message_id: str, visible_at: float) -> None:
            self.told.append((message_id, visible_at))

    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="q", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    other = sqs.create_queue(QueueName="other")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue, elsewhere = Mapping(arn), Mapping(arn.replace(":q", ":other"))
    sent = [sqs.send_message(QueueUrl=url, MessageBody=body)["MessageId"] for body in ("a", "b")]
    with arrivals.PATCH.registered(queue, elsewhere):
        before = time.time()
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2)["Messages"]
        assert [message_id for message_id, _ in queue.told] == sent
        assert all(before + 30 <= at < time.time() + 30 for _, at in queue.told)  # the queue's timeout
        queue.told.clear()
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=received[0]["ReceiptHandle"], VisibilityTimeout=60)
        entries = [{"Id": "b", "ReceiptHandle": received[1]["ReceiptHandle"], "VisibilityTimeout": 0}]
        sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        assert [message_id for message_id, _ in queue.told] == sent
        (_, later), (_, now) = queue.told
        assert before + 60 <= later < time.time() + 60 and before <= now <= time.time()
        assert [m["Body"] for m in sqs.receive_message(QueueUrl=url, VisibilityTimeout=5)["Messages"]] == ["b"]
        assert queue.told[-1][0] == sent[1] and elsewhere.told == []  # only the mappings reading the queue
        told = len(queue.told)
        sqs.send_message(QueueUrl=other, MessageBody="c")
        sqs.receive_message(QueueUrl=other)
        assert len(elsewhere.told) == 1 and len(queue.told) == told
    queue.told.clear()
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=received[0]["ReceiptHandle"], VisibilityTimeout=1)
    assert queue.told == []  # the patch's block ended: nobody is told


@pytest.fixture
def streams_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCOUNT_ID_ENDPOINT_MODE", "disabled")  # else DescribeStream answers 404


def test_canary_moto_still_keeps_every_shard_iterator_it_hands_out(streams_reachable: None) -> None:
    """Canary of `streams`: once moto forgets read (or expired) iterators itself, drop the patch."""
    assert _stream_reads(patched=False) == ([["a"], ["b"], []], 4)  # the first and every NextShardIterator


def test_a_read_shard_iterator_is_forgotten_and_reads_are_moto_s_own_when_installed(streams_reachable: None) -> None:
    # Forgotten once the one after it is read: the last read and the next one to read are kept.
    assert _stream_reads(patched=True) == ([["a"], ["b"], []], 2)


def test_the_shard_iterator_last_read_reads_the_same_records_again(streams_reachable: None) -> None:
    from moto.dynamodbstreams.models import dynamodbstreams_backends

    # The runbook's recovery (README, OutboxFailuresAlarm) reads `get-records --shard-iterator "$IT"`
    # once; an operator who runs that line again (its jq or the outbox's invoke failed), or an SDK
    # retrying a read whose answer was lost, read an iterator the patch had already forgotten: a
    # KeyError, a 500 from `make run`, where AWS reads it again until it expires (15 minutes).
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        arn = _streamed_table(dynamodb, "s")
        streams = boto3.client("dynamodbstreams", region_name="us-east-1")
        shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        dynamodb.put_item(TableName="s", Item={"pk": {"S": "a"}})
        with moto_streams.PATCH.registered():
            first = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
            iterator = first["ShardIterator"]
            answer = streams.get_records(ShardIterator=iterator, Limit=10)
            for _ in range(3):  # a poller that could not hand the records over reads them again
                again = streams.get_records(ShardIterator=iterator, Limit=10)
            dynamodb.put_item(TableName="s", Item={"pk": {"S": "b"}})
            following = streams.get_records(ShardIterator=again["NextShardIterator"], Limit=10)
            # What each earlier read of it handed out, never to be read, is not kept for good: the
            # last read and its next are (moto's shard_iterators is a dict kept for the mock's life).
            held = len(dynamodbstreams_backends["123456789012"]["us-east-1"].shard_iterators)

    assert [r["dynamodb"]["Keys"] for r in again["Records"]] == [r["dynamodb"]["Keys"] for r in answer["Records"]]
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in answer["Records"]] == ["a"]
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in following["Records"]] == ["b"]
    assert held == 2


# --- update_expressions ---------------------------------------------------------------------------

# (expression, names, values): arithmetic, functions, every clause, and refusals moto makes while
# parsing (not kept) and while validating (the kept tree must come back unchanged).
_UPDATES = [
    ("SET n = if_not_exists(n, :zero) + :one, tags = list_append(if_not_exists(tags, :none), :tag)", {},
     ["zero", "one", "none", "tag"]),
    ("SET #n = #n - :one REMOVE gone ADD seen :set", {"#n": "n"}, ["one", "set"]),
    ("SET n = :one, n = :zero", {}, ["one", "zero"]),
    ("SET n = :one SET m = :zero", {}, ["one", "zero"]),
    ("ADD n :tag", {}, ["tag"]),
    ("ADD n :one REMOVE gone ADD m :one SET a = :zero SET b = :zero", {}, ["one", "zero"]),
    ("REMOVE a, b REMOVE c", {}, []),
    ("SET n = = :one", {}, ["one"]),
]  # fmt: skip
_VALUES = {
    ":zero": {"N": "0"},
    ":one": {"N": "1"},
    ":none": {"L": []},
    ":tag": {"L": [{"S": "t"}]},
    ":set": {"SS": ["x"]},
}


@contextmanager
def _moto_s_own_update_expressions() -> Iterator[None]:
    """moto's own parser and passes for the block, inside the suite's mock_aws (which applies the
    `update_expressions` patch, tests/conftest.py)."""
    from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, Node
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser
    from moto.dynamodb.parsing.validators import ActionCountValidator

    originals = PATCHES["update_expressions"].targets()
    parser = originals["moto.dynamodb.parsing.expressions.UpdateExpressionParser.make"]
    walk = "moto.dynamodb.parsing.ast_nodes.DepthFirstTraverser."
    with (
        mock.patch.object(UpdateExpressionParser, "make", parser),
        mock.patch.object(
            ActionCountValidator,
            "verify_action_counts",
            originals["moto.dynamodb.parsing.validators.ActionCountValidator.verify_action_counts"],
        ),
        mock.patch.object(
            DepthFirstTraverser, "traverse_node_recursively", originals[f"{walk}traverse_node_recursively"]
        ),
        _without(Node, "__deepcopy__"),  # copy.deepcopy's own round per node
    ):
        yield


@contextmanager
def _without(owner: Any, attribute: str) -> Iterator[None]:
    """`attribute` taken off `owner` for the block (a patch added it), put back after."""
    added = owner.__dict__.get(attribute)
    if added is not None:
        delattr(owner, attribute)
    try:
        yield
    finally:
        if added is not None:
            setattr(owner, attribute, added)


def _tree_shape(node: Any) -> Any:
    from moto.dynamodb.parsing.ast_nodes import Node

    if not isinstance(node, Node):
        return repr(node)
    return type(node).__name__, tuple(_tree_shape(child) for child in node.children or ())


def _updated(patched: bool) -> list[Any]:
    """Each of _UPDATES applied twice to one item (with the patch, or moto's own): the item after
    each, or the refusal's code and message."""
    seen: list[Any] = []
    with mock_aws(), nullcontext() if patched else _moto_s_own_update_expressions():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb.create_table(
            TableName="u", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        )  # fmt: skip
        for expression, names, values in _UPDATES * 2:
            request = {"TableName": "u", "Key": {"pk": {"S": "a"}}, "UpdateExpression": expression}
            request["ExpressionAttributeValues"] = {f":{name}": _VALUES[f":{name}"] for name in values}
            if names:
                request["ExpressionAttributeNames"] = names
            try:
                seen.append(dynamodb.update_item(**request, ReturnValues="ALL_NEW")["Attributes"])
            except dynamodb.exceptions.ClientError as refused:
                seen.append((refused.response["Error"]["Code"], refused.response["Error"]["Message"]))
    return seen


def test_update_expressions_are_answered_as_moto_answers_them_from_trees_kept_unchanged() -> None:
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    update_expressions = moto_update_expressions.PATCH
    by_moto = _updated(patched=False)
    assert {type(answer) for answer in by_moto} == {dict, tuple}  # some applied, some refused
    moto_update_expressions.forget()
    assert _updated(patched=True) == by_moto
    with _moto_s_own_update_expressions():
        fresh = {expression: _tree_shape(UpdateExpressionParser.make(expression)) for expression, *_ in _UPDATES[:-1]}
    update_expressions.apply()
    try:
        for expression, shape in fresh.items():
            kept = UpdateExpressionParser.make(expression)
            assert kept is UpdateExpressionParser.make(expression), expression  # read from the kept tree
            assert _tree_shape(kept) == shape, f"moto changed the tree it handed out: {expression}"
    finally:
        update_expressions.undo()


def test_a_validation_pass_builds_its_map_of_node_types_once() -> None:
    from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, ExpressionAttributeValue
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    class Counting(DepthFirstTraverser):
        built = 0

        def _processing_map(self) -> dict:
            Counting.built += 1
            return {ExpressionAttributeValue: lambda node: node}

    tree = UpdateExpressionParser.make("SET a = :one, b = :two REMOVE c")
    moto_update_expressions.PATCH.apply()
    try:
        assert Counting().traverse(tree) is tree
    finally:
        moto_update_expressions.PATCH.undo()
    assert Counting.built == 1


def test_the_clause_count_pass_counts_each_node_s_clauses_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's pass asked every nested UpdateExpression (each clause and action is one) for all its
    clauses again: quadratic in the expression's length."""
    from moto.dynamodb.exceptions import TooManyClauses
    from moto.dynamodb.parsing.ast_nodes import Node
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser
    from moto.dynamodb.parsing.validators import ActionCountValidator

    fine = UpdateExpressionParser.make("SET a = :one, b = list_append(b, :two) REMOVE c, d ADD e :one DELETE f :s")
    twice = UpdateExpressionParser.make("SET a = :one REMOVE c SET b = :two")
    moto_update_expressions.PATCH.apply()
    try:
        monkeypatch.setattr(Node, "find_clauses", lambda *_: pytest.fail("a subtree's clauses were searched"))
        assert ActionCountValidator().traverse(fine) is fine
        with pytest.raises(TooManyClauses, match="SET"):
            ActionCountValidator().traverse(twice)
    finally:
        moto_update_expressions.PATCH.undo()


def test_the_validator_s_copy_of_a_tree_is_deepcopy_s_without_its_round_per_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """moto's validator deep-copies the kept tree at every UpdateItem: deepcopy's generic
    __reduce_ex__/_reconstruct per node was a tenth of an UpdateItem-heavy file's CPU."""
    from moto.dynamodb.parsing.ast_nodes import Node
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    expression, *_ = _UPDATES[0]
    with _moto_s_own_update_expressions():
        tree = UpdateExpressionParser.make(expression)
        by_deepcopy = copy.deepcopy(tree)
    moto_update_expressions.PATCH.apply()
    try:
        monkeypatch.setattr(copy, "_reconstruct", lambda *_: pytest.fail("a node was copied by deepcopy's round"))
        twin = copy.deepcopy(tree)
    finally:
        moto_update_expressions.PATCH.undo()

    def nodes(node: Any) -> list[Any]:
        below = [nodes(child) for child in node.children or () if isinstance(child, Node)]
        return [node, *(found for each in below for found in each)]

    assert _tree_shape(twin) == _tree_shape(by_deepcopy) == _tree_shape(tree)
    assert [vars(node).keys() for node in nodes(twin)] == [vars(node).keys() for node in nodes(by_deepcopy)]
    assert not {id(node) for node in nodes(twin)} & {id(node) for node in nodes(tree)}  # every node new
    assert twin.parent is None
    for node in nodes(twin)[1:]:
        assert node in node.parent.children  # each parent is the copy's, holding it
        assert node.type == type(node).__name__


def test_a_validation_pass_asks_each_node_type_once_whether_it_processes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's Node is an ABC: its walk's isinstance checks went through ABCMeta at every node."""
    from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, ExpressionAttributeValue, Node
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    seen: list[Any] = []

    class Values(DepthFirstTraverser):
        def _processing_map(self) -> dict:
            return {ExpressionAttributeValue: lambda node: seen.append(node.get_value_name()) or node}

    tree = UpdateExpressionParser.make("SET a = :one, b = :two, c = :three REMOVE d, e, f")
    checks = collections.Counter()
    real = type(Node).__instancecheck__

    def counted(cls: type, instance: Any) -> bool:
        checks[type(instance)] += 1
        return real(cls, instance)

    moto_update_expressions.PATCH.apply()
    try:
        monkeypatch.setattr(type(Node), "__instancecheck__", counted)
        assert Values().traverse(tree) is tree
    finally:
        moto_update_expressions.PATCH.undo()
    assert seen == [":one", ":two", ":three"]
    assert max(checks.values()) <= 4, checks  # a node type's answers, once: Node, the map, the pass's types


def test_canary_moto_s_passes_process_nodes_only_as_depth_first_traverser_does() -> None:
    """The patched walk calls a pass's processor from its map, as DepthFirstTraverser.process and
    nodes_to_be_processed pick it, without calling either: a moto pass with its own would be bypassed."""
    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser

    passes, found = [DepthFirstTraverser], []
    while passes:
        found.append(kind := passes.pop())
        passes += kind.__subclasses__()
    own = [
        f"{kind.__qualname__}.{name}"
        for kind in found
        if kind.__module__.startswith("moto.") and kind is not DepthFirstTraverser
        for name in ("process", "nodes_to_be_processed")
        if name in vars(kind)
    ]
    assert validators.ActionCountValidator in found  # moto's passes are among those looked at
    assert own == []


# --- action_names ---------------------------------------------------------------------------------


def _response_classes() -> list[type]:
    from moto.core.responses import BaseResponse
    from moto.dynamodb.responses import DynamoHandler
    from moto.events.responses import EventsHandler
    from moto.s3.responses import S3Response
    from moto.sqs.responses import SQSResponse
    from moto.stepfunctions.responses import StepFunctionResponse

    return [BaseResponse, DynamoHandler, EventsHandler, S3Response, SQSResponse, StepFunctionResponse]


def test_action_names_answer_as_moto_s_list_of_the_class_s_functions() -> None:
    from infra.local.moto_patches.action_names import FunctionNames

    own = PATCHES["action_names"].targets()["moto.core.responses.method_names_from_class"]
    for response in _response_classes():
        listed = own(response)
        assert "update_item" in listed or response.__name__ != "DynamoHandler"  # the list has the actions
        names = {*dir(response), *dir(type(response)), "not_an_action", "", "mro", "__init__", "__dict__"}
        for name in sorted(names):
            assert (name in FunctionNames(response)) == (name in listed), f"{response.__name__}.{name}"


def test_moto_serves_a_request_without_listing_the_response_class_s_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        monkeypatch.setattr(inspect, "getmembers", lambda *_, **__: pytest.fail("the class's functions were listed"))
        assert dynamodb.list_tables()["TableNames"] == []
        with pytest.raises(dynamodb.exceptions.ResourceNotFoundException):
            dynamodb.describe_table(TableName="nowhere")


def test_canary_moto_only_asks_whether_the_action_is_among_the_class_s_functions() -> None:
    """Canary of `action_names`: call_action is the one caller and only tests membership."""
    from moto.core import responses

    source = inspect.getsource(responses)
    assert source.count("method_names_from_class(") == 1
    call_action = inspect.getsource(responses.BaseResponse.call_action)
    assert "method_names = method_names_from_class(self.__class__)" in call_action
    assert len(re.findall(r"\bmethod_names\b", call_action)) == 2 and "if action in method_names:" in call_action


# --- callback_responses ---------------------------------------------------------------------------


def _registered_with_responses() -> list[Any]:
    from moto.core.models import responses_mock

    return responses_mock.registered()


def _made_of(response: Any) -> dict[str, Any]:
    """Everything a response holds but the record of the calls it answered."""
    return {name: value for name, value in vars(response).items() if name != "_calls"}


@contextmanager
def _moto_s_own_callback_responses() -> Iterator[None]:
    """moto's own CallbackResponse for the block, inside the suite's mock_aws (which applies the
    `callback_responses` patch, tests/conftest.py: applied here first, a start only counts it)."""
    import moto.core.models as models

    patch = PATCHES["callback_responses"]
    own = patch.targets()["moto.core.models.CallbackResponse"]
    patch.apply()
    try:
        with mock.patch.object(models, "CallbackResponse", own):
            yield
    finally:
        patch.undo()


def test_each_start_registers_moto_s_responses_again_with_no_call_recorded() -> None:
    import requests

    with _moto_s_own_callback_responses(), mock_aws():
        by_moto = [_made_of(response) for response in _registered_with_responses()]
    starts = []
    for _ in range(2):
        with mock_aws():
            registered = _registered_with_responses()
            assert [_made_of(response) for response in registered] == by_moto  # what moto makes, in its order
            assert [len(response.calls) for response in registered] == [0] * len(registered)
            assert requests.get("https://s3.us-east-1.amazonaws.com/", timeout=5).status_code == 200
            assert sum(len(response.calls) for response in registered) == 1  # recorded where it matched
            starts.append(registered)
    first, second = starts
    assert all(kept is again for kept, again in zip(first, second, strict=True))  # made once, registered again
    # One object per method and URL pattern: moto lists two patterns twice (elb and elbv2, ses and
    # sesv2), whose second, equal response never matches first, so never answers.
    assert len({id(response) for response in second}) == len({(r.method, r.url.pattern) for r in second}) > 1000


def test_canary_moto_s_start_makes_its_callback_responses_after_dropping_the_last_registry() -> None:
    """Canary of `callback_responses`: the name is called only by `_enable_patching`, after its reset
    dropped the registry holding the last start's objects; a response holds only what its
    constructor made and its record of calls. If responses adds state it gathers, or moto registers
    responses another way, revisit the patch."""
    from moto.core import custom_responses_mock, models

    assert inspect.getsource(models).count("CallbackResponse(") == 2
    own = inspect.getsource(models.MockAWS)  # the file's text: the suite wraps _enable_patching
    enable = own[own.index("    def _enable_patching(") : own.index("    def _disable_patching(")]
    assert enable.count("CallbackResponse(") == 2
    assert "if reset:\n            self.reset()" in enable and enable.index("self.reset()") < enable.index(
        "CallbackResponse("
    )
    assert "reset_responses_mock(responses_mock)" in inspect.getsource(models.MockAWS.reset)
    assert "_nested_count == 1:\n                self._enable_patching(" in own  # under _mock_init_lock
    assert "with MockAWS._mock_init_lock:" in inspect.getsource(models.MockAWS.start)
    made = custom_responses_mock.CallbackResponse(method="GET", url=re.compile("https://x"), callback=print)
    assert sorted(vars(made)) == [
        "_calls", "body", "callback", "content_type", "match", "method", "passthrough", "status", "stream", "url",
    ]  # fmt: skip
    assert (made.match, made.passthrough) == ((), False)


# --- batch_package: moto.batch's own body (its models, and with them moto.ec2) runs at first use --------


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package shaped as moto.batch: its body imports a heavy module and takes a name from it; a
    light submodule imports a sibling of its own. sys.heavy_runs counts the heavy module's runs."""
    root = tmp_path / "deferred_pkg_for_test"
    root.mkdir()
    (root / "__init__.py").write_text("from .heavy import backends  # noqa: F401\n")
    heavy = "import sys\nfrom .utils import Status\nsys.heavy_runs += 1\nbackends = {'x': Status}\n"
    (root / "heavy.py").write_text(heavy)
    (root / "utils.py").write_text("from .exceptions import Refused\nclass Status:\n    pass\n")
    (root / "exceptions.py").write_text("class Refused(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "heavy_runs", 0, raising=False)
    yield "deferred_pkg_for_test"
    for name in [name for name in sys.modules if name.split(".")[0] == "deferred_pkg_for_test"]:
        del sys.modules[name]


def _deferring(name: str) -> MotoPatch:
    return MotoPatch("deferring", changes="", expects={}, replacements=dict, deferred=(name,))


def test_a_deferred_package_s_submodule_imports_without_its_body_which_runs_once_at_its_first_name(
    package: str,
) -> None:
    patch = _deferring(package)
    patch.apply()
    try:
        from deferred_pkg_for_test.utils import Refused, Status

        assert issubclass(Refused, Exception) and sys.heavy_runs == 0
        assert f"{package}.heavy" not in sys.modules
        import deferred_pkg_for_test

        assert deferred_pkg_for_test.backends == {"x": Status}  # the body ran, with the submodule already there
        assert sys.heavy_runs == 1
        assert type(deferred_pkg_for_test) is type(sys)  # an ordinary module from then on
        with pytest.raises(AttributeError):
            deferred_pkg_for_test.missing  # noqa: B018
        assert importlib.import_module(package).backends is sys.modules[f"{package}.heavy"].backends
    finally:
        patch.undo()
    assert sys.modules[package] is deferred_pkg_for_test and sys.heavy_runs == 1  # once run, it is the package


def test_the_last_undo_takes_out_a_deferred_package_whose_body_never_ran(package: str) -> None:
    patch = _deferring(package)
    patch.apply()
    patch.apply()
    from deferred_pkg_for_test.utils import Status

    patch.undo()
    assert type(sys.modules[package]).__name__ == "_Deferred"
    patch.undo()
    assert package not in sys.modules and sys.heavy_runs == 0
    import deferred_pkg_for_test  # as without the patch: the body runs at the import

    assert sys.heavy_runs == 1 and deferred_pkg_for_test.backends == {"x": Status}  # the same submodule's names


def test_a_package_already_imported_is_left_as_it_is(package: str) -> None:
    import deferred_pkg_for_test

    patch = _deferring(package)
    patch.apply()
    patch.undo()
    assert sys.modules[package] is deferred_pkg_for_test and sys.heavy_runs == 1


def test_canary_moto_s_interpreter_imports_only_batch_s_utils_and_moto_loads_its_batch_backend_on_use() -> None:
    """Canary of `batch_package`, in a fresh interpreter (this one has long imported moto's): with
    the patch applied, moto's Step Functions interpreter imports moto.batch.utils (and its
    exceptions) and nothing of moto.ec2; moto's get_backend("batch") runs moto.batch's own body and
    answers its models' backends. If moto's interpreter needs more of Batch, revisit the patch."""
    code = """
import json, sys
from infra.local.moto_patches import batch_package
batch_package.PATCH.apply()
import moto.stepfunctions.parser.models
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_batch
before = sorted(name for name in sys.modules if name.startswith(("moto.batch", "moto.ec2", "moto.ecs")))
from moto.backends import get_backend
backends = get_backend("batch")
import moto.batch.models
print(json.dumps({"before": before, "package": type(sys.modules["moto.batch"]).__name__,
                  "backend": backends is moto.batch.models.batch_backends is sys.modules["moto.batch"].batch_backends,
                  "same_status": state_task_service_batch.JobStatus is moto.batch.models.JobStatus}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert found["before"] == ["moto.batch", "moto.batch.exceptions", "moto.batch.utils"]
    assert found == {**found, "package": "module", "backend": True, "same_status": True}
