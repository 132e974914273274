"""Composition root: wires adapters, plugins and services once per Lambda container."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from core.access import ApiKey
from core.fulfillment import OrderActions
from core.import_service import ImportQueries, ImportSplitter, OrderImporter
from core.payments import Payments
from core.plugin_manager import OmsPluginManager, build_plugin_manager
from core.pricing import Pricing
from core.services import ApiKeyService, CaptureService, CatalogService, InventoryService, OrderQueries
from core.workflow import Workflow
from functions.adapters.aws_clients import aws_client
from functions.adapters.catalog_cache import CachedCatalog
from functions.adapters.dynamodb import DynamoApiKeys, DynamoCatalog, DynamoInventory, DynamoOrders
from functions.adapters.imports import DynamoImportLedger, S3ImportFiles, SqsOrderQueue
from functions.adapters.labels import S3Labels

logger = Logger(child=True)


@dataclass(frozen=True)
class Config:
    orders_table: str
    inventory_table: str
    catalog_table: str
    idempotency_table: str
    catalog_cache_seconds: float
    disabled_plugins: frozenset[str] = frozenset()  # entry-point names never loaded
    enable_test_payments: bool = False  # the `test` gateway approves anything

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            orders_table=os.environ["ORDERS_TABLE"],
            inventory_table=os.environ["INVENTORY_TABLE"],
            catalog_table=os.environ["CATALOG_TABLE"],
            idempotency_table=os.environ["IDEMPOTENCY_TABLE"],
            catalog_cache_seconds=float(os.environ.get("OMS_CATALOG_CACHE_SECONDS", "10")),
            disabled_plugins=frozenset(
                name.strip() for name in os.environ.get("OMS_DISABLED_PLUGINS", "").split(",") if name.strip()
            ),
            enable_test_payments=os.environ.get("OMS_ENABLE_TEST_PAYMENTS", "").strip().lower() == "true",
        )


@dataclass(frozen=True)
class Container:
    config: Config
    dynamodb: Any
    plugins: OmsPluginManager
    capture: CaptureService
    catalog: CatalogService
    inventory: InventoryService
    orders: OrderQueries
    api_keys: ApiKeyService
    actions: OrderActions


@functools.cache
def dynamodb_client() -> Any:
    return aws_client("dynamodb")


@functools.cache
def container() -> Container:
    """Built on first use and kept while the container is warm."""
    config = Config.from_env()
    client = dynamodb_client()
    orders = DynamoOrders(client, config.orders_table)
    catalog = CachedCatalog(DynamoCatalog(client, config.catalog_table), config.catalog_cache_seconds)
    inventory = DynamoInventory(client, config.inventory_table)
    plugins = plugin_manager()
    payments = Payments(plugins)
    capture = CaptureService(orders, catalog, inventory, Pricing(plugins), payment_methods=payments.methods)
    return Container(
        config=config,
        dynamodb=client,
        plugins=plugins,
        capture=capture,
        catalog=CatalogService(catalog),
        inventory=InventoryService(inventory, catalog),
        orders=OrderQueries(orders),
        api_keys=ApiKeyService(api_key_repository()),
        actions=OrderActions(orders, catalog, inventory, payments, capture),
    )


@functools.cache
def workflow() -> Workflow:
    """What the order workflow's task functions share, built once per container."""
    config = Config.from_env()
    client = dynamodb_client()
    # Not cached: a step must see a location opened a second ago, and one read per step costs
    # half a read unit.
    return Workflow(
        DynamoOrders(client, config.orders_table),
        DynamoCatalog(client, config.catalog_table),
        DynamoInventory(client, config.inventory_table),
        plugin_manager(),
        S3Labels(os.environ.get("LABELS_BUCKET", "")),
    )


@functools.cache
def plugin_manager() -> OmsPluginManager:
    """The plugins, loaded once per container. A plugin that cannot load is logged here, named by
    GET /health, and stops every route that calls a hook (503 plugin_unavailable)."""
    config = Config.from_env()
    plugins = build_plugin_manager(disabled=config.disabled_plugins, enable_test_payments=config.enable_test_payments)
    for broken in plugins.broken:
        logger.error(
            "plugin failed to load",
            extra={"plugin": broken.name, "distribution": broken.distribution, "reason": broken.reason},
        )
    for name, reason in plugins.disabled.items():
        logger.info("plugin disabled", extra={"plugin": name, "reason": reason})
    return plugins


@functools.cache
def api_key_repository() -> DynamoApiKeys:
    """The authorizer needs only the API keys, not the whole service graph."""
    return DynamoApiKeys(dynamodb_client(), os.environ["CATALOG_TABLE"])


def ensure_admin_key(secret: str) -> ApiKey:
    """Store the admin key (every scope) under the hash of `secret`. Used by `make run` and by
    `python -m infra.admin_key` after a deploy."""
    return ApiKeyService(api_key_repository()).ensure_admin(secret)


# --- Bulk import ---------------------------------------------------------------------------------


@functools.cache
def import_ledger() -> DynamoImportLedger:
    return DynamoImportLedger(dynamodb_client(), os.environ["CATALOG_TABLE"], os.environ["IDEMPOTENCY_TABLE"])


@functools.cache
def import_queries() -> ImportQueries:
    return ImportQueries(import_ledger())


@functools.cache
def order_importer() -> OrderImporter:
    """The import worker's use case: the API's capture service, recording on the ledger."""
    return OrderImporter(container().capture, import_ledger(), container().orders)


@functools.cache
def import_files() -> S3ImportFiles:
    return S3ImportFiles(aws_client("s3"))


@functools.cache
def sqs_client() -> Any:
    return aws_client("sqs")


def import_splitter(time_left: Callable[[], float]) -> tuple[ImportSplitter, SqsOrderQueue]:
    """Per invocation: the queue batches this file's messages and paces against its deadline."""
    queue = SqsOrderQueue(
        sqs_client(),
        os.environ["IMPORT_QUEUE_URL"],
        high_water=int(os.environ.get("IMPORT_QUEUE_HIGH_WATER") or 0),
        time_left=time_left,
    )
    return ImportSplitter(import_ledger(), queue), queue
