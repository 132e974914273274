"""template.yaml's security on AWS (issue 10 item 5), checked by walking the template: data kept on
deletion, least-privilege IAM derived from the code, TLS-only buckets, the import queue's senders,
access logs, and WAF as an option."""

from __future__ import annotations

import functools
import inspect
import json
import re
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

from core.aggregates import CUSTOMER_PK, EMAIL_INDEX_PK, FILING_PK, REPORT_CHANNELS_PK, REPORT_PK
from functions.adapters.access_log import ACCESS_LOG_PK, DynamoAccessLog, SqsReadRecorder
from functions.adapters.aggregates import MARKERS_PK, DynamoAggregates
from functions.adapters.api_gateway import ApiGatewayAuthorizerCache, ApiGatewayKeys
from functions.adapters.api_key_lookup import LOOKUP_PK
from functions.adapters.dynamodb import (
    _INDEXES,
    _RETURN_INDEXES,
    HISTORY_PAGE_PK,
    NETWORK_PK,
    PRODUCT_PK,
    SOURCING_RULES_PK,
    DynamoApiKeys,
    DynamoBackorderedOrders,
    DynamoBackorders,
    DynamoCatalog,
    DynamoDuePickups,
    DynamoInventory,
    DynamoKeptBackRefunds,
    DynamoLateOrders,
    DynamoOrders,
    DynamoOrdersOwingCarrier,
    DynamoPendingRefunds,
    DynamoReceivedReturns,
    DynamoReturns,
    DynamoSettlementCaptures,
    DynamoSourcingRules,
    DynamoStalledOrders,
    DynamoUnreceivedReturns,
    DynamoUnsettledAuthorizations,
)
from functions.adapters.imports import (
    IMPORT_PK,
    LIST_PK,
    DynamoImportLedger,
    LambdaSplitContinuation,
    S3ImportFiles,
    SqsOrderQueue,
)
from functions.adapters.labels import S3Labels
from functions.adapters.notifications import NOTIFICATIONS_PK, RETRIES_PK, DynamoNotifications
from functions.adapters.purchasing import (
    DRAFT_LINES_PK,
    DRAFTS_PK,
    PURCHASE_ORDERS_PK,
    REORDERED_PREFIX,
    VENDORS_PK,
    DynamoPurchasing,
)
from functions.adapters.webhooks import (
    DELIVERIES_PK,
    SUBSCRIPTION_ATTRIBUTES,
    WEBHOOKS_PK,
    DynamoWebhooks,
    EventBridgePublisher,
    SqsDeliveryQueue,
)
from functions.adapters.workflow_starter import StepFunctionsReturnStarter, StepFunctionsStarter
from tests.template_iam import (
    API_KEYS,
    RESOURCES,
    TEMPLATE,
    USAGE_PLANS,
    actions,
    granted,
    key_limits,
    key_patterns,
    like,
    listed,
    logical_id,
    scope,
    statements,
)


def of_type(kind: str) -> dict[str, Any]:
    return {name: r for name, r in RESOURCES.items() if r["Type"] == kind}


def parameter_default(name: str) -> Any:
    return TEMPLATE["Parameters"][name]["Default"]


# --- Data survives the stack ------------------------------------------------------------------------


@pytest.mark.parametrize("table", sorted(of_type("AWS::DynamoDB::Table")))
def test_every_table_is_retained_on_deletion_and_replacement_and_protected(table: str):
    resource = RESOURCES[table]

    assert resource["DeletionPolicy"] == "Retain"
    assert resource["UpdateReplacePolicy"] == "Retain"
    assert resource["Properties"]["DeletionProtectionEnabled"] is True


@pytest.mark.parametrize("table", ["OrdersTable", "InventoryTable", "CatalogTable"])
def test_point_in_time_recovery_follows_its_parameter_which_defaults_to_on(table: str):
    spec = RESOURCES[table]["Properties"]["PointInTimeRecoverySpecification"]

    assert spec == {"PointInTimeRecoveryEnabled": {"Fn::If": ["PointInTimeRecoveryOn", True, False]}}
    assert TEMPLATE["Conditions"]["PointInTimeRecoveryOn"] == {"Fn::Equals": [{"Ref": "PointInTimeRecovery"}, "true"]}
    assert parameter_default("PointInTimeRecovery") == "true"


@pytest.mark.parametrize("bucket", sorted(of_type("AWS::S3::Bucket")))
def test_every_bucket_is_retained_and_refuses_plain_http(bucket: str):
    resource = RESOURCES[bucket]
    assert resource["DeletionPolicy"] == "Retain" and resource["UpdateReplacePolicy"] == "Retain"

    policies = [p for p in of_type("AWS::S3::BucketPolicy").values() if p["Properties"]["Bucket"] == {"Ref": bucket}]

    assert len(policies) == 1, f"{bucket} needs one bucket policy"
    denies = [
        s
        for s in policies[0]["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny" and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert len(denies) == 1
    assert denies[0]["Principal"] == "*" and denies[0]["Action"] == "s3:*"
    assert denies[0]["Resource"] == [{"Fn::GetAtt": [bucket, "Arn"]}, {"Fn::Sub": f"${{{bucket}.Arn}}/*"}]


# --- Least privilege -------------------------------------------------------------------------------
# What each function's code calls, on which resource, and where in the code (the adapter classes it
# builds for that resource). The template must grant exactly this; every action must be called by
# the code named (or, for the Lambda service's own sends, be what the template wires).

ORDERS, INVENTORY, CATALOG, IDEMPOTENCY = "OrdersTable", "InventoryTable", "CatalogTable", "IdempotencyTable"
RETURNS = "ReturnsTable"
_WORKFLOW_ORDERS = {(ORDERS, "dynamodb:GetItem"): [DynamoOrders], (ORDERS, "dynamodb:UpdateItem"): [DynamoOrders]}

USES: dict[str, dict[tuple[str, str], list[Any] | str]] = {
    "AuthorizerFunction": {(CATALOG, "dynamodb:GetItem"): [DynamoApiKeys]},
    "ApiFunction": {
        **{
            (ORDERS, f"dynamodb:{a}"): [DynamoOrders]
            for a in ("GetItem", "PutItem", "UpdateItem", "Query", "BatchGetItem", "ConditionCheckItem")
        },
        **{(INVENTORY, f"dynamodb:{a}"): [DynamoInventory] for a in ("PutItem", "UpdateItem", "Query", "BatchGetItem")},
        # A PO write moves incoming (and a receipt on hand) on stock items in its transaction; a
        # cancel of units' stock step moves reservations in one with the order's write.
        (INVENTORY, "dynamodb:UpdateItem"): [DynamoInventory, DynamoPurchasing, DynamoOrders],
        **{
            (RETURNS, f"dynamodb:{a}"): [DynamoReturns]
            for a in ("GetItem", "PutItem", "UpdateItem", "Query", "BatchGetItem")
        },
        **{
            (CATALOG, f"dynamodb:{a}"): [
                DynamoCatalog,
                DynamoApiKeys,
                DynamoImportLedger,
                DynamoWebhooks,
                DynamoAggregates,
                DynamoNotifications,
                DynamoAccessLog,
                DynamoPurchasing,
                DynamoSourcingRules,
            ]
            for a in ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "BatchGetItem")
        },
        # An issued key's lookup is put in a transaction that checks its record.
        (CATALOG, "dynamodb:ConditionCheckItem"): [DynamoApiKeys],
        **{
            (IDEMPOTENCY, f"dynamodb:{a}"): [DynamoDBPersistenceLayer]
            for a in ("GetItem", "PutItem", "UpdateItem", "DeleteItem")
        },
        ("LabelsBucket", "s3:GetObject"): [S3Labels],  # the presigned link is a GetObject as this role
        ("LabelsBucket", "s3:PutObject"): [S3Labels],  # a return label
        ("LabelsExpressBucket", "s3express:CreateSession"): [S3Labels],  # both, with LabelsZoneId set
        ("ReturnWorkflow", "states:StartExecution"): [StepFunctionsReturnStarter],
        ("OmsApi", "apigateway:DELETE"): [ApiGatewayAuthorizerCache],  # revoking a key flushes its stage's cache
        # Per-key usage plans (KeyRateLimit): a new key's own gateway key in the plan, deleted on revocation.
        (USAGE_PLANS, "apigateway:GET"): [ApiGatewayKeys],  # the plan found by its name and stage
        (API_KEYS, "apigateway:POST"): [ApiGatewayKeys],
        ("KeyUsagePlan", "apigateway:POST"): [ApiGatewayKeys],
        (API_KEYS, "apigateway:DELETE"): [ApiGatewayKeys],
        ("WebhookDeliveryQueue", "sqs:SendMessage"): [SqsDeliveryQueue],  # a manual webhook retry
        ("AccessLogQueue", "sqs:SendMessage"): [SqsReadRecorder],  # each read of an order
    },
    "OutboxFunction": {
        ("OrderWorkflow", "states:StartExecution"): [StepFunctionsStarter],
        ("OutboxFailureQueue", "sqs:SendMessage"): "the OrdersStream mapping's on-failure destination",
    },
    "AuthorizePaymentFunction": _WORKFLOW_ORDERS,
    "ReserveStockFunction": {
        **_WORKFLOW_ORDERS,
        (INVENTORY, "dynamodb:UpdateItem"): [DynamoInventory, DynamoBackorders],
        (INVENTORY, "dynamodb:DeleteItem"): [DynamoBackorders],  # the queues an order waiting again leaves
        (INVENTORY, "dynamodb:BatchGetItem"): [DynamoInventory],
        # A sku sourced from more than 100 locations: its stock and reservations, one Query each.
        (INVENTORY, "dynamodb:Query"): [DynamoBackorders, DynamoInventory],
        (CATALOG, "dynamodb:GetItem"): [DynamoCatalog],
        (CATALOG, "dynamodb:BatchGetItem"): [DynamoCatalog],
        (CATALOG, "dynamodb:Query"): [DynamoSourcingRules],
    },
    "BackorderFunction": {
        **_WORKFLOW_ORDERS,
        (ORDERS, "dynamodb:Query"): [DynamoBackorderedOrders],  # the orders a new version of the rules wakes
        (ORDERS, "dynamodb:BatchGetItem"): [DynamoOrders],  # the orders waiting behind a reorder point
        # A walk's stop at an order queued, kept only while it is still `authorized` (DynamoBackorders.stop).
        (ORDERS, "dynamodb:ConditionCheckItem"): [DynamoBackorders],
        (INVENTORY, "dynamodb:UpdateItem"): [DynamoInventory, DynamoBackorders],
        (INVENTORY, "dynamodb:BatchGetItem"): [DynamoInventory],
        (INVENTORY, "dynamodb:Query"): [DynamoBackorders, DynamoInventory],
        (INVENTORY, "dynamodb:DeleteItem"): [DynamoBackorders],
        (CATALOG, "dynamodb:GetItem"): [DynamoCatalog, DynamoPurchasing, DynamoWebhooks],
        (CATALOG, "dynamodb:Query"): [DynamoSourcingRules, DynamoWebhooks],
        # A reorder point crossed: the draft PO, its open-draft record and the crossing's marker in
        # one transaction; inventory.low onto the bus and into its webhook deliveries; a long
        # history's page, moved by a fill's write of its order.
        (CATALOG, "dynamodb:PutItem"): [DynamoPurchasing, DynamoWebhooks, DynamoOrders],
        # ...and the page a wake hands on, on the rules' version or the network's item.
        (CATALOG, "dynamodb:UpdateItem"): [DynamoPurchasing, DynamoSourcingRules, DynamoCatalog],
        ("EventBus", "events:PutEvents"): [EventBridgePublisher],
        ("WebhookDeliveryQueue", "sqs:SendMessage"): [SqsDeliveryQueue],
        ("OrderWorkflow", "states:StartExecution"): [StepFunctionsStarter],
        ("BackorderFailureQueue", "sqs:SendMessage"): "the InventoryStream mapping's on-failure destination",
    },
    "CreateShipmentsFunction": {
        **_WORKFLOW_ORDERS,
        (INVENTORY, "dynamodb:DeleteItem"): [DynamoBackorders],
        (INVENTORY, "dynamodb:UpdateItem"): [DynamoBackorders],  # a walk kept on an entry removed, handed on
        (CATALOG, "dynamodb:GetItem"): [DynamoCatalog],
        (CATALOG, "dynamodb:BatchGetItem"): [DynamoCatalog],
        ("LabelsBucket", "s3:PutObject"): [S3Labels],
        ("LabelsExpressBucket", "s3express:CreateSession"): [S3Labels],
    },
    "ReturnStepFunction": {
        **_WORKFLOW_ORDERS,
        **{(RETURNS, f"dynamodb:{a}"): [DynamoReturns] for a in ("GetItem", "UpdateItem", "Query", "BatchGetItem")},
        (INVENTORY, "dynamodb:PutItem"): [DynamoInventory],
        (INVENTORY, "dynamodb:UpdateItem"): [DynamoInventory],
        # An exchange's replacement order goes through the capture path (as the import worker's do).
        (ORDERS, "dynamodb:PutItem"): [DynamoOrders],
        (INVENTORY, "dynamodb:BatchGetItem"): [DynamoInventory],
        (INVENTORY, "dynamodb:Query"): [DynamoInventory],
        (CATALOG, "dynamodb:GetItem"): [DynamoCatalog],
        (CATALOG, "dynamodb:BatchGetItem"): [DynamoCatalog],
        (CATALOG, "dynamodb:Query"): [DynamoSourcingRules],
    },
    # An exchange's replacement that does not go ahead gives its credit back: its return names the
    # original order (core/exchange_credit.py).
    # Once its credit is refunded, the exchange's return shows what the credit gave back.
    "FailPaymentFunction": {
        **_WORKFLOW_ORDERS,
        (RETURNS, "dynamodb:GetItem"): [DynamoReturns],
        (RETURNS, "dynamodb:UpdateItem"): [DynamoReturns],
    },
    "ParkOrderFunction": {
        **_WORKFLOW_ORDERS,
        # The arrivals' walks stopped at an order parked, handed on (Workflow._walked_past).
        (INVENTORY, "dynamodb:UpdateItem"): [DynamoBackorders],
    },
    "ReconcilerFunction": {
        **_WORKFLOW_ORDERS,
        (ORDERS, "dynamodb:Query"): [
            DynamoStalledOrders,
            DynamoDuePickups,
            DynamoPendingRefunds,
            DynamoUnsettledAuthorizations,
            DynamoOrdersOwingCarrier,
            DynamoSettlementCaptures,
            DynamoKeptBackRefunds,
        ],
        ("OrderWorkflow", "states:StartExecution"): [StepFunctionsStarter],
        # A parcel due a new label, booked again by the pass (core/carrier_bookings.py).
        ("LabelsBucket", "s3:PutObject"): [S3Labels],
        ("LabelsExpressBucket", "s3express:CreateSession"): [S3Labels],
        # An expired pickup's units are released as a cancel releases them; those a cancel of
        # units died before releasing, in one transaction with the order's write or check.
        (ORDERS, "dynamodb:ConditionCheckItem"): [DynamoOrders],
        # A stock take recorded short whose function died: the orders holding units there, whose
        # shipments the pass rejects (InventoryService.finish_short_counts); its marks are Queried
        # on the Inventory table's short_counts.
        (ORDERS, "dynamodb:BatchGetItem"): [DynamoOrders],
        (INVENTORY, "dynamodb:UpdateItem"): [DynamoInventory, DynamoOrders, DynamoBackorders],
        (INVENTORY, "dynamodb:BatchGetItem"): [DynamoInventory],
        (INVENTORY, "dynamodb:Query"): [DynamoInventory],
        (CATALOG, "dynamodb:GetItem"): [DynamoCatalog, DynamoImportLedger, DynamoNotifications],
        # Imports left running short by a line marked and never counted, recounted from its markers.
        (CATALOG, "dynamodb:BatchGetItem"): [DynamoImportLedger],
        # ...and the customer notifications the plugins failed to send: listed, claimed, sent, given up.
        **{(CATALOG, f"dynamodb:{a}"): [DynamoImportLedger, DynamoNotifications] for a in ("Query", "UpdateItem")},
        (CATALOG, "dynamodb:DeleteItem"): [DynamoNotifications],
        # ...and a long history's page, moved by a pass's write of its order.
        (CATALOG, "dynamodb:PutItem"): [DynamoImportLedger, DynamoOrders, DynamoNotifications],
        (IDEMPOTENCY, "dynamodb:BatchGetItem"): [DynamoImportLedger],
        (RETURNS, "dynamodb:GetItem"): [DynamoReturns],
        # A return whose kept-back refund the pass makes shows all that was refunded for it.
        (RETURNS, "dynamodb:UpdateItem"): [DynamoReturns],
        # Received returns with no workflow: found through by_receipt, their workflow started again.
        (RETURNS, "dynamodb:Query"): [DynamoReceivedReturns],
        ("ReturnWorkflow", "states:StartExecution"): [StepFunctionsReturnStarter],
    },
    "JeopardyScanFunction": {
        **_WORKFLOW_ORDERS,
        (ORDERS, "dynamodb:Query"): [DynamoLateOrders],
        # A cancel of the rest of a partly shipped order: its stock step, one transaction with the order.
        (ORDERS, "dynamodb:ConditionCheckItem"): [DynamoOrders],
        (INVENTORY, "dynamodb:UpdateItem"): [DynamoInventory, DynamoOrders],
        (INVENTORY, "dynamodb:BatchGetItem"): [DynamoInventory],
        (INVENTORY, "dynamodb:Query"): [DynamoInventory],
        (CATALOG, "dynamodb:GetItem"): [DynamoCatalog],
        # Expired returns: found through by_status, each cancelled by one conditional update.
        (RETURNS, "dynamodb:GetItem"): [DynamoReturns],
        (RETURNS, "dynamodb:UpdateItem"): [DynamoReturns],
        (RETURNS, "dynamodb:Query"): [DynamoUnreceivedReturns],
    },
    "CancelOrderFunction": {
        **_WORKFLOW_ORDERS,
        (INVENTORY, "dynamodb:UpdateItem"): [DynamoInventory],
        (INVENTORY, "dynamodb:DeleteItem"): [DynamoBackorders],  # the queues a cancelled order leaves
        (INVENTORY, "dynamodb:BatchGetItem"): [DynamoInventory],
        (INVENTORY, "dynamodb:Query"): [DynamoInventory],
        (CATALOG, "dynamodb:GetItem"): [DynamoCatalog],
        (RETURNS, "dynamodb:GetItem"): [DynamoReturns],
        (RETURNS, "dynamodb:UpdateItem"): [DynamoReturns],
    },
    "ImportSplitterFunction": {
        ("ImportsBucket", "s3:GetObject"): [S3ImportFiles],
        ("ImportsBucket", "s3:GetObjectVersion"): [S3ImportFiles],
        # Never called: S3 answers an object version that is gone 404 (file_unavailable) only to a
        # caller that may list the bucket, and 403 AccessDenied (an unexpected error) to any other.
        ("ImportsBucket", "s3:ListBucket"): "S3's answer to a GetObject of an object version that is gone",
        ("ImportQueue", "sqs:SendMessage"): [SqsOrderQueue],
        # A split running short of time hands the rest of its file on to a new invocation.
        ("ImportSplitterFunction", "lambda:InvokeFunction"): [LambdaSplitContinuation],
        **{(CATALOG, f"dynamodb:{a}"): [DynamoImportLedger] for a in ("GetItem", "PutItem", "UpdateItem")},
        # ...and, for a rejected line whose error is neither kept nor on its marker, the kept errors.
        (CATALOG, "dynamodb:Query"): [DynamoImportLedger],
        # A resumed split reads the marker of a rejected line it finds recorded.
        (IDEMPOTENCY, "dynamodb:GetItem"): [DynamoImportLedger],
        (IDEMPOTENCY, "dynamodb:PutItem"): [DynamoImportLedger],
    },
    "ImportWorkerFunction": {
        (ORDERS, "dynamodb:GetItem"): [DynamoOrders],
        (ORDERS, "dynamodb:PutItem"): [DynamoOrders],
        (INVENTORY, "dynamodb:BatchGetItem"): [DynamoInventory],
        (INVENTORY, "dynamodb:Query"): [DynamoInventory],
        **{
            (CATALOG, f"dynamodb:{a}"): [DynamoCatalog, DynamoImportLedger]
            for a in ("GetItem", "PutItem", "UpdateItem", "BatchGetItem")
        },
        (CATALOG, "dynamodb:Query"): [DynamoSourcingRules],
        # A redriven order's listing as parked in the dead-letter queue, once its line is counted.
        (CATALOG, "dynamodb:DeleteItem"): [DynamoImportLedger],
        (IDEMPOTENCY, "dynamodb:GetItem"): [DynamoImportLedger],
        (IDEMPOTENCY, "dynamodb:PutItem"): [DynamoImportLedger],
    },
    "EventsFunction": {
        ("EventBus", "events:PutEvents"): [EventBridgePublisher],
        (ORDERS, "dynamodb:GetItem"): [DynamoOrders],  # a return's order
        # DynamoImportLedger: an ended import's errors, for import.completed
        **{
            (CATALOG, f"dynamodb:{a}"): [DynamoWebhooks, DynamoNotifications, DynamoImportLedger]
            for a in ("GetItem", "Query")
        },
        (CATALOG, "dynamodb:PutItem"): [DynamoWebhooks, DynamoAggregates, DynamoNotifications],
        # The products a cancelled or backordered notice names (the catalog's cached reads).
        (CATALOG, "dynamodb:BatchGetItem"): [DynamoCatalog],
        # A notification the plugins failed to send: its failed attempt, with its retry listing.
        (CATALOG, "dynamodb:UpdateItem"): [DynamoAggregates, DynamoNotifications],
        ("WebhookDeliveryQueue", "sqs:SendMessage"): [SqsDeliveryQueue],
        ("EventsFailureQueue", "sqs:SendMessage"): "the stream mappings' on-failure destination",
        # A parcel handed over whose request died before its units left: its reservations read,
        # those still held shrunk and shipped (core.cancellation.units_left_behind).
        **{(INVENTORY, f"dynamodb:{a}"): [DynamoInventory] for a in ("BatchGetItem", "Query", "UpdateItem")},
    },
    "WebhookDeliveryFunction": {
        **{(CATALOG, f"dynamodb:{a}"): [DynamoWebhooks] for a in ("GetItem", "PutItem")},
        ("WebhookDeliveryQueue", "sqs:SendMessage"): [SqsDeliveryQueue],
    },
    "AccessLogFunction": {(CATALOG, "dynamodb:BatchWriteItem"): [DynamoAccessLog]},
}

# How a call to each action reads in Python, besides `.<snake_case>(`.
_ALSO_CALLED_AS = {
    "batch_get_item": ["batch_get("],  # functions.adapters.dynamodb.batch_get
    "put_item": ['"Put": {'],  # an item put in a transaction (DynamoInventory.restock's ledger item)
    "delete_item": ['"Delete": {'],  # an item deleted in a transaction (DynamoNotifications' retry listing)
    # A transaction's check (DynamoOrders.update_with_stock), or an order's (functions.adapters.dynamodb.order_check).
    "condition_check_item": ['"ConditionCheck": {', "order_check("],
    "query": ['get_paginator("query")', "_query_ids(", "_paged_ids("],  # functions.adapters.dynamodb helpers
    "send_message": [".send_message_batch("],  # authorized as SendMessage
    "get_object": ['"get_object"'],  # a presigned GetObject
    "get_object_version": ['request["VersionId"]'],  # GetObject with a VersionId
    # API Gateway's IAM actions are its REST verbs.
    "delete": [".flush_stage_authorizers_cache(", ".delete_api_key("],
    "get": ['get_paginator("get_usage_plans")'],
    "post": [".create_api_key(", ".create_usage_plan_key("],
    "invoke_function": [".invoke("],  # Lambda's Invoke is authorized as InvokeFunction
    # A directory bucket's requests signed with the role's credentials (no session) are authorized
    # as s3express:CreateSession on the bucket.
    "create_session": ['"disable_s3_express_session_auth"'],
}
# What no function here calls: a grant of any of these is a mistake.
NEVER = {
    "dynamodb:Scan",
    "dynamodb:BatchWriteItem",
    "dynamodb:TransactWriteItems",
    "dynamodb:DeleteTable",
    "dynamodb:UpdateTable",
    "s3:DeleteObject",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketPolicy",
    "sqs:DeleteQueue",
    "sqs:SetQueueAttributes",
    "sqs:PurgeQueue",
}
# ...but for these: the access log's reads are puts of records written again unchanged, 25 a request.
ALSO_MAY = {"AccessLogFunction": {"dynamodb:BatchWriteItem"}}


def _snake(action: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", action.split(":", 1)[1]).lower()


# The pages of an order's history too long for its item (functions/adapters/dynamodb.py
# HISTORY_KEPT_BYTES): the functions that write orders and hold no wider Catalog grant move them
# there (a transaction's Put) and read them back, granted on their partitions only.
HISTORY_PAGE_WRITERS = (
    "AuthorizePaymentFunction", "ReserveStockFunction", "CreateShipmentsFunction", "FailPaymentFunction",
    "CancelOrderFunction", "ParkOrderFunction", "ReturnStepFunction", "JeopardyScanFunction",
)  # fmt: skip
for _function in HISTORY_PAGE_WRITERS:
    USES[_function] = {
        **USES[_function],
        **{
            (CATALOG, a): [*USES[_function].get((CATALOG, a), []), DynamoOrders]
            for a in ("dynamodb:PutItem", "dynamodb:Query")
        },
    }


@pytest.mark.parametrize("function", HISTORY_PAGE_WRITERS)
def test_a_history_page_grant_names_the_history_pages_partitions_only(function: str):
    catalog = [s for s in statements(function) if {"Fn::GetAtt": [CATALOG, "Arn"]} in listed(s["Resource"])]
    pages = [s for s in catalog if "dynamodb:PutItem" in listed(s["Action"])]
    assert pages and all(
        s["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{HISTORY_PAGE_PK}*"]}} for s in pages
    )


def test_every_function_is_in_the_map():
    assert set(USES) == set(of_type("AWS::Serverless::Function"))


@pytest.mark.parametrize("function", sorted(USES))
def test_a_function_is_granted_exactly_what_its_code_calls(function: str):
    assert granted(function) == set(USES[function])


# The adapters' sources, read once per process: inspect.getsource parses a class's whole module to
# find it, and the same classes are named for one function's grants after another (12 s of CPU).
_source = functools.cache(inspect.getsource)


@pytest.mark.parametrize("function", sorted(USES))
def test_every_granted_action_is_called_by_the_code_named_for_it(function: str):
    for (_resource, action), callers in USES[function].items():
        if isinstance(callers, str):
            continue  # the Lambda service sends it; checked below
        snake = _snake(action)
        sources = "\n".join(_source(c) for c in callers)
        calls = [f".{snake}(", *_ALSO_CALLED_AS.get(snake, [])]
        assert any(call in sources for call in calls), f"{function}: no {action} in {[c.__name__ for c in callers]}"


# The indexes each function Queries on the two tables that have them, where its code names them:
# a Query grant names these and nothing else (not the table, which no code Queries, nor `index/*`).
_ORDER_LISTS = {f"index/{index}" for index in _INDEXES}  # DynamoOrders.list's indexes
_RETURN_LISTS = {f"index/{index}" for index in _RETURN_INDEXES} | {"index/by_order"}  # DynamoReturns.list, for_order
QUERIED_INDEXES = {
    "ApiFunction": {ORDERS: _ORDER_LISTS, RETURNS: _RETURN_LISTS},
    "BackorderFunction": {ORDERS: {"index/by_status_key"}},  # DynamoBackorderedOrders
    "ReturnStepFunction": {RETURNS: {"index/by_order"}},  # DynamoReturns.for_order
    # DynamoStalledOrders, DynamoDuePickups, the by_pending_refund partitions; DynamoReceivedReturns
    "ReconcilerFunction": {
        ORDERS: {"index/by_status_key", "index/by_pickup_deadline", "index/by_pending_refund"},
        RETURNS: {"index/by_receipt"},
    },
    # DynamoLateOrders (candidates, the count, holds to expire); DynamoUnreceivedReturns
    "JeopardyScanFunction": {
        ORDERS: {"index/by_status_key", "index/by_sla", "index/by_pickup_deadline"},
        RETURNS: {"index/by_status"},
    },
}


@pytest.mark.parametrize("function", sorted(USES))
def test_a_query_grant_on_an_indexed_table_names_the_indexes_the_code_queries_and_nothing_else(function: str):
    # The API function was granted every action on the orders' and returns' tables and all their
    # indexes: a Query of the table itself, or of by_pickup_deadline, by_pending_refund or
    # by_receipt (only the scheduled passes read them), was allowed though no API code makes one.
    scopes: dict[str, set[str]] = {}
    for statement in statements(function):
        if any("dynamodb:Query" in actions(action) for action in listed(statement["Action"])):
            for resource in listed(statement["Resource"]):
                if logical_id(resource) in (ORDERS, RETURNS):
                    scopes.setdefault(logical_id(resource), set()).add(scope(resource))

    assert scopes == QUERIED_INDEXES.get(function, {})


def test_the_indexes_the_code_queries_are_the_tables_own():
    for tables in QUERIED_INDEXES.values():
        for table, indexes in tables.items():
            declared = {f"index/{i['IndexName']}" for i in RESOURCES[table]["Properties"]["GlobalSecondaryIndexes"]}
            assert indexes <= declared, f"{table}: no such index {indexes - declared}"
    for source, indexes in (
        (DynamoLateOrders, {"by_status_key", "by_sla", "by_pickup_deadline"}),
        (DynamoUnreceivedReturns, {"by_status"}),
        (DynamoReceivedReturns, {"by_receipt"}),
        (DynamoBackorderedOrders, {"by_status_key"}),
        (DynamoDuePickups, {"by_pickup_deadline"}),
    ):
        assert all(f'"{index}"' in inspect.getsource(source) for index in indexes), source.__name__


# Every function whose code cancels an order or fails its payment: an exchange's replacement gives
# its credit back there, which needs the returns table (functions/bootstrap.py's exchange_credits
# is None without it).
ENDS_ORDERS = [
    "ApiFunction", "CancelOrderFunction", "FailPaymentFunction", "JeopardyScanFunction", "ReconcilerFunction",
]  # fmt: skip


@pytest.mark.parametrize("function", ENDS_ORDERS)
def test_every_function_that_ends_an_order_can_give_an_exchanges_credit_back(function: str):
    variables = RESOURCES[function]["Properties"]["Environment"]["Variables"]

    assert variables["RETURNS_TABLE"] == {"Ref": "ReturnsTable"}
    assert (RETURNS, "dynamodb:GetItem") in granted(function)


def test_the_outbox_sends_only_to_its_own_failure_queue():
    stream = RESOURCES["OutboxFunction"]["Properties"]["Events"]["OrdersStream"]["Properties"]

    assert stream["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["OutboxFailureQueue", "Arn"]}


def test_the_access_logs_batch_writes_reach_its_own_partitions_only():
    # BatchWriteItem is a put or a delete to IAM: unconditioned, the function could replace or
    # delete any item of the Catalog table, an API key's among them.
    catalog = [s for s in statements("AccessLogFunction") if {"Fn::GetAtt": [CATALOG, "Arn"]} in listed(s["Resource"])]
    writes = [s for s in catalog if "dynamodb:BatchWriteItem" in listed(s["Action"])]
    assert writes and all(
        s.get("Condition") == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{ACCESS_LOG_PK}*"]}}
        for s in writes
    )


def test_webhook_delivery_reaches_only_the_webhooks_partitions_of_the_catalog():
    # The function that calls third parties' URLs: were its Catalog grants unconditioned, a flaw in
    # it could read or write any Catalog item, an API key's among them. It reads a subscription and
    # reads and writes that subscription's deliveries.
    expected = {
        (CATALOG, "dynamodb:GetItem"): [WEBHOOKS_PK, f"{DELIVERIES_PK}*"],
        (CATALOG, "dynamodb:PutItem"): [f"{DELIVERIES_PK}*"],
    }
    limits = key_limits("WebhookDeliveryFunction")
    assert {grant: sorted(limits.get(grant, [])) for grant in expected} == {g: sorted(p) for g, p in expected.items()}


@pytest.mark.parametrize("function", ["EventsFunction", "BackorderFunction"])
def test_the_fan_out_may_read_the_subscriptions_but_never_their_signing_secrets(function: str):
    # The functions that match events to subscriptions and queue deliveries read every subscription
    # each batch: granted its whole item, a flaw in them (or a dependency) could read every
    # subscriber's secret. Their read of that partition is held to what matching needs, by name,
    # with Select SPECIFIC_ATTRIBUTES required (a Query naming no attribute reads whole items, and
    # ForAllValues alone would let it through); tests/template_iam.py checks each call against it.
    catalog = [s for s in statements(function) if {"Fn::GetAtt": [CATALOG, "Arn"]} in listed(s["Resource"])]
    reaching = [s for s in catalog if any(like(WEBHOOKS_PK, p) for p in key_patterns(function, s) or ["*"])]
    allowed = ["pk", "sk", *SUBSCRIPTION_ATTRIBUTES]  # the table's keys, and what all() projects

    assert [(s["Action"], s.get("Condition")) for s in reaching] == [
        (
            "dynamodb:Query",
            {
                "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [WEBHOOKS_PK]},
                "ForAllValues:StringEquals": {"dynamodb:Attributes": allowed},
                "StringEquals": {"dynamodb:Select": "SPECIFIC_ATTRIBUTES"},
            },
        )
    ]
    assert {"secret", "url"}.isdisjoint(allowed)


# The Catalog table holds API keys beside everything else: a function that is not the API's is held,
# by dynamodb:LeadingKeys conditions, to the partitions its code writes and reads (a Query's by the
# partition its key condition names, which tests/template_iam.py reads). An action a transaction
# makes goes by every item of it on the table (tests/template_iam.py), so a function's writes share
# one list.
_IMPORTS = [LIST_PK, f"{IMPORT_PK}*"]
# The counters with their markers, the days' registries, the email index, the filings; the
# notifications and the listing of those the plugins failed to send; the webhook deliveries.
_EVENTS_WRITE = [
    f"{MARKERS_PK}*", f"{CUSTOMER_PK}*", f"{EMAIL_INDEX_PK}*", f"{REPORT_PK}*", f"{REPORT_CHANNELS_PK}*",
    f"{FILING_PK}*", f"{NOTIFICATIONS_PK}*", RETRIES_PK, f"{DELIVERIES_PK}*",
]  # fmt: skip
# A reorder point's draft purchase order, its open-draft records and the crossing's marker; an
# inventory.low delivery; the page a wake hands on (on the rules' version or the network's item);
# the pages of an order's history a fill moves.
_BACKORDERS_WRITE = [
    PURCHASE_ORDERS_PK, DRAFTS_PK, DRAFT_LINES_PK, f"{REORDERED_PREFIX}*", f"{DELIVERIES_PK}*", SOURCING_RULES_PK,
    NETWORK_PK, f"{HISTORY_PAGE_PK}*",
]  # fmt: skip
_PUT_UPDATE = ("dynamodb:PutItem", "dynamodb:UpdateItem")
_GETS = ("dynamodb:GetItem", "dynamodb:BatchGetItem")
_CATALOG_ITEMS = [NETWORK_PK, f"{PRODUCT_PK}*"]
_HISTORY_PAGES = {a: [f"{HISTORY_PAGE_PK}*"] for a in ("dynamodb:PutItem", "dynamodb:Query")}
# The capture path's and the sourcing's read of the sourcing rules in force (DynamoSourcingRules),
# beside the history pages the function's order writes move and its reads read back.
_HISTORY_AND_RULES = {
    "dynamodb:PutItem": [f"{HISTORY_PAGE_PK}*"],
    "dynamodb:Query": [f"{HISTORY_PAGE_PK}*", SOURCING_RULES_PK],
}
CATALOG_KEYS: dict[str, dict[str, list[str]]] = {
    # A key's lookup item, by the secret's hash: nothing else.
    "AuthorizerFunction": {"dynamodb:GetItem": [f"{LOOKUP_PK}*"]},
    # The function that reads uploaded files: the import, its kept errors, the listing.
    # Its Query: a resumed split's read of the import's kept errors (IMPORT#<id>#ERRORS).
    "ImportSplitterFunction": {
        **{a: _IMPORTS for a in ("dynamodb:GetItem", *_PUT_UPDATE)},
        "dynamodb:Query": [f"{IMPORT_PK}*"],
    },
    "ImportWorkerFunction": {
        # The capture path's catalog (the network, the products); the line's import.
        **{a: [*_CATALOG_ITEMS, f"{IMPORT_PK}*"] for a in _GETS},
        # The sourcing rules in force, which the capture path's stock check applies; the import's
        # kept errors, read by a line delivered again whose error may be missing from them.
        "dynamodb:Query": [SOURCING_RULES_PK, f"{IMPORT_PK}*"],
        # Its counts, its errors, a redriven line's parked listing removed.
        **{a: [f"{IMPORT_PK}*"] for a in (*_PUT_UPDATE, "dynamodb:DeleteItem")},
    },
    "EventsFunction": {
        # An ended import, an order's filing day, a notification or a delivery already recorded, the
        # network (a ready pickup's store, named to its customer).
        "dynamodb:GetItem": [f"{IMPORT_PK}*", f"{FILING_PK}*", f"{NOTIFICATIONS_PK}*", f"{DELIVERIES_PK}*", NETWORK_PK],
        # An ended import's errors, an order's later counter markers; the subscriptions (only what
        # matching needs of them: test_the_fan_out_may_read_the_subscriptions_but_never_their_signing_secrets).
        "dynamodb:Query": [f"{IMPORT_PK}*", f"{MARKERS_PK}*", WEBHOOKS_PK],
        # The products a cancelled or backordered notice names by their names.
        "dynamodb:BatchGetItem": [f"{PRODUCT_PK}*"],
        **{a: _EVENTS_WRITE for a in _PUT_UPDATE},
    },
    "BackorderFunction": {
        **{a: _BACKORDERS_WRITE for a in _PUT_UPDATE},
        # The network, a vendor, a purchase order, the open draft and its lines, a crossing's marker,
        # an inventory.low delivery already recorded.
        "dynamodb:GetItem": [
            NETWORK_PK,
            VENDORS_PK,
            PURCHASE_ORDERS_PK,
            DRAFTS_PK,
            DRAFT_LINES_PK,
            f"{REORDERED_PREFIX}*",
            f"{DELIVERIES_PK}*",
        ],
        # The sourcing rules in force; the subscriptions inventory.low is matched to (as EventsFunction's).
        "dynamodb:Query": [SOURCING_RULES_PK, WEBHOOKS_PK],
    },
    # The imports a recount finishes (their counters, their kept errors); the pages of an order's
    # history a pass's write moves; the notifications the plugins failed to send, and their listing
    # (an attempt claimed, sent or given up moves it). It reads the catalog, those imports and those
    # notifications. It queries the imports' listing (IMPORTS: those a recount may finish) and their
    # kept errors, the notifications' retry listing, an order's history pages (a cancel's or a
    # capture's read of the order's history) and the sourcing rules (a stock take's reject of a
    # partly shipped order's parcel sources it again).
    "ReconcilerFunction": {
        **{a: [f"{IMPORT_PK}*", f"{HISTORY_PAGE_PK}*", f"{NOTIFICATIONS_PK}*", RETRIES_PK] for a in _PUT_UPDATE},
        "dynamodb:DeleteItem": [f"{NOTIFICATIONS_PK}*", RETRIES_PK],  # a transaction's: every key it writes
        **{a: [*_CATALOG_ITEMS, f"{IMPORT_PK}*", f"{NOTIFICATIONS_PK}*"] for a in _GETS},
        "dynamodb:Query": [LIST_PK, f"{IMPORT_PK}*", RETRIES_PK, f"{HISTORY_PAGE_PK}*", SOURCING_RULES_PK],
    },
    # The workflow steps read the catalog only (the network, products) beside their history pages;
    # the reserve step (its sourcing) and the returns' steps (an exchange's capture) the sourcing rules.
    "ReserveStockFunction": {**_HISTORY_AND_RULES, **{a: _CATALOG_ITEMS for a in _GETS}},
    "CreateShipmentsFunction": {**_HISTORY_PAGES, **{a: _CATALOG_ITEMS for a in _GETS}},
    "ReturnStepFunction": {**_HISTORY_AND_RULES, **{a: _CATALOG_ITEMS for a in _GETS}},
    "CancelOrderFunction": {**_HISTORY_PAGES, "dynamodb:GetItem": _CATALOG_ITEMS},
    "JeopardyScanFunction": {**_HISTORY_PAGES, "dynamodb:GetItem": _CATALOG_ITEMS},
    "AuthorizePaymentFunction": _HISTORY_PAGES,
    "FailPaymentFunction": _HISTORY_PAGES,
    "ParkOrderFunction": _HISTORY_PAGES,
}
# The API function writes most of the table's partitions (products, locations, sourcing rules, API
# keys, webhooks, vendors and POs, imports' reads): its grants stay whole.


@pytest.mark.parametrize("function", sorted(CATALOG_KEYS))
def test_a_functions_catalog_grants_reach_the_partitions_its_code_uses_only(function: str):
    # Unconditioned, any of these could put or update any Catalog item, an API key's among them
    # (grant itself, or whoever finds a flaw in it, a key).
    limits = {action: sorted(p) for (table, action), p in key_limits(function).items() if table == CATALOG}

    assert limits == {action: sorted(p) for action, p in CATALOG_KEYS[function].items()}


@pytest.mark.parametrize("function", sorted(set(USES) - {"ApiFunction"}))
def test_no_function_but_the_api_may_reach_the_catalog_unconditioned(function: str):
    # Unconditioned, a write could put or update any Catalog item, an API key's among them; a read
    # could list every key's record (a Query of APIKEYS), a subscriber's signing secret, anything
    # the table holds, from any function a flaw lets someone steer.
    reaching = {action for table, action in granted(function) if table == CATALOG}
    limited = {action for table, action in key_limits(function) if table == CATALOG}

    assert reaching <= limited, f"{function}: {sorted(reaching - limited)} of any Catalog item"


@pytest.mark.parametrize("function", sorted(USES))
def test_no_function_may_scan_batch_write_delete_tables_or_change_lifecycles(function: str):
    actions = {action for _, action in granted(function)}

    assert not actions & (NEVER - ALSO_MAY.get(function, set()))
    assert not any("*" in action for action in actions)


def test_object_grants_are_scoped_to_the_prefix_the_code_uses():
    scoped = {}
    for function in USES:
        for statement in statements(function):
            if any(action.startswith("s3:") for action in listed(statement["Action"])):
                for resource in listed(statement["Resource"]):
                    if listed(statement["Action"]) != ["s3:ListBucket"]:  # a bucket's: see below
                        scoped[(function, logical_id(resource))] = resource["Fn::Sub"].split("/", 1)[1]

    assert scoped == {
        ("ApiFunction", "LabelsBucket"): "labels/*",
        ("CreateShipmentsFunction", "LabelsBucket"): "labels/*",
        ("ReconcilerFunction", "LabelsBucket"): "labels/*",
        ("ImportSplitterFunction", "ImportsBucket"): "incoming/*",
    }


def test_the_splitter_may_list_the_imports_bucket_so_that_a_file_gone_is_not_found_not_access_denied():
    """S3 answers a GetObject of an object or version that does not exist 404 (NoSuchKey,
    NoSuchVersion) only to a caller with s3:ListBucket on the bucket, and 403 AccessDenied to any
    other. Without it, on AWS, a file whose version was deleted before the split read it left its
    import `split_interrupted`, retried and parked for an operator, whose replay failed the same
    way: never `file_unavailable`, never an end or its import.completed."""
    bucket_grants = [
        (statement["Action"], resource)
        for function in USES
        for statement in statements(function)
        for resource in listed(statement["Resource"])
        if "s3:ListBucket" in listed(statement["Action"])
    ]

    imports_bucket = "arn:${AWS::Partition}:s3:::${AWS::StackName}-imports-${AWS::AccountId}-${AWS::Region}"
    assert bucket_grants == [(["s3:ListBucket"], {"Fn::Sub": imports_bucket})]
    assert ("ImportsBucket", "s3:ListBucket") in granted("ImportSplitterFunction")


def test_the_api_signs_label_links_for_the_bucket_it_may_read():
    # LabelsExpressBucket exists, and ApiFunction may create sessions on it, when LabelsZoneId is set
    # (tests/integration/test_labels_s3_express.py).
    assert RESOURCES["ApiFunction"]["Properties"]["Environment"]["Variables"]["LABELS_BUCKET"] == {
        "Fn::If": ["LabelsInS3Express", {"Ref": "LabelsExpressBucket"}, {"Ref": "LabelsBucket"}]
    }


# --- The import queue's senders --------------------------------------------------------------------


def test_only_the_splitter_and_the_named_principals_may_send_to_the_import_queue():
    policies = [p["Properties"] for p in of_type("AWS::SQS::QueuePolicy").values()]
    [policy] = [p for p in policies if p["Queues"] == [{"Ref": "ImportQueue"}]]
    statements = policy["PolicyDocument"]["Statement"]
    [deny] = [s for s in statements if isinstance(s, dict) and s.get("Sid") == "DenyUnnamedSenders"]
    splitter = {"Fn::GetAtt": ["ImportSplitterFunctionRole", "Arn"]}

    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "sqs:SendMessage")
    allowed = deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]["Fn::If"]
    assert allowed[0] == "HasImportQueueSenders"
    assert allowed[2] == [splitter]  # no senders named: the splitter alone
    sub = allowed[1]["Fn::Split"][1]["Fn::Sub"]
    assert sub[0] == "${Splitter},${Senders}"
    assert sub[1] == {"Splitter": splitter, "Senders": {"Fn::Join": [",", {"Ref": "ImportQueueSenders"}]}}
    assert parameter_default("ImportQueueSenders") == ""
    [tls] = [s for s in statements if isinstance(s, dict) and s.get("Sid") == "DenyInsecureTransport"]
    assert (tls["Effect"], tls["Principal"], tls["Action"]) == ("Deny", "*", "sqs:*")
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_the_worker_knows_the_splitter_and_each_senders_channels():
    variables = RESOURCES["ImportWorkerFunction"]["Properties"]["Environment"]["Variables"]

    assert variables["IMPORT_SPLITTER_ROLE_ID"] == {"Fn::GetAtt": ["ImportSplitterFunctionRole", "RoleId"]}
    assert variables["IMPORT_QUEUE_SENDER_CHANNELS"] == {"Ref": "ImportQueueSenderChannels"}
    assert parameter_default("ImportQueueSenderChannels") == ""  # nobody but the splitter


# --- The API's edge ---------------------------------------------------------------------------------


def test_api_access_logs_are_json_lines_with_request_ip_key_status_and_latency():
    setting = RESOURCES["OmsApi"]["Properties"]["AccessLogSetting"]
    line = json.loads(setting["Format"])

    assert setting["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    assert RESOURCES["ApiAccessLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "ApiAccessLogRetentionDays"}
    assert line["requestId"] == "$context.requestId"
    assert line["ip"] == "$context.identity.sourceIp"
    assert line["keyId"] == "$context.authorizer.principalId"  # the authorizer's principal is the key id
    assert line["status"] == "$context.status"
    assert line["latencyMs"] == "$context.responseLatency"


def test_the_access_log_role_is_set_before_the_stage_logs_and_only_when_asked():
    for name in ("ApiGatewayLogRole", "ApiGatewayAccount"):
        assert RESOURCES[name]["Condition"] == "ConfigureApiGatewayLogRoleOn"
    ready = RESOURCES["ApiGatewayAccountReady"]["Metadata"]["AccountSetting"]["Fn::If"]
    assert ready[:2] == ["ConfigureApiGatewayLogRoleOn", {"Ref": "ApiGatewayAccount"}]
    assert RESOURCES["ApiAccessLogGroup"]["DependsOn"] == "ApiGatewayAccountReady"


def test_waf_is_an_option_off_by_default_with_managed_rules_and_a_rate_rule_on_the_stage():
    acl, association = RESOURCES["ApiWebAcl"], RESOURCES["ApiWebAclAssociation"]
    rules = {rule["Name"]: rule["Statement"] for rule in acl["Properties"]["Rules"]}

    assert parameter_default("EnableWaf") == "false"
    assert acl["Condition"] == association["Condition"] == "WafOn"
    assert TEMPLATE["Conditions"]["WafOn"] == {"Fn::Equals": [{"Ref": "EnableWaf"}, "true"]}
    assert rules["rate-per-ip"]["RateBasedStatement"] == {"Limit": {"Ref": "WafRateLimit"}, "AggregateKeyType": "IP"}
    managed = {s["ManagedRuleGroupStatement"]["Name"] for s in rules.values() if "ManagedRuleGroupStatement" in s}
    assert {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"} <= managed
    assert association["Properties"]["WebACLArn"] == {"Fn::GetAtt": ["ApiWebAcl", "Arn"]}
    assert association["Properties"]["ResourceArn"]["Fn::Sub"].endswith("/restapis/${OmsApi}/stages/${OmsApi.Stage}")
