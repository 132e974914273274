"""Composition root: bootstrap(config, ...) wires adapters, plugins and services for a function.

A handler module asks its WarmContainer for the container: built on the first invocation from
Config.from_env() (the one place that reads the environment) and kept while Lambda keeps the
execution environment warm. Tests pass their own dependencies to bootstrap() and put the result
in place with WarmContainer.override(); the local runtime calls forget_warm_containers() when a
new stack (a new account) starts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from core.access_log import AccessLog, AccessLogStore, ReadRecorder
from core.deadline import LONGEST
from core.models import utc_now
from core.payments import Payments
from core.plugin_manager import OmsPluginManager
from core.ports import OrderRepository, ReturnRepository, ReturnWorkflowStarter, SettlementCaptures
from core.pricing import Pricing
from core.services import ApiKeyService, CaptureService, CatalogService, InventoryService, OrderQueries
from core.settings import setting
from functions.adapters.aws_clients import aws_client
from functions.adapters.catalog_cache import CachedCatalog, CachedSourcingRules
from functions.adapters.dynamodb import (
    DynamoApiKeys,
    DynamoBackorderedOrders,
    DynamoBackorders,
    DynamoCatalog,
    DynamoDuePickups,
    DynamoInventory,
    DynamoLateOrders,
    DynamoOrders,
    DynamoReceivedReturns,
    DynamoReturns,
    DynamoSourcingRules,
    DynamoStalledOrders,
    DynamoUnreceivedReturns,
)
from functions.adapters.labels import S3Labels
from functions.adapters.workflow_starter import StepFunctionsReturnStarter, StepFunctionsStarter
from functions.masked_logs import function_logger
from functions.plugin_loading import load_plugin_manager
from functions.warm import Warm, forget_warm_containers

# The services one function never uses are imported by the property that builds them: a new API
# container placing an order would otherwise import purchasing, webhooks, imports, reports...
if TYPE_CHECKING:
    from core.aggregates import Aggregates, AggregateStore
    from core.authorization_sweep import UnsettledAuthorizationSweep
    from core.backorders import BackorderAllocator, ExpectedArrivals
    from core.cancellation import Cancellation
    from core.capture_sweep import UnrecordedCaptureSweep
    from core.carrier_bookings import CarrierWorkSweep
    from core.exchange_credit import ExchangeCredits
    from core.fulfillment import OrderActions
    from core.holds import Holds
    from core.import_recount import StuckImportRecount
    from core.import_service import ImportQueries, ImportSplitter, OrderImporter
    from core.jeopardy import JeopardyScan
    from core.notifications import NotificationRetries, NotificationStore, Notifier, OrderNotifications
    from core.pickups import PickupExpiry
    from core.purchasing import Purchasing, PurchasingRepository
    from core.reconciliation import Reconciler
    from core.refund_service import KeptBackSweep, PendingRefundSweep, RefundService
    from core.reorder import Replenishment
    from core.reorder_buying import ReorderBuying
    from core.return_models import Return
    from core.return_reconciliation import ReturnReconciler
    from core.returns import Returns
    from core.sourcing import Simulator, SourcingRulesService
    from core.webhooks import (
        DeliveryQueue,
        DeliveryWorker,
        EventDispatcher,
        EventPublisher,
        Resolver,
        RetrySchedule,
        Target,
        Webhooks,
        WebhookSender,
        WebhookStore,
    )
    from core.workflow import Workflow
    from functions.adapters.api_gateway import ApiGatewayAuthorizerCache, ApiGatewayKeys
    from functions.adapters.imports import DynamoImportLedger, S3ImportFiles, SqsOrderQueue

logger = Logger(child=True)
# core/ (and an adapter or two) log through the standard library (core imports no powertools):
# those loggers get the functions' own handler, so that their lines are JSON with the invocation's
# keys (`order_id`, the request id) like every other line, instead of the Lambda runtime's plain
# text, which the runbooks' queries (`level`, `message`, `order_id`) do not parse, and card numbers
# masked as in every line the functions write (functions/masked_logs.py). Each module's
# logger is a child of "core" or "functions", so modules imported later are covered too.
for _parent in ("core", "functions"):
    logging.getLogger(_parent)  # registered, so that the copy finds it
copy_config_to_registered_loggers(source_logger=function_logger(), include={"core", "functions"})


class Config(NamedTuple):
    """What a function is told by its environment (template.yaml sets it on AWS).

    A NamedTuple, immutable as a frozen dataclass is: Python compiles each method a dataclass
    generates, which for the 28 fields it had then was 12.7 M instructions of every new container's import
    (2.0 M as a NamedTuple)."""

    orders_table: str = ""
    inventory_table: str = ""
    catalog_table: str = ""
    idempotency_table: str = ""
    returns_table: str = ""
    catalog_cache_seconds: float = 10.0
    labels_bucket: str = ""
    import_queue_url: str = ""
    order_workflow_arn: str = ""
    return_workflow_arn: str = ""
    import_splitter_role_id: str | None = None  # the splitter's messages are import lines
    import_queue_sender_channels: str = ""  # other senders: "<unique id>=channel+channel,..."
    # The import queue's maxReceiveCount: an import line's last delivery failing parks it (0: never).
    import_queue_max_receives: int = 0
    disabled_plugins: frozenset[str] = frozenset()  # entry-point names never loaded
    enable_test_payments: bool = False  # the `test` gateway: pays on test tokens (tok_approve)
    reconcile_after_minutes: float = 15.0  # the reconciler's thresholds (template parameters)
    reconcile_park_after_minutes: float = 60.0
    sla: str = ""  # OMS_SLA: per-status deadlines over the defaults (core/jeopardy.py)
    hold_expiry_days: float = 0.0  # OMS_HOLD_EXPIRY_DAYS: 0 never cancels a hold
    return_expiry_days: float = 30.0  # OMS_RETURN_EXPIRY_DAYS: 0 never cancels an unreceived return
    # Events and webhooks (issue 14): the bus, the delivery queue and the retry schedule.
    event_bus_name: str = ""
    webhook_queue_url: str = ""
    webhook_retry_base_seconds: float = 30.0
    webhook_retry_max_delay_seconds: float = 3600.0
    webhook_retry_window_seconds: float = 86400.0
    webhook_allow_local_http: bool = False  # the local stack's http://127.0.0.1 receivers
    pickup_expiry_days: float = 7.0  # OMS_PICKUP_EXPIRY_DAYS: 0 never cancels an uncollected pickup
    authorization_valid_days: float = 7.0  # OMS_AUTHORIZATION_VALID_DAYS: older is authorized again at capture
    access_log_queue_url: str = ""  # the API queues each read of an order there (issue 14)
    # How long the gateway caches the authorizer's answers (AuthorizerCacheSeconds), and how long an
    # authorizer run can last (its Timeout): where answers are cached, a revocation flushes that
    # cache again after such a run, for one that read the key before it (0: no second flush).
    authorizer_cache_seconds: float = 5.0
    authorizer_timeout_seconds: float = 0.0
    # OMS_PLAIN_IDEMPOTENCY_RECORDS (PlainIdempotencyRecords): an Idempotency-Key's record keeps its
    # answer as plain JSON, which releases before deflated records read (functions/api/idempotency.py).
    plain_idempotency_records: bool = False
    # GATEWAY_KEY_PLAN (KeyRateLimit set): the per-key usage plan's name, where POST /api-keys gives
    # each new key its own API Gateway key; empty when per-key usage plans are off.
    gateway_key_plan: str = ""

    @classmethod
    def from_env(cls) -> Config:
        """Every function gets the four tables (Globals); the rest only the functions that use it."""
        return cls(
            orders_table=os.environ["ORDERS_TABLE"],
            inventory_table=os.environ["INVENTORY_TABLE"],
            catalog_table=os.environ["CATALOG_TABLE"],
            idempotency_table=os.environ["IDEMPOTENCY_TABLE"],
            returns_table=os.environ.get("RETURNS_TABLE", ""),
            catalog_cache_seconds=_number("OMS_CATALOG_CACHE_SECONDS", 10),
            labels_bucket=os.environ.get("LABELS_BUCKET", ""),
            import_queue_url=os.environ.get("IMPORT_QUEUE_URL", ""),
            order_workflow_arn=os.environ.get("ORDER_WORKFLOW_ARN", ""),
            return_workflow_arn=os.environ.get("RETURN_WORKFLOW_ARN", ""),
            import_splitter_role_id=os.environ.get("IMPORT_SPLITTER_ROLE_ID") or None,
            import_queue_sender_channels=os.environ.get("IMPORT_QUEUE_SENDER_CHANNELS", ""),
            import_queue_max_receives=int(_number("IMPORT_QUEUE_MAX_RECEIVES", 0)),
            disabled_plugins=frozenset(
                name.strip() for name in os.environ.get("OMS_DISABLED_PLUGINS", "").split(",") if name.strip()
            ),
            enable_test_payments=_switch("OMS_ENABLE_TEST_PAYMENTS"),
            reconcile_after_minutes=_number("RECONCILE_AFTER_MINUTES", 15),
            reconcile_park_after_minutes=_number("RECONCILE_PARK_AFTER_MINUTES", 60),
            sla=os.environ.get("OMS_SLA", ""),
            hold_expiry_days=_number("OMS_HOLD_EXPIRY_DAYS", 0),
            return_expiry_days=_number("OMS_RETURN_EXPIRY_DAYS", 30),
            event_bus_name=os.environ.get("EVENT_BUS_NAME", ""),
            webhook_queue_url=os.environ.get("WEBHOOK_QUEUE_URL", ""),
            webhook_retry_base_seconds=_number("WEBHOOK_RETRY_BASE_SECONDS", 30),
            webhook_retry_max_delay_seconds=_number("WEBHOOK_RETRY_MAX_DELAY_SECONDS", 3600),
            webhook_retry_window_seconds=_number("WEBHOOK_RETRY_WINDOW_SECONDS", 86400),
            webhook_allow_local_http=_switch("WEBHOOK_ALLOW_LOCAL_HTTP"),
            pickup_expiry_days=_number("OMS_PICKUP_EXPIRY_DAYS", 7),
            authorization_valid_days=_number("OMS_AUTHORIZATION_VALID_DAYS", 7),
            access_log_queue_url=os.environ.get("ACCESS_LOG_QUEUE_URL", ""),
            authorizer_cache_seconds=_number("AUTHORIZER_CACHE_SECONDS", 5),
            authorizer_timeout_seconds=_number("AUTHORIZER_TIMEOUT_SECONDS", 0),
            plain_idempotency_records=_switch("OMS_PLAIN_IDEMPOTENCY_RECORDS"),
            gateway_key_plan=os.environ.get("GATEWAY_KEY_PLAN", ""),
        )


def _number(name: str, default: float) -> float:
    """A numeric setting from the environment (`default` when unset or empty), or ValueError naming
    it: any finite number (core.settings.setting: whatever spelling the deploy let through), not
    `nan`, `inf` or what is no number."""
    raw = os.environ.get(name) or ""
    if not raw.strip():
        return float(default)
    value = setting(raw)
    if value is None:
        raise ValueError(f"{name} must be a number, not {raw!r}")
    return value


def _switch(name: str) -> bool:
    """A true/false setting (the template's AllowedValues; any case, spaces around it ignored);
    unset or empty is false. Anything else is ValueError naming it: `yes` or `1` meant false, silently."""
    raw = os.environ.get(name) or ""
    value = raw.strip().lower()
    if value not in ("", "true", "false"):
        raise ValueError(f"{name} must be true or false, not {raw!r}")
    return value == "true"


def _expiry(days: float, name: str) -> timedelta | None:
    """An OMS_*_EXPIRY_DAYS setting as a wait (None for 0: never), or ValueError naming it. At most
    100 years (core.deadline.LONGEST, as OMS_SLA's deadlines): more, meant as "practically never",
    put a ready pickup's collect_by, or a pass's cut-off for holds and returns, off the calendar, so
    every POST .../ready, or every jeopardy pass, failed; NaN and inf likewise."""
    days = _within(days, name, "days", zero="0 (never) or ")
    return timedelta(days=days) if days else None


def _within(value: float, name: str, unit: str, zero: str = "", over: float = 0.0) -> float:
    """A numeric setting (a duration in `unit`: days, minutes or seconds), or ValueError naming it
    when it is negative, NaN, inf or over 100 years (core.deadline.LONGEST): such a value fails
    every request or pass that reads it (a wait off the calendar, or timedelta refusing it), so it
    is refused where it is read, with the setting's name in the error the function logs (and its
    errors alarm counts) instead of an OverflowError naming nothing. `zero` (e.g. "0 (never) or ")
    says 0 is allowed; without it the setting must be more than `over` (positive by default)."""
    most = LONGEST / timedelta(**{unit: 1})
    least_ok = value >= 0 if zero else value > over
    if not least_ok or not value <= most:  # both False for NaN
        least = f"more than {over:g} {unit}" if over and not zero else f"a positive number of {unit}"
        raise ValueError(f"{name} must be {zero}{least}, at most {most:.0f} (100 years), not {value:g}")
    return value


def _required(value: str, name: str) -> str:
    if not value:
        raise RuntimeError(f"{name} is not set for this function (see template.yaml)")
    return value


class Container:
    """The services of one function. Each is built on first use, so a function pays only for
    the slice it uses: the authorizer never loads a plugin, the outbox never opens a table.
    bootstrap() is how one is made; any attribute below can be given to it instead of built."""

    def __init__(self, config: Config):
        self.config = config

    # --- AWS clients (thread-safe; one of each per container) -----------------------------------
    @cached_property
    def dynamodb(self) -> Any:
        return aws_client("dynamodb")

    @cached_property
    def s3(self) -> Any:
        return aws_client("s3")

    @cached_property
    def sqs(self) -> Any:
        return aws_client("sqs")

    @cached_property
    def stepfunctions(self) -> Any:
        return aws_client("stepfunctions")

    @cached_property
    def apigateway(self) -> Any:
        return aws_client("apigateway")

    @cached_property
    def lambda_(self) -> Any:
        return aws_client("lambda")

    # --- Plugins and time -----------------------------------------------------------------------
    @cached_property
    def plugins(self) -> OmsPluginManager:
        """Loaded once per container. A plugin that cannot load is logged here, named by GET
        /health, and stops every route, step and import that calls a hook (plugin_unavailable)."""
        config = self.config
        plugins = load_plugin_manager(
            disabled=config.disabled_plugins, enable_test_payments=config.enable_test_payments
        )
        for broken in plugins.broken:
            # The only place besides GET /plugins (admin) that says why: /health and
            # plugin_unavailable show the exception's type alone. With the traceback, which has
            # its whole message where `reason` is cut to 500 characters.
            logger.error(
                "plugin failed to load",
                extra={"plugin": broken.name, "distribution": broken.distribution, "error": broken.error,
                       "reason": broken.reason},
                exc_info=plugins.load_error(broken.name),
            )  # fmt: skip
        for name, reason in plugins.disabled.items():
            logger.info("plugin disabled", extra={"plugin": name, "reason": reason})
        return plugins

    @cached_property
    def clock(self) -> Callable[[], datetime]:
        return utc_now

    # --- Repositories and stores ----------------------------------------------------------------
    @cached_property
    def order_repository(self) -> OrderRepository:
        # Every order write is counted as the business metric it is (functions.business_metrics);
        # imported here, not at the top: the authorizer never writes an order.
        from functions.business_metrics import MeteredOrders

        # The Catalog table holds the pages of an order's history too long for its item.
        config = self.config
        return MeteredOrders(
            DynamoOrders(self.dynamodb, config.orders_table, config.inventory_table, config.catalog_table)
        )

    @cached_property
    def return_repository(self) -> ReturnRepository:
        # Its writes are noted as changes of their order, as the order repository's are (the API's
        # access log: a receipt received again, which writes nothing, is a read).
        from functions.business_metrics import NotedReturns

        return NotedReturns(DynamoReturns(self.dynamodb, _required(self.config.returns_table, "RETURNS_TABLE")))

    @cached_property
    def catalog_repository(self) -> DynamoCatalog:
        # Not cached: the workflow must see a location opened a second ago (one read per step).
        return DynamoCatalog(self.dynamodb, self.config.catalog_table)

    @cached_property
    def _catalog_cache_seconds(self) -> float:
        # inf would keep a warm container's first read of the catalog and the rules for ever.
        return _within(self.config.catalog_cache_seconds, "OMS_CATALOG_CACHE_SECONDS", "seconds", zero="0 or ")

    @cached_property
    def cached_catalog(self) -> CachedCatalog:
        # Capture reads every ordered product and the network per order: see CachedCatalog.
        return CachedCatalog(self.catalog_repository, self._catalog_cache_seconds)

    @cached_property
    def inventory_repository(self) -> DynamoInventory:
        # A reserve refused for a full stock item is counted (functions.business_metrics).
        from functions.business_metrics import MeteredInventory

        return MeteredInventory(DynamoInventory(self.dynamodb, self.config.inventory_table))

    @cached_property
    def backorders(self) -> DynamoBackorders:
        # The queues live in the Inventory table, beside the stock they wait for (see DynamoBackorders).
        # A fill refused for a full stock item is counted (functions.business_metrics).
        from functions.business_metrics import MeteredBackorders

        config = self.config  # the Catalog table: where a long history moves (DynamoOrders)
        return MeteredBackorders(
            DynamoBackorders(self.dynamodb, config.inventory_table, config.orders_table, config.catalog_table)
        )

    @cached_property
    def api_key_repository(self) -> DynamoApiKeys:
        return DynamoApiKeys(self.dynamodb, self.config.catalog_table)

    @cached_property
    def authorizer_cache(self) -> ApiGatewayAuthorizerCache:
        from functions.adapters.api_gateway import ApiGatewayAuthorizerCache

        return ApiGatewayAuthorizerCache(self.apigateway)

    @cached_property
    def gateway_keys(self) -> ApiGatewayKeys | None:
        """Per-key usage plans' API Gateway keys; None when they are off (GATEWAY_KEY_PLAN empty)."""
        from functions.adapters.api_gateway import ApiGatewayKeys

        return ApiGatewayKeys(self.apigateway, self.config.gateway_key_plan) if self.config.gateway_key_plan else None

    @cached_property
    def label_store(self) -> S3Labels:
        return S3Labels(self.config.labels_bucket)

    @cached_property
    def import_ledger(self) -> DynamoImportLedger:
        from functions.adapters.imports import DynamoImportLedger

        return DynamoImportLedger(self.dynamodb, self.config.catalog_table, self.config.idempotency_table)

    @cached_property
    def import_files(self) -> S3ImportFiles:
        from functions.adapters.imports import S3ImportFiles

        return S3ImportFiles(self.s3)

    @cached_property
    def workflow_starter(self) -> StepFunctionsStarter:
        return StepFunctionsStarter(self.stepfunctions, _required(self.config.order_workflow_arn, "ORDER_WORKFLOW_ARN"))

    @cached_property
    def return_workflow(self) -> ReturnWorkflowStarter:
        return StepFunctionsReturnStarter(
            self.stepfunctions, _required(self.config.return_workflow_arn, "RETURN_WORKFLOW_ARN")
        )

    @cached_property
    def idempotency_store(self) -> Any:
        """powertools' DynamoDB persistence layer for Idempotency-Key, imported only when used."""
        from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

        return DynamoDBPersistenceLayer(table_name=self.config.idempotency_table, boto3_client=self.dynamodb)

    # --- Services -------------------------------------------------------------------------------
    @cached_property
    def payments(self) -> Payments:
        return Payments(self.plugins)

    @cached_property
    def capture(self) -> CaptureService:
        return CaptureService(
            self.order_repository,
            self.cached_catalog,
            self.inventory_repository,
            Pricing(self.plugins),
            clock=self.clock,
            payment_methods=self.payments.methods,
            review_rules=self.plugins,
            sourcing_rules=self.capture_sourcing_rules.current,
            sourcing=self.plugins,
        )

    @cached_property
    def catalog(self) -> CatalogService:
        return CatalogService(self.cached_catalog, clock=self.clock, stored=self.catalog_repository)

    @cached_property
    def inventory(self) -> InventoryService:
        # A stock take below the reserved units rejects the shipments it no longer covers, and
        # sends backordered orders' units there back to be sourced.
        return InventoryService(
            self.inventory_repository,
            self.cached_catalog,
            orders=lambda: self.order_repository,
            # The container's clock, as the orders': a count's time is set against a hand-over's.
            clock=self.clock,
            reject=lambda order_id, shipment_id, reason, actor, counted_sku=None: self.actions.reject(
                order_id, shipment_id, reason, actor, counted_sku=counted_sku
            ),
            send_back=lambda order_id, location_id, reason, actor, counted_sku=None: (
                self.actions.source_backorder_again(order_id, location_id, reason, actor, counted_sku=counted_sku)
            ),
        )

    @cached_property
    def orders(self) -> OrderQueries:
        # The returns service is built at the first history read, never for a read of the order.
        # The catalog is built at a store's first pickup list, never for another read.
        return OrderQueries(
            self.order_repository, owed_entries=lambda order: self.returns.owed_entries(order),
            location=lambda location_id: self.cached_catalog.get_location(location_id),
        )  # fmt: skip

    @cached_property
    def authorizer_settle_seconds(self) -> float:
        """How long a revocation waits before it flushes the gateway's cache a second time: the
        authorizer's timeout, where the gateway caches its answers; with no cache
        (AuthorizerCacheSeconds 0) no answer outlives its run, nothing to wait for. Each setting
        negative or over 100 years is a ValueError naming it, as every duration is (_within)."""
        config = self.config
        cache = _within(config.authorizer_cache_seconds, "AUTHORIZER_CACHE_SECONDS", "seconds", zero="0 or ")
        timeout = _within(config.authorizer_timeout_seconds, "AUTHORIZER_TIMEOUT_SECONDS", "seconds", zero="0 or ")
        return timeout if cache > 0 else 0.0

    @cached_property
    def api_keys(self) -> ApiKeyService:
        seconds = self.authorizer_settle_seconds
        settle = (lambda: time.sleep(seconds)) if seconds > 0 else None
        return ApiKeyService(
            self.api_key_repository,
            clock=self.clock,
            authorizer_cache=self.authorizer_cache,
            settle=settle,
            gateway_keys=self.gateway_keys,
            catalog=self.catalog_repository,
        )

    @cached_property
    def holds(self) -> Holds:
        from core.holds import Holds

        return Holds(
            self.order_repository, clock=self.clock, inventory=self.inventory_repository, catalog=self.cached_catalog
        )

    @cached_property
    def actions(self) -> OrderActions:
        from core.fulfillment import OrderActions

        pickup_expiry = _expiry(self.config.pickup_expiry_days, "OMS_PICKUP_EXPIRY_DAYS")
        valid_days = _within(self.config.authorization_valid_days, "OMS_AUTHORIZATION_VALID_DAYS", "days")

        return OrderActions(
            self.order_repository,
            self.cached_catalog,
            self.inventory_repository,
            self.payments,
            self.capture,
            clock=self.clock,
            refunds=self.refunds,
            pickup_expiry=pickup_expiry,
            authorization_valid_for=timedelta(days=valid_days),
            credits=self.exchange_credits,
            hook=self.plugins.hook,
            labels=self.label_store,
            returns=self.return_repository if self.config.returns_table else None,
            resourcing=self.workflow,
        )

    @cached_property
    def pickup_expiry(self) -> PickupExpiry:
        """The reconciler's second job: cancel pickups nobody collected in time."""
        from core.pickups import PickupExpiry
        from functions.adapters import aws_errors

        return PickupExpiry(
            DynamoDuePickups(self.dynamodb, self.config.orders_table), self.order_repository, self.actions, self.clock,
            # An AWS service down is no order's own failure: the pass stops on it.
            outage=aws_errors.pass_stopper,
        )  # fmt: skip

    @cached_property
    def refunds(self) -> RefundService:
        """Appeasements, returns' refunds and cancellations' over-captures: `issue_refund(...)`."""
        from core.refund_service import RefundService

        return RefundService(self.order_repository, self.payments, self.clock)

    @cached_property
    def exchange_credits(self) -> ExchangeCredits | None:
        """What gives an exchange's credit back when its replacement does not go ahead; None in a
        function the template gives no RETURNS_TABLE: it never cancels an order or fails a payment
        (tests/unit/test_template_security.py checks that every one that does has the table)."""
        if not self.config.returns_table:
            return None
        from core.exchange_credit import ExchangeCredits

        return ExchangeCredits(self.return_repository, self.refunds, self.order_repository, self.clock)

    @cached_property
    def returns(self) -> Returns:
        from core.returns import Returns

        # The network (a return's destination, its label's address, a receipt's location) and the
        # products, read as capture reads them: once per OMS_CATALOG_CACHE_SECONDS (CachedCatalog).
        return Returns(
            self.order_repository,
            self.return_repository,
            self.cached_catalog,
            self.inventory_repository,
            self.label_store,
            self.plugins.hook,
            self.refunds,
            clock=self.clock,
            capture=self.capture,
        )

    @cached_property
    def workflow(self) -> Workflow:
        from core.workflow import Workflow

        return Workflow(
            self.order_repository,
            self.catalog_repository,
            self.inventory_repository,
            self.plugins,
            self.label_store,
            clock=self.clock,
            backorders=self.backorders,
            sourcing_rules=self.sourcing_rules,
            credits=self.exchange_credits,
        )

    # --- Sourcing rules and what-if (issue 15) ------------------------------------------------------
    @cached_property
    def sourcing_rules(self) -> DynamoSourcingRules:
        # Read at every allocation (one Query): a change applies to the next order allocated.
        return DynamoSourcingRules(self.dynamodb, self.config.catalog_table)

    @cached_property
    def capture_sourcing_rules(self) -> CachedSourcingRules:
        # Capture's stock check reads the rules once per OMS_CATALOG_CACHE_SECONDS, those this
        # container's PUT /sourcing/rules answers at once.
        return CachedSourcingRules(self.sourcing_rules, self._catalog_cache_seconds)

    @cached_property
    def sourcing_rules_service(self) -> SourcingRulesService:
        from core.sourcing import SourcingRulesService

        # The network read fresh: a location added a second ago may be named at once.
        return SourcingRulesService(
            self.sourcing_rules, self.catalog_repository, clock=self.clock, in_force=self.capture_sourcing_rules.hold
        )

    @cached_property
    def simulator(self) -> Simulator:
        from core.sourcing import Simulator

        return Simulator(
            self.order_repository,
            self.catalog_repository,
            self.inventory_repository,
            self.sourcing_rules,
            self.plugins,
            self.backorders,
        )

    @cached_property
    def backorder_allocator(self) -> BackorderAllocator:
        from core.backorders import BackorderAllocator

        return BackorderAllocator(
            self.order_repository,
            self.catalog_repository,
            self.backorders,
            self.workflow,
            self.workflow_starter,
            self.sourcing_rules,
            DynamoBackorderedOrders(self.dynamodb, self.config.orders_table),
        )

    @cached_property
    def expected_arrivals(self) -> ExpectedArrivals:
        from core.backorders import ExpectedArrivals

        # The network through the container's cache; the rules fresh (one Query), as a fill reads them.
        return ExpectedArrivals(self.inventory_repository, self.cached_catalog, self.sourcing_rules)

    @cached_property
    def _reconcile_after(self) -> timedelta:
        """ReconcileAfterMinutes, which the reconciler's jobs and the jeopardy scan wait: more than
        5 minutes (the template's MinValue is 6), as the reconciler's restart requires. Younger, an
        order's Express execution, or the API request that wrote what a pass settles, may still be
        running: every other pass (pending refunds, unsettled authorizations, captures, carrier
        work) would act on it meanwhile while only the restart pass failed."""
        minutes = _within(self.config.reconcile_after_minutes, "RECONCILE_AFTER_MINUTES", "minutes", over=5)
        return timedelta(minutes=minutes)

    @cached_property
    def reconciler(self) -> Reconciler:
        from core.reconciliation import Reconciler
        from functions.adapters import aws_errors

        config = self.config
        return Reconciler(
            DynamoStalledOrders(self.dynamodb, config.orders_table),
            self.order_repository,
            self.workflow_starter,
            self.workflow,
            self.clock,
            restart_after=self._reconcile_after,
            park_after=self._park_after,
            # An AWS service down is no order's own failure: the pass stops on it.
            outage=aws_errors.pass_stopper,
        )

    @cached_property
    def _park_after(self) -> timedelta:
        """ParkStalledAfterMinutes: more than ReconcileAfterMinutes (a stalled order is restarted
        before it is parked), or ValueError naming both settings."""
        minutes = _within(self.config.reconcile_park_after_minutes, "RECONCILE_PARK_AFTER_MINUTES", "minutes")
        restart = self._reconcile_after / timedelta(minutes=1)
        if minutes <= restart:
            raise ValueError(
                f"RECONCILE_PARK_AFTER_MINUTES must be more than RECONCILE_AFTER_MINUTES ({restart:g}), not {minutes:g}"
            )
        return timedelta(minutes=minutes)

    @cached_property
    def pending_refund_sweep(self) -> PendingRefundSweep:
        """The reconciler's fourth job: finish refunds a request left pending at the gateway."""
        from core.refund_service import PendingRefundSweep
        from functions.adapters.dynamodb import DynamoPendingRefunds

        return PendingRefundSweep(
            DynamoPendingRefunds(self.dynamodb, self.config.orders_table),
            self.refunds,
            self.clock,
            after=self._reconcile_after,
        )

    @cached_property
    def _sweep_cancellation(self) -> Cancellation:
        """The cancellation the scheduled sweeps settle payments through: as a request's, but a
        gateway outage is written in an order's history once, not once per pass
        (outage_noted_once)."""
        from core.cancellation import Cancellation
        from core.order_changes import outage_noted_once

        return Cancellation(
            self.order_repository, self.catalog_repository, self.inventory_repository, self.payments, self.clock,
            self.exchange_credits, void_failures=outage_noted_once,
        )  # fmt: skip

    @cached_property
    def authorization_sweep(self) -> UnsettledAuthorizationSweep:
        """The reconciler's fifth job: settle the authorizations edits left on orders nobody
        changes again, and the cancelled orders' own the gateway could not void. Taken once
        `ReconcileAfterMinutes` (at least 6) have passed since the order last changed: the PATCH
        that wrote a request runs in the API function, whose timeout (10 s) has ended it long
        before."""
        from core.authorization_sweep import UnsettledAuthorizationSweep
        from functions.adapters.dynamodb import DynamoUnsettledAuthorizations

        return UnsettledAuthorizationSweep(
            DynamoUnsettledAuthorizations(self.dynamodb, self.config.orders_table),
            self.order_repository,
            self._sweep_cancellation,
            self.clock,
            after=self._reconcile_after,
        )

    @cached_property
    def capture_sweep(self) -> UnrecordedCaptureSweep:
        """The jeopardy scan's hand-on: settle the captures ships (or settlements) asked for and never
        recorded on orders nobody ships again, found late by the scan (Scanned.captures_left); and
        the reconciler's seventh job, the settlement captures found through settlement_captures. Taken
        once `ReconcileAfterMinutes` (at least 6) have passed since the order last changed: the ship
        that wrote a request runs in the API function, whose timeout (10 s) has ended it long before."""
        from core.capture_sweep import UnrecordedCaptureSweep

        return UnrecordedCaptureSweep(
            self.order_repository,
            self._sweep_cancellation,
            self.clock,
            after=self._reconcile_after,
        )

    @cached_property
    def settlement_captures(self) -> SettlementCaptures:
        """The orders a settlement capture request stands on (the reconciler's capture_sweep pass)."""
        from functions.adapters.dynamodb import DynamoSettlementCaptures

        return DynamoSettlementCaptures(self.dynamodb, self.config.orders_table)

    @cached_property
    def carrier_work_sweep(self) -> CarrierWorkSweep:
        """The reconciler's sixth job: what carriers are still owed (a parcel due a new label, a
        given-up booking to cancel)."""
        from core.carrier_bookings import CarrierWorkSweep
        from functions.adapters import aws_errors
        from functions.adapters.dynamodb import DynamoOrdersOwingCarrier

        return CarrierWorkSweep(
            DynamoOrdersOwingCarrier(self.dynamodb, self.config.orders_table),
            self.order_repository,
            self.actions,
            self.clock,
            after=self._reconcile_after,
            outage=aws_errors.pass_stopper,  # a table down ends the pass; a record that no longer reads does not
        )

    @cached_property
    def import_recount(self) -> StuckImportRecount:
        """The reconciler's imports pass: imports left running short by a line marked and never
        counted, recounted from their line markers (core/import_recount.py)."""
        from core.import_recount import StuckImportRecount
        from functions.adapters import aws_errors

        return StuckImportRecount(
            self.import_ledger,
            self.clock,
            # An AWS service down is no import's own failure: the pass stops on it.
            outage=aws_errors.pass_stopper,
        )

    @cached_property
    def kept_back_sweep(self) -> KeptBackSweep:
        """The reconciler's eighth job: refund what returns kept back, once the captures make it
        refundable, on orders whose last ship, delivery or cancel of units did not."""
        from core.refund_service import KeptBackSweep
        from functions.adapters import aws_errors
        from functions.adapters.dynamodb import DynamoKeptBackRefunds

        return KeptBackSweep(
            DynamoKeptBackRefunds(self.dynamodb, self.config.orders_table),
            self.order_repository,
            self.actions.refund_kept_back,
            self.clock,
            release_stock=self.actions.release_owed_stock,
            after=self._reconcile_after,
            outage=aws_errors.pass_stopper,  # a table down ends the pass; a record that no longer reads does not
        )

    @cached_property
    def return_reconciler(self) -> ReturnReconciler:
        """The reconciler's third job: start the workflow of received returns that have none."""
        from core.return_reconciliation import ReturnReconciler
        from functions.adapters import aws_errors

        return ReturnReconciler(
            DynamoReceivedReturns(self.dynamodb, _required(self.config.returns_table, "RETURNS_TABLE")),
            self.return_repository,
            self.order_repository,
            self.return_workflow,
            self.clock,
            restart_after=self._reconcile_after,
            payment_methods=self.payments.methods,
            # An AWS service down is no return's own failure: the pass stops on it.
            outage=aws_errors.pass_stopper,
            mark_refunded=self._mark_refunded,
        )

    def _mark_refunded(self, return_id: str) -> Return:
        """A stuck return whose refund succeeded since, marked refunded as its refund step marks it,
        or an exchange's as its Exchange step does (functions/return_workflow: the payment plugins
        loaded first, as the steps require; each step leaves the other's return as it is)."""
        self.plugins.require_loaded()
        self.returns.refund(return_id, "reconciler")
        return self.returns.exchange(return_id, "reconciler")

    @cached_property
    def jeopardy_scan(self) -> JeopardyScan:
        from core.jeopardy import JeopardyScan, parse_sla
        from functions.adapters import aws_errors

        config = self.config
        hold_expiry = _expiry(config.hold_expiry_days, "OMS_HOLD_EXPIRY_DAYS")
        return_expiry = _expiry(config.return_expiry_days, "OMS_RETURN_EXPIRY_DAYS")
        expires_returns = return_expiry is not None
        return JeopardyScan(
            DynamoLateOrders(self.dynamodb, config.orders_table),
            self.order_repository,
            self.actions.cancel,
            self.clock,
            sla=parse_sla(config.sla),
            hold_expiry=hold_expiry,
            unreceived=(
                DynamoUnreceivedReturns(self.dynamodb, _required(config.returns_table, "RETURNS_TABLE"))
                if expires_returns
                else None
            ),
            expire_return=self.returns.expire if expires_returns else None,
            return_expiry=return_expiry,
            captures_after=self._reconcile_after,
            # An AWS service down is no order's own failure: the part stops on it.
            outage=aws_errors.pass_stopper,
        )

    @cached_property
    def import_queries(self) -> ImportQueries:
        from core.import_service import ImportQueries

        return ImportQueries(self.import_ledger)

    @cached_property
    def importer(self) -> OrderImporter:
        """The import worker's use case: the API's capture path, recording on the ledger."""
        from core.import_service import OrderImporter, QueueSenders
        from functions.import_splitter.readers import field_in_file

        senders = QueueSenders.parse(self.config.import_splitter_role_id, self.config.import_queue_sender_channels)
        # Who created a duplicate's order, and what it asked, are read from its stored created entry
        # (CaptureService.created_entry): never the API's read, which also writes what the order's
        # returns owe its history (neither the worker's to do, nor granted to it).
        return OrderImporter(
            self.capture, self.import_ledger, clock=self.clock, field_names=field_in_file, senders=senders
        )

    # --- Events and webhooks (issue 14) ----------------------------------------------------------
    @cached_property
    def eventbridge(self) -> Any:
        return aws_client("events")

    # --- Purchasing (issue 15) ------------------------------------------------------------------
    @cached_property
    def purchasing_repository(self) -> PurchasingRepository:
        from functions.adapters.purchasing import DynamoPurchasing

        return DynamoPurchasing(self.dynamodb, self.config.catalog_table, self.config.inventory_table)

    @cached_property
    def purchasing(self) -> Purchasing:
        from core.purchasing import Purchasing

        return Purchasing(self.purchasing_repository, self.catalog_repository, self.clock)

    @cached_property
    def replenishment(self) -> Replenishment:
        from core.reorder import Replenishment

        return Replenishment(self.purchasing_repository, self.catalog_repository, self.clock)

    @cached_property
    def reorder_buying(self) -> ReorderBuying:
        from core.reorder_buying import ReorderBuying

        # The dispatcher (the bus, the webhook queue) is built for the first event, as before a crossing.
        return ReorderBuying(
            self.inventory_repository,
            self.replenishment,
            self.backorder_allocator,
            lambda events: self.event_dispatcher.dispatch(events),
        )

    @cached_property
    def webhook_store(self) -> WebhookStore:
        from functions.adapters.webhooks import DynamoWebhooks

        return DynamoWebhooks(self.dynamodb, self.config.catalog_table)

    @cached_property
    def webhook_queue(self) -> DeliveryQueue:
        from functions.adapters.webhooks import SqsDeliveryQueue

        return SqsDeliveryQueue(self.sqs, _required(self.config.webhook_queue_url, "WEBHOOK_QUEUE_URL"))

    @cached_property
    def event_publisher(self) -> EventPublisher:
        from functions.adapters.webhooks import EventBridgePublisher

        return EventBridgePublisher(self.eventbridge, _required(self.config.event_bus_name, "EVENT_BUS_NAME"))

    @cached_property
    def webhook_sender(self) -> WebhookSender:
        from functions.adapters.webhooks import HttpWebhookSender

        return HttpWebhookSender()

    @cached_property
    def url_resolver(self) -> Resolver:
        from functions.adapters.webhooks import resolve

        return resolve

    @cached_property
    def retry_schedule(self) -> RetrySchedule:
        from core.webhooks import RetrySchedule

        config = self.config
        return RetrySchedule(
            base_seconds=_within(config.webhook_retry_base_seconds, "WEBHOOK_RETRY_BASE_SECONDS", "seconds"),
            max_delay_seconds=_within(
                config.webhook_retry_max_delay_seconds, "WEBHOOK_RETRY_MAX_DELAY_SECONDS", "seconds"
            ),
            window_seconds=_within(
                config.webhook_retry_window_seconds, "WEBHOOK_RETRY_WINDOW_SECONDS", "seconds", zero="0 or "
            ),
        )

    # --- Customer notifications (issue 14) -------------------------------------------------------
    @cached_property
    def notification_store(self) -> NotificationStore:
        from functions.adapters.notifications import DynamoNotifications

        return DynamoNotifications(self.dynamodb, self.config.catalog_table)

    @cached_property
    def notifier(self) -> Notifier:
        from core.notifications import Notifier

        # A pickup readied names its store by name and street, units cancelled their products by name
        # (catalog reads, cached a while).
        catalog = self.cached_catalog
        return Notifier(
            self.notification_store, self.plugins.hook, self.clock, catalog.get_location, catalog.get_product
        )

    @cached_property
    def notification_retries(self) -> NotificationRetries:
        from core.notifications import NotificationRetries
        from functions.adapters import aws_errors

        # An AWS service down is no notification's own failure: the pass stops on it.
        return NotificationRetries(
            self.notification_store, self.plugins.hook, self.clock, self.order_repository.get,
            outage=aws_errors.pass_stopper,
        )  # fmt: skip

    @cached_property
    def order_notifications(self) -> OrderNotifications:
        from core.notifications import OrderNotifications

        return OrderNotifications(self.orders, self.notification_store)

    # --- The access log (issue 14) ----------------------------------------------------------------
    @cached_property
    def read_recorder(self) -> ReadRecorder:
        from functions.adapters.access_log import RECORDING_CLIENT, SqsReadRecorder

        url = _required(self.config.access_log_queue_url, "ACCESS_LOG_QUEUE_URL")
        return SqsReadRecorder(aws_client("sqs", config=RECORDING_CLIENT), url)

    @cached_property
    def access_log_store(self) -> AccessLogStore:
        from functions.adapters.access_log import DynamoAccessLog

        return DynamoAccessLog(self.dynamodb, self.config.catalog_table)

    @cached_property
    def access_log(self) -> AccessLog:
        return AccessLog(self.orders, self.access_log_store, self.clock)

    def check_webhook_url(self, url: str) -> Target:
        """Subscribe time and send time: refuses what check_url refuses (SSRF)."""
        from core.webhooks import check_url

        return check_url(url, self.url_resolver, allow_local_http=self.config.webhook_allow_local_http)

    @cached_property
    def webhooks(self) -> Webhooks:
        from core.webhooks import Webhooks

        return Webhooks(self.webhook_store, self.webhook_queue, self.check_webhook_url, self.clock)

    @cached_property
    def event_dispatcher(self) -> EventDispatcher:
        from core.webhooks import EventDispatcher

        return EventDispatcher(
            self.webhook_store, self.webhook_queue, self.event_publisher, self.clock, self.retry_schedule
        )

    @cached_property
    def delivery_worker(self) -> DeliveryWorker:
        import random

        from core.webhooks import DeliveryWorker

        return DeliveryWorker(
            self.webhook_store,
            self.webhook_queue,
            self.webhook_sender,
            self.check_webhook_url,
            self.clock,
            self.retry_schedule,
            random.random,
        )

    # --- Customers and reports (issue 14 items 4 and 5) --------------------------------------------
    @cached_property
    def aggregate_store(self) -> AggregateStore:
        from functions.adapters.aggregates import DynamoAggregates

        return DynamoAggregates(self.dynamodb, self.config.catalog_table)

    @cached_property
    def aggregates(self) -> Aggregates:
        from core.aggregates import Aggregates

        return Aggregates(self.aggregate_store, self.clock)

    def import_splitter(self) -> tuple[ImportSplitter, SqsOrderQueue]:
        """One per file: the queue batches that file's messages and counts what it sent."""
        from core.import_service import ImportSplitter
        from functions.adapters.imports import SqsOrderQueue
        from functions.import_splitter.readers import field_in_file

        queue = SqsOrderQueue(self.sqs, _required(self.config.import_queue_url, "IMPORT_QUEUE_URL"))
        return ImportSplitter(self.import_ledger, queue, clock=self.clock, field_names=field_in_file), queue


_PARTS = frozenset(name for name, value in vars(Container).items() if isinstance(value, cached_property))


def bootstrap(config: Config, **given: Any) -> Container:
    """The container for `config`. `given` replaces parts by name instead of building them
    (dynamodb=..., plugins=..., clock=..., order_repository=FakeOrders(), ...); what depends on a
    given part is built on it."""
    unknown = sorted(set(given) - _PARTS)
    if unknown:
        raise TypeError(f"bootstrap() got unknown parts {unknown}; known: {sorted(_PARTS)}")
    container = Container(config)
    # A cached_property finds a value already in the instance's __dict__ and never builds it.
    container.__dict__.update(given)
    return container


class WarmContainer(Warm[Container]):
    """A handler module's container: `container()` builds it on the first invocation and keeps
    it while the execution environment is warm. One per handler module (module-level), like
    powertools' `logger` and `app`; tests swap it with `.override(bootstrap(config, ...))`."""

    def __init__(self, build: Callable[[], Container] | None = None):
        super().__init__(build or (lambda: bootstrap(Config.from_env())))


__all__ = ["Config", "Container", "WarmContainer", "bootstrap", "forget_warm_containers"]
