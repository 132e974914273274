"""The README runbooks' shell commands, run as written by bash with `aws` and `id` stubbed: their
quoting, their jq filters and the AWS calls they make. (tests/e2e/test_runbooks.py makes the same
calls against the local stack.)"""

from __future__ import annotations

import ast
import functools
import json
import re
import shlex
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
RUNBOOKS = README[README.index("## Runbooks") :].split("\n## ", 1)[0]

needs_jq = pytest.mark.skipif(shutil.which("jq") is None, reason="the runbooks' commands use jq")

# `aws` answers from files named after its service and operation, and records every call;
# `id` (the runbooks' helper) answers a placeholder per logical id.
STUBS = """
set -euo pipefail
id() { echo "id-$1"; }
aws() {
  printf '%q ' "$@" >> calls.log; echo >> calls.log
  if [ -f "answer-$1-$2" ]; then cat "answer-$1-$2"; fi
}
"""


def runbook_blocks(alarm: str) -> list[str]:
    """The ```sh blocks of the runbook entry whose heading names `alarm`."""
    (entry,) = [entry for entry in RUNBOOKS.split("\n### ")[1:] if f"`{alarm}`" in entry.splitlines()[0]]
    return re.findall(r"```sh\n(.*?)```", entry, flags=re.DOTALL)


def run(script: str, tmp_path: Path, answers: dict[str, str]) -> list[list[str]]:
    """Run `script` after the stubs in `tmp_path`; the aws calls it made, as argument lists."""
    for name, text in answers.items():
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["bash", "-c", STUBS + script], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    log = tmp_path / "calls.log"
    return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


def argument(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def test_every_runbook_code_block_is_valid_bash():
    blocks = re.findall(r"```sh\n(.*?)```", RUNBOOKS, flags=re.DOTALL)
    assert len(blocks) >= 6
    for block in blocks:
        checked = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True, check=False)
        assert checked.returncode == 0, f"{checked.stderr}\n{block}"


@needs_jq
def test_the_outbox_failure_recovery_hands_the_batchs_records_to_the_outbox_again(tmp_path: Path):
    # Before: the recovery's jq started a workflow for each INSERT and finished each cancel, and
    # left out the other records the outbox starts a workflow for: an order released from a hold
    # (its workflow resumes it) and one an edit or a reject sent back to `authorized` (sourced
    # again). Handed to the outbox, each record starts what it started, under the same name.
    look, recover, _ = runbook_blocks("OutboxFailuresAlarm")
    batch = {
        "shardId": "shardId-1",
        "startSequenceNumber": "900",
        "endSequenceNumber": "1000",
        "batchSize": 3,
        "streamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2026",
    }
    failed = {"Messages": [{"Body": json.dumps({"DDBStreamBatchInfo": batch}), "ReceiptHandle": "handle-1"}]}

    def record(sequence: str, order_id: str, event: str = "INSERT", old: str = "", new: str = "") -> dict:
        data = {"SequenceNumber": sequence, "Keys": {"id": {"S": order_id}}}
        if event == "MODIFY":
            data |= {"OldImage": {"status": {"S": old}}, "NewImage": {"status": {"S": new}}}
        return {"eventName": event, "dynamodb": data}

    in_batch = [
        record("900", "ord_a"),
        record("950", "ord_b", "MODIFY", "on_hold", "authorized"),  # a release
        record("999", "ord_c", "MODIFY", "allocated", "authorized"),  # sent back ("999" > "1000" as text)
        record("1000", "ord_d", "MODIFY", "allocated", "cancelled"),
    ]
    after = [record("1001", "ord_e"), record("10000", "ord_f")]  # after the batch: the stream delivered them
    calls = run(
        look + recover,
        tmp_path,
        {
            "answer-sqs-receive-message": json.dumps(failed),
            "answer-dynamodbstreams-get-shard-iterator": "iterator-1\n",
            "answer-dynamodbstreams-get-records": json.dumps({"Records": in_batch + after}),
            "answer-lambda-invoke": json.dumps({"StatusCode": 200}),
            "out.json": json.dumps({"batchItemFailures": []}),  # what the invoke writes on AWS
        },
    )

    by_operation: dict[str, list[list[str]]] = {}
    for call in calls:
        by_operation.setdefault(f"{call[0]} {call[1]}", []).append(call)
    (shard,) = by_operation["dynamodbstreams get-shard-iterator"]
    assert argument(shard, "--stream-arn") == batch["streamArn"]
    assert argument(shard, "--shard-id") == "shardId-1"
    assert argument(shard, "--shard-iterator-type") == "AT_SEQUENCE_NUMBER"
    assert argument(shard, "--sequence-number") == "900"
    assert argument(by_operation["dynamodbstreams get-records"][0], "--shard-iterator") == "iterator-1"
    assert "stepfunctions start-execution" not in by_operation
    (invoke,) = by_operation["lambda invoke"]
    assert argument(invoke, "--function-name") == "id-OutboxFunction"
    payload = argument(invoke, "--payload")
    assert payload.startswith("file://")
    assert json.loads((tmp_path / payload.removeprefix("file://")).read_text()) == {"Records": in_batch}
    (delete,) = by_operation["sqs delete-message"]
    assert (argument(delete, "--queue-url"), argument(delete, "--receipt-handle")) == (
        "id-OutboxFailureQueue",
        "handle-1",
    )


# `aws dynamodbstreams get-records` answering the page its iterator names (page-<iterator>), as
# GetRecords does: at most 1,000 records or 1 MB a page, at times none on a shard that holds more.
PAGED = """
aws() {
  printf '%q ' "$@" >> calls.log; echo >> calls.log
  if [ "$1 $2" = "dynamodbstreams get-records" ]; then cat "page-$4"
  elif [ -f "answer-$1-$2" ]; then cat "answer-$1-$2"; fi
}
"""


def stream_failure(start: str, end: str) -> str:
    batch = {"shardId": "shardId-1", "startSequenceNumber": start, "endSequenceNumber": end, "streamArn": "arn:s"}
    return json.dumps({"Messages": [{"Body": json.dumps({"DDBStreamBatchInfo": batch}), "ReceiptHandle": "handle-1"}]})


def inserted(number: int) -> dict:
    return {"eventName": "INSERT", "dynamodb": {"SequenceNumber": str(number), "Keys": {"id": {"S": f"ord_{number}"}}}}


@needs_jq
def test_the_stream_failure_recovery_reads_every_page_up_to_the_batchs_last_record_and_hands_it_over_in_batches(
    tmp_path: Path,
):
    # Before: one get-records page was read, so a batch spanning more than one (a filtered
    # mapping's batch passes over what its filter leaves out; a page holds 1,000 records or 1 MB)
    # was replayed without its later records, and the record deleted all the same.
    look, recover, _ = runbook_blocks("OutboxFailuresAlarm")
    pages = {
        "page-iterator-1": {"Records": [inserted(n) for n in range(100, 130)], "NextShardIterator": "iterator-2"},
        "page-iterator-2": {"Records": [], "NextShardIterator": "iterator-3"},  # none, the shard holds more
        "page-iterator-3": {"Records": [inserted(n) for n in range(130, 160)], "NextShardIterator": "iterator-4"},
    }
    calls = run(
        PAGED + look + recover,
        tmp_path,
        {
            "answer-sqs-receive-message": stream_failure("100", "140"),
            "answer-dynamodbstreams-get-shard-iterator": "iterator-1\n",
            "out.json": json.dumps({"batchItemFailures": []}),
            **{name: json.dumps(page) for name, page in pages.items()},
        },
    )

    read = [argument(call, "--shard-iterator") for call in calls if call[:2] == ["dynamodbstreams", "get-records"]]
    assert read == ["iterator-1", "iterator-2", "iterator-3"]  # not on past the page with the last record
    invokes = [call for call in calls if call[:2] == ["lambda", "invoke"]]
    files = [tmp_path / argument(call, "--payload").removeprefix("file://") for call in invokes]
    parts = [json.loads(file.read_text()) for file in files]
    assert [[r["dynamodb"]["SequenceNumber"] for r in part["Records"]] for part in parts] == [
        [str(n) for n in range(100, 125)],
        [str(n) for n in range(125, 141)],
    ]
    assert [call[:2] for call in calls].count(["sqs", "delete-message"]) == 1


@needs_jq
def test_the_stream_failure_recovery_stops_at_a_batch_that_fails_again_and_keeps_the_record(tmp_path: Path):
    look, recover, _ = runbook_blocks("OutboxFailuresAlarm")
    page = {"Records": [inserted(n) for n in range(100, 160)], "NextShardIterator": "iterator-2"}
    calls = run(
        PAGED + look + recover,
        tmp_path,
        {
            "answer-sqs-receive-message": stream_failure("100", "159"),
            "answer-dynamodbstreams-get-shard-iterator": "iterator-1\n",
            "page-iterator-1": json.dumps(page),
            "out.json": json.dumps({"batchItemFailures": [{"itemIdentifier": "101"}]}),  # what the invoke writes
        },
    )

    operations = [call[:2] for call in calls]
    assert operations.count(["lambda", "invoke"]) == 1  # the later records wait behind the one that failed
    assert ["sqs", "delete-message"] not in operations  # the record stays, to replay once that is fixed


@needs_jq
def test_past_the_streams_hours_the_orders_whose_start_failed_are_started_again_from_the_outbox_lines(
    tmp_path: Path,
):
    # The failure record names no order, and the stream's records are gone after 24 hours: a cancel
    # whose clean-up never started kept its stock and authorization, and nothing found it. The
    # outbox's line for each record whose start failed (functions/outbox/app.py) names the order
    # and whether it was a cancel's clean-up; each is started again once, from the failure's time on.
    look, _, past = runbook_blocks("OutboxFailuresAlarm")
    batch = {"approximateArrivalOfFirstRecord": "2026-12-01T10:00:00.000Z", "streamArn": "arn:stream"}
    failed = {"Messages": [{"Body": json.dumps({"DDBStreamBatchInfo": batch}), "ReceiptHandle": "handle-1"}]}
    message = "order workflow not started: the stream retries it"

    def line(order_id: str, rerun: str | None, finish_cancel: bool) -> str:
        return json.dumps({"level": "WARNING", "message": message, "order_id": order_id, "rerun": rerun,
                           "finish_cancel": finish_cancel, "error": "TransientError"})  # fmt: skip

    logged = [line("ord_a", None, False), line("ord_b", "cancel-v6", True), line("ord_a", None, False)]  # retried
    calls = run(
        look + past,
        tmp_path,
        {
            "answer-sqs-receive-message": json.dumps(failed),
            "answer-logs-filter-log-events": json.dumps(logged),
        },
    )

    (read,) = [call for call in calls if call[:2] == ["logs", "filter-log-events"]]
    assert argument(read, "--log-group-name") == "/aws/lambda/id-OutboxFunction"
    assert argument(read, "--start-time") == str(int(datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()) * 1000)
    assert argument(read, "--filter-pattern") == f'{{ $.message = "{message}" }}'
    starts = [call for call in calls if call[:2] == ["stepfunctions", "start-execution"]]
    assert {argument(call, "--state-machine-arn") for call in starts} == {"id-OrderWorkflow"}
    inputs = [json.loads(argument(call, "--input")) for call in starts]
    assert sorted(inputs, key=lambda started: started["order_id"]) == [
        {"order_id": "ord_a"},
        {"order_id": "ord_b", "finish_cancel": True},
    ]


@needs_jq
def test_the_import_dead_letter_replay_by_hand_keeps_the_messages_attributes(tmp_path: Path):
    by_hand = next(block for block in runbook_blocks("ImportDeadLetterAlarm") if "send-message" in block)
    body = json.dumps({"external_id": "D-2", "channel": "mkt"})
    attributes = {
        "import_id": {"StringValue": "imp_1", "DataType": "String"},
        "line": {"StringValue": "3", "DataType": "Number"},
    }
    dead = {"Messages": [{"Body": body, "ReceiptHandle": "handle-2", "MessageAttributes": attributes}]}

    receive, send, delete = run(by_hand, tmp_path, {"answer-sqs-receive-message": json.dumps(dead)})

    assert receive[:2] == ["sqs", "receive-message"] and argument(receive, "--message-attribute-names") == "All"
    assert argument(send, "--queue-url") == "id-ImportQueue"
    assert argument(send, "--message-body") == body
    assert json.loads(argument(send, "--message-attributes")) == attributes
    assert argument(delete, "--queue-url") == "id-ImportDeadLetterQueue"
    assert argument(delete, "--receipt-handle") == "handle-2"


@needs_jq
def test_the_split_failure_replay_invokes_the_splitter_with_the_original_event(tmp_path: Path):
    (recover,) = runbook_blocks("ImportSplitFailureAlarm")
    event = {"Records": [{"s3": {"bucket": {"name": "imports"}, "object": {"key": "incoming/a b.csv"}}}]}
    record = {"requestContext": {"condition": "RetriesExhausted"}, "requestPayload": event}
    received = {"Messages": [{"Body": json.dumps(record), "ReceiptHandle": "handle-3"}]}
    (tmp_path / "record.json").write_text(json.dumps(received))

    invoke, delete = run(recover, tmp_path, {})

    assert argument(invoke, "--function-name") == "id-ImportSplitterFunction"
    assert argument(invoke, "--payload") == "file://event.json"
    assert json.loads((tmp_path / "event.json").read_text()) == event
    assert argument(delete, "--receipt-handle") == "handle-3"


def test_the_fields_a_runbook_says_a_log_line_names_are_logged_and_shown_by_the_logs_helper():
    # Before: OverCapturesNotRefundedAlarm's runbook said its line names `order_id` and `amount`,
    # but the `logs` helper's query showed no `amount`: the amount to give back was not in its answer.
    shown, logged = helper_fields(), logged_fields()
    named = re.findall(r"the line names ((?:`\w+`(?:, | and )?)+)", RUNBOOKS)
    assert named
    for names in named:
        fields = set(re.findall(r"`(\w+)`", names))
        assert fields <= logged, names
        assert "@message" in shown or fields <= shown, names


def helper_fields() -> set[str]:
    """The fields the `logs` helper's Logs Insights query shows (`@message`: the whole line)."""
    (fields,) = re.findall(r'--query-string "fields ([^\n|]*)', RUNBOOKS)
    return {field.strip() for field in fields.split(",")}


def test_every_logical_id_a_runbook_command_names_is_a_resource_of_the_template():
    from infra.local.template import load_template

    resources = load_template(ROOT / "template.yaml")["Resources"]
    prose = re.sub(r"```sh\n.*?```", "", RUNBOOKS, flags=re.DOTALL)
    code = "\n".join(re.findall(r"```sh\n(.*?)```", RUNBOOKS, flags=re.DOTALL) + re.findall(r"`([^`\n]+)`", prose))
    named = set(re.findall(r'(?:^|[\s(;|&])id "?([A-Z]\w*)', code))
    logged = set(re.findall(r'(?:^|[\s(;|&])logs "?([A-Z]\w*)', code))
    assert {"ApiFunction", "OutboxFailureQueue"} <= named and "ImportWorkerFunction" in logged
    assert sorted(named - set(resources)) == []
    assert sorted(name for name in logged if resources.get(name, {}).get("Type") != "AWS::Serverless::Function") == []


# --- The log lines the README's Logs Insights filters look for --------------------------------------

LEVELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR", "exception": "ERROR"}


def _written(message: ast.expr) -> list[str]:
    """The messages `message` (a call's argument) may be: a `%s` stays as written, an f-string's
    value is a NUL, so no filter matches across it; either branch of a conditional expression."""
    if isinstance(message, ast.Constant) and isinstance(message.value, str):
        return [message.value]
    if isinstance(message, ast.JoinedStr):
        return ["".join(part.value if isinstance(part, ast.Constant) else "\0" for part in message.values)]
    if isinstance(message, ast.IfExp):
        return _written(message.body) + _written(message.orelse)
    return []


@functools.cache
def source_calls() -> tuple[ast.Call, ...]:
    """Every call in core/, functions/ and plugins/, file by file, each in ast.walk's order: read
    once per test process (the source does not change while the tests run), where the messages'
    test and the fields' two each parsed and walked the whole tree again (0.5-1.5 s each)."""
    return tuple(
        node
        for folder in ("core", "functions", "plugins")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
    )


def logged_messages() -> list[tuple[str, str]]:
    """(level, message) of each logger call in core/, functions/ and plugins/ whose message is
    written out, and of each failure_logged call (functions/failure_logs.py), which logs at ERROR,
    or at WARNING for a plugin that raised."""
    found = []
    for call in source_calls():
        if isinstance(call.func, ast.Name) and call.func.id == "failure_logged" and len(call.args) > 1:
            found.extend((level, text) for text in _written(call.args[1]) for level in ("ERROR", "WARNING"))
        elif isinstance(call.func, ast.Attribute) and call.args and call.func.attr in LEVELS:
            found.extend((LEVELS[call.func.attr], text) for text in _written(call.args[0]))
    return found


def readme_filters() -> list[tuple[str, str]]:
    """(function logical id, filter) of each `logs <Function> '<filter>'` the README tells an operator to run."""
    return [(name, " ".join(text.split())) for name, text in re.findall(r"\blogs (\w+) '([^']*)'", README)]


def test_every_message_a_logs_insights_filter_of_the_readme_looks_for_is_logged_by_the_code_at_that_level():
    from core.models import CREDIT_NOT_USED

    # A phrase a line gets from its arguments, and the line's own words around it: a refund's reason
    # (`exchange <id> did not use its credit`) fills that message's `(%s)`.
    through_arguments = {CREDIT_NOT_USED: "not given back (%s): left to a person"}
    logged = logged_messages()
    assert ("ERROR", "unhandled error") in logged and ("WARNING", "AWS busy") in logged
    # Through failure_logged, and a conditional message's either branch.
    assert ("WARNING", "plugin failed") in logged
    assert ("ERROR", "import message failed; it goes to the import dead-letter queue") in logged
    filters = readme_filters()
    assert len(filters) >= 8
    for function, query in filters:
        level = re.search(r'level = "(\w+)" and', query)
        levels = {level.group(1)} if level else set(LEVELS.values())
        for exact in re.findall(r'message = "([^"]+)"', query):
            assert any(message == exact for at, message in logged if at in levels), (function, query)
        for part in re.findall(r"message like /([^/]+)/", query):
            part = through_arguments.get(part, part)
            assert any(part in message for at, message in logged if at in levels), (function, query)


# --- Queue policies the runbooks' sends must get past -----------------------------------------------


def _refs(value: object) -> set[str]:
    """Every name a `Ref` inside `value` names."""
    if isinstance(value, dict):
        return {value["Ref"]} if set(value) == {"Ref"} else {n for v in value.values() for n in _refs(v)}
    if isinstance(value, list):
        return {n for v in value for n in _refs(v)}
    return set()


def test_a_runbook_that_sends_to_a_queue_whose_policy_refuses_unnamed_senders_says_whom_to_run_it_as():
    # moto enforces no queue policy. On AWS, ImportQueuePolicy denies sqs:SendMessage to every
    # principal but the splitter's role and the ARNs of ImportQueueSenders, an administrator too
    # (an explicit Deny): the import dead-letter runbook's replay (`send-message`, or a message move
    # task, which sends as its caller) was AccessDenied for an on-call who was not named there, and
    # the runbook never said so.
    from infra.local.template import load_template

    template = load_template(ROOT / "template.yaml")
    resources, parameters = template["Resources"], set(template.get("Parameters", {}))
    guarded: dict[str, set[str]] = {}  # queue -> the parameters naming who may send to it
    for policy in (r for r in resources.values() if r["Type"] == "AWS::SQS::QueuePolicy"):
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement.get("Action") if isinstance(statement, dict) else None
            actions = actions if isinstance(actions, list) else [actions]
            condition = (statement.get("Condition") or {}) if isinstance(statement, dict) else {}
            if statement.get("Effect") == "Deny" and "sqs:SendMessage" in actions and "ArnNotEquals" in condition:
                for queue in _refs(policy["Properties"]["Queues"]):
                    guarded.setdefault(queue, set()).update(_refs(condition["ArnNotEquals"]) & parameters)
    assert guarded == {"ImportQueue": {"ImportQueueSenders"}}
    # A message move task from a queue's dead-letter queue sends back to it.
    dead_letters = {
        queue: resources[queue]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for queue in guarded
    }
    checked = 0
    for entry in RUNBOOKS.split("\n### ")[1:]:
        code = "\n".join(re.findall(r"```sh\n(.*?)```", entry, flags=re.DOTALL))
        for queue, names in guarded.items():
            sends = re.search(rf"send-message(-batch)? --queue-url \$\(id {queue}\)", code)
            moves = re.search(rf"start-message-move-task[^\n]*(\\\n[^\n]*)*\$\(id {dead_letters[queue]}\)", code)
            if sends or moves:
                checked += 1
                assert all(f"`{name}`" in entry for name in names), (entry.splitlines()[0], names)
    assert checked


def test_the_lost_failure_record_runbook_checks_each_functions_own_failure_queue(tmp_path: Path):
    # The runbook's look names, for each function, the queue its failures go to, then asks IAM whether
    # the function's role may send there: the pairs must be the template's, and the calls well formed.
    from infra.local.template import load_template

    resources = load_template(ROOT / "template.yaml")["Resources"]
    destinations = {}
    for name, function in resources.items():
        props = function.get("Properties") or {}
        configs = [(props.get("EventInvokeConfig") or {}).get("DestinationConfig") or {}]
        events = (props.get("Events") or {}).values()
        configs += [event["Properties"].get("DestinationConfig") or {} for event in events]
        for config in configs:
            if config.get("OnFailure"):
                destinations.setdefault(name, set()).add(config["OnFailure"]["Destination"]["Fn::GetAtt"][0])
    (look,) = runbook_blocks("OutboxDestinationDeliveryFailuresAlarm")
    pairs = re.findall(r"(\w+Function) (\w+Queue)", look.splitlines()[0].replace("FN=", "").replace("QUEUE=", ""))
    assert {function: {queue} for function, queue in pairs} == destinations

    calls = run(
        look,
        tmp_path,
        {
            "answer-lambda-get-function-configuration": "arn:aws:iam::123456789012:role/outbox-role\n",
            "answer-sqs-get-queue-attributes": "arn:aws:sqs:us-east-1:123456789012:outbox-failures\n",
        },
    )
    (simulate,) = [call for call in calls if call[:2] == ["iam", "simulate-principal-policy"]]
    assert argument(simulate, "--policy-source-arn") == "arn:aws:iam::123456789012:role/outbox-role"
    assert argument(simulate, "--resource-arns") == "arn:aws:sqs:us-east-1:123456789012:outbox-failures"
    assert argument(simulate, "--action-names") == "sqs:SendMessage"
    mappings = [call for call in calls if call[:2] == ["lambda", "list-event-source-mappings"]]
    assert mappings and argument(mappings[0], "--function-name") == "id-OutboxFunction"


def logged_fields() -> set[str]:
    """The fields the code puts on its log lines: each `extra=` dict's keys of a logger call, each
    keyword of a failure_logged call and of `append_context_keys`, and powertools' `exception`
    (the traceback of a line logged with `exc_info`)."""
    found = {"exception"}
    for call in source_calls():
        name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
        if name in ("failure_logged", "append_context_keys"):
            found.update(keyword.arg for keyword in call.keywords if keyword.arg)
        elif name in LEVELS:
            for keyword in call.keywords:
                if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
                    found.update(
                        key.value
                        for key in keyword.value.keys
                        if isinstance(key, ast.Constant) and isinstance(key.value, str)
                    )
    return found


def test_the_logs_helper_shows_every_field_the_code_logs():
    # Logs Insights answers only the fields a query's `fields` names. The helper named 15, so the
    # runbooks' lines came back without what they are read for: `access` (the read to queue again,
    # AccessLogReadsNotQueuedAlarm), `import_id` and `line` (ImportDeadLetterAlarm),
    # `notification_id`, `pass`, `part`, `return_id`, and every traceback (`exception`).
    shown = helper_fields()
    logged = logged_fields()
    assert {"access", "import_id", "notification_id", "order_id", "webhook_id"} <= logged
    assert "@message" in shown or sorted(logged - shown) == []


def test_the_logs_helper_answers_once_its_query_has_finished(tmp_path: Path):
    # A Logs Insights query over an hour of a busy function runs for more than a few seconds: the
    # helper slept 5 s and printed whatever get-query-results said then, "Running" and part of the
    # lines (or none), with nothing to tell the operator to ask again.
    (helpers,) = [block for block in re.findall(r"```sh\n(.*?)```", RUNBOOKS, flags=re.DOTALL) if "logs() {" in block]
    # get-query-results answers Running twice, then Complete with the lines.
    statuses = """
sleep() { :; }
aws() {
  printf '%q ' "$@" >> calls.log; echo >> calls.log
  case "$1 $2" in
    "logs start-query") echo query-1 ;;
    "logs get-query-results")
      n=$(grep -c get-query-results calls.log)
      if [ "$n" -le 2 ]; then status=Running; else status=Complete; fi
      if [[ " $* " == *" --query status "* ]]; then echo "$status"
      else printf '{"status": "%s", "results": [[{"field": "@message", "value": "line-%s"}]]}' "$status" "$n"; fi ;;
  esac
}
"""
    script = helpers + statuses + "logs ApiFunction > answer.json\n"
    result = subprocess.run(
        ["bash", "-c", STUBS + script], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads((tmp_path / "answer.json").read_text())
    assert answer["status"] == "Complete" and answer["results"]


def test_the_abandoned_notifications_item_lookup_finds_the_item_from_what_the_api_shows(tmp_path: Path):
    # The runbook built the item's key from the notification's `created_at` as
    # GET /orders/{id}/notifications shows it ("...Z"), but the item's sort key holds
    # datetime.isoformat() ("...+00:00"): the get-item found nothing.
    import jmespath

    from core.notifications import Notification, NotificationKind
    from functions.adapters.notifications import DynamoNotifications

    notification = Notification(
        id="evt_1",
        kind=NotificationKind.SHIPPED,
        order_id="ord_1",
        channel="web",
        to={"email": "a@example.com"},
        subject="Shipped",
        body="Your order shipped.",
        created_at=datetime(2026, 12, 6, 9, 30, 15, 123456, tzinfo=UTC),
    )
    item = DynamoNotifications(client=None, table="catalog")._item(notification)
    shown = json.loads(notification.model_dump_json())  # as the API answers it
    (entry,) = [e for e in RUNBOOKS.split("\n### ")[1:] if "`NotificationsAbandonedAlarm`" in e.splitlines()[0]]
    (command,) = re.findall(r"`(aws dynamodb [^`]*)`", " ".join(entry.split()))
    for name in ("order_id", "notification_id", "created_at"):
        command = command.replace(f"<{name}>", shown["id"] if name == "notification_id" else shown[name])
    (call,) = run(command, tmp_path, {})

    assert argument(call, "--table-name") == "id-CatalogTable"
    if call[1] == "get-item":
        found = [item] if json.loads(argument(call, "--key")) == {"pk": item["pk"], "sk": item["sk"]} else []
    else:
        assert call[1] == "query" and argument(call, "--key-condition-expression") == "pk = :pk"
        assert json.loads(argument(call, "--expression-attribute-values")) == {":pk": item["pk"]}
        found = jmespath.search(argument(call, "--query"), {"Items": [item]})
    assert found == [item]


@needs_jq
def test_the_reads_not_queued_are_queued_again_from_their_log_lines(tmp_path: Path):
    # The runbook said to send each logged `access` object to the queue, but gave no command, and
    # the logs helper's answer held no `access` field to send.
    (helpers,) = [block for block in re.findall(r"```sh\n(.*?)```", RUNBOOKS, flags=re.DOTALL) if "logs() {" in block]
    (requeue,) = runbook_blocks("AccessLogReadsNotQueuedAlarm")
    reads = [
        {"request_id": "r1", "order_id": "ord_1", "at": "2026-12-06T09:00:00Z", "actor": "key_1", "action": "get"},
        {"request_id": "r2", "order_id": "ord_2", "at": "2026-12-06T09:00:01Z", "actor": "key_1", "action": "list"},
    ]
    lines = [
        json.dumps({"level": "ERROR", "message": "read not queued", "access": read, "exception": "Traceback ..."})
        for read in reads
    ]
    results = {
        "status": "Complete",
        "results": [
            [{"field": "@timestamp", "value": "2026-12-06 09:00:02"}, {"field": "@message", "value": line}]
            for line in lines
        ],
    }
    calls = run(
        helpers + 'id() { echo "id-$1"; }\n' + requeue,  # the stub again, over the helper's own
        tmp_path,
        {"answer-logs-start-query": "query-1\n", "answer-logs-get-query-results": json.dumps(results)},
    )

    (query,) = [call for call in calls if call[:2] == ["logs", "start-query"]]
    assert 'message = "read not queued"' in argument(query, "--query-string")
    sends = [call for call in calls if call[:2] == ["sqs", "send-message"]]
    assert {argument(call, "--queue-url") for call in sends} == {"id-AccessLogQueue"}
    assert [json.loads(argument(call, "--message-body")) for call in sends] == reads


@needs_jq
def test_the_bulk_import_sections_replay_sends_the_splitter_the_event_of_the_record_the_runbook_receives(
    tmp_path: Path,
):
    # Before: Bulk import's replay read `.requestPayload` off record.json, which the runbook's Look
    # step writes as `aws sqs receive-message`'s answer (the record is its message's Body): the
    # splitter was invoked with `null` and failed, the import left `failed`.
    from tests.readme_code import section

    (replay,) = re.findall(r"`(aws lambda invoke [^`]*)`", section("## Bulk import"))
    event = {"Records": [{"s3": {"bucket": {"name": "imports"}, "object": {"key": "incoming/orders.csv"}}}]}
    record = {"requestContext": {"condition": "RetriesExhausted"}, "requestPayload": event}
    (look,) = re.findall(r"`(aws sqs receive-message --queue-url\s+\$\(id ImportSplitFailureQueue\) > record.json);",
                         RUNBOOKS)  # fmt: skip
    received = {"Messages": [{"Body": json.dumps(record), "ReceiptHandle": "handle-4"}]}

    _, invoke = run(
        look.replace("\n", " ") + "\n" + replay.replace("\n", " ").replace("<ImportSplitterFunction>", "splitter"),
        tmp_path,
        {"answer-sqs-receive-message": json.dumps(received)},
    )

    assert invoke[:2] == ["lambda", "invoke"] and argument(invoke, "--function-name") == "splitter"
    assert json.loads(argument(invoke, "--payload")) == event
