"""Ports: what the services need from storage. Adapters implement them; test fakes subclass them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from core.access import ApiKey
from core.models import HistoryEntry, Location, Order, Product, StockLevel
from core.status import OrderStatus


@dataclass(frozen=True)
class OrderFilter:
    customer_id: str | None = None
    status: OrderStatus | None = None
    channel: str | None = None


class OrderRepository(ABC):
    @abstractmethod
    def add(self, order: Order, first_entry: HistoryEntry, payment_token: str) -> None:
        """Store a new order with its first history entry and the payment token the workflow will
        authorize (kept out of the Order so no response can show it). Raises DuplicateOrder if the
        id exists."""

    @abstractmethod
    def get(self, order_id: str) -> Order | None: ...

    @abstractmethod
    def update(self, order: Order, expected: Order, entries: list[HistoryEntry]) -> None:
        """Replace `expected` by `order` and append `entries` to the history, in one write that
        holds only if the stored order still has `expected`'s status and version. Raises
        StaleVersion otherwise: the caller re-reads and decides again. Refuses (InvalidTransition,
        through core.status.check_successor) an `order` that is not a legal successor of
        `expected`; `order` equal to `expected` appends history only."""

    @abstractmethod
    def get_with_token(self, order_id: str) -> tuple[Order, str] | None:
        """The order and the payment token it was placed with (for the payment plugin; never
        shown), in one read."""

    @abstractmethod
    def history(self, order_id: str) -> tuple[Order, list[HistoryEntry]] | None:
        """The order and its history, oldest first, in one read; None when there is no such order."""

    @abstractmethod
    def list(self, where: OrderFilter, limit: int, cursor: str | None) -> tuple[list[Order], str | None]:
        """Orders matching `where`, newest first, and an opaque cursor for the next page.

        Raises InvalidCursor for a cursor this repository did not issue for the same filter.
        """


class CatalogRepository(ABC):
    @abstractmethod
    def put_product(self, product: Product) -> bool:
        """Create or replace; True when the product is new."""

    @abstractmethod
    def get_product(self, sku: str) -> Product | None: ...

    @abstractmethod
    def get_products(self, skus: set[str]) -> dict[str, Product]:
        """The products that exist among `skus`, by sku."""

    @abstractmethod
    def put_location(self, location: Location) -> bool:
        """Create or replace; True when the location is new."""

    @abstractmethod
    def get_location(self, location_id: str) -> Location | None: ...

    @abstractmethod
    def list_locations(self) -> list[Location]: ...


class InventoryRepository(ABC):
    """Stock per (sku, location). Every change is one conditional write: never read-then-write."""

    @abstractmethod
    def set_on_hand(self, sku: str, location_id: str, on_hand: int, reason: str) -> StockLevel:
        """Set the counted units. Raises InsufficientStock when `on_hand` is below what is reserved."""

    @abstractmethod
    def adjust(self, sku: str, location_id: str, delta: int, reason: str) -> StockLevel:
        """Add `delta` to on_hand. Raises InsufficientStock when on_hand would drop below reserved."""

    @abstractmethod
    def reserve(self, sku: str, location_id: str, key: str, quantity: int) -> None:
        """Move `quantity` from available to reserved under `key` (order#line), in one write
        conditional on enough being available. Idempotent: the same key again is a no-op.
        Raises InsufficientStock when not enough is available."""

    @abstractmethod
    def release(self, sku: str, location_id: str, key: str) -> None:
        """Give the units reserved under `key` back to available. Idempotent."""

    @abstractmethod
    def ship(self, sku: str, location_id: str, key: str) -> None:
        """The units reserved under `key` leave: on_hand and reserved both drop. Idempotent."""

    @abstractmethod
    def reservations(self, keys_by_item: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str, str], int]:
        """Which of the given keys hold reservations on the given (sku, location) items, and how
        many units: {(sku, location_id, key): quantity}."""

    @abstractmethod
    def levels(self, skus: set[str], location_ids: Iterable[str] | None = None) -> dict[str, list[StockLevel]]:
        """Stock records of each sku (skus with none map to []): at `location_ids` (key lookups,
        the capture path) or, when None, at every location."""


class ApiKeyRepository(ABC):
    """API keys, found by the hash of their secret (the authorizer) or by id (administration)."""

    @abstractmethod
    def add(self, key: ApiKey, secret_hash: str) -> None:
        """Store a key; replaces a key with the same id, whose old secret stops working."""

    @abstractmethod
    def by_hash(self, secret_hash: str) -> ApiKey | None: ...

    @abstractmethod
    def list(self, limit: int, cursor: str | None) -> tuple[list[ApiKey], str | None]: ...

    @abstractmethod
    def revoke(self, key_id: str, at: datetime) -> ApiKey | None:
        """Mark the key revoked (idempotent); None when there is no such key."""


@dataclass(frozen=True)
class ApiStage:
    """The deployed API stage a request came through (API Gateway's restApiId and stage name)."""

    api_id: str
    name: str


class AuthorizerCache(ABC):
    """API Gateway's cache of the authorizer's answers, kept per stage for AuthorizerCacheSeconds:
    a revoked key would keep working until its cached answer expired."""

    @abstractmethod
    def flush(self, stage: ApiStage) -> None:
        """Forget every cached answer of `stage`; raises TransientError when that failed."""


class LabelStore(ABC):
    @abstractmethod
    def put_label(self, order_id: str, shipment_id: str, document: bytes, content_type: str) -> str:
        """Store a shipping label (idempotent by shipment) and return its key, what the order keeps."""

    @abstractmethod
    def link(self, key: str) -> str:
        """A short-lived URL to fetch the label stored under `key`, made fresh for each read: a
        stored link would outlive its signature. A `key` that is already a URL (orders stored
        before keys were) is signed again when it points at this store, else returned as is."""


@dataclass(frozen=True)
class StalledOrder:
    order_id: str
    status: OrderStatus
    created_at: datetime


class StalledOrders(ABC):
    """Orders still in a status their workflow should have moved them out of, oldest first."""

    @abstractmethod
    def stalled(self, status: OrderStatus, created_before: datetime, limit: int) -> list[StalledOrder]:
        """Up to `limit` orders in `status` placed before `created_before`, read through an index."""


class DuePickups(ABC):
    """Orders with a pickup waiting at its store past its `collect_by`, found through an index."""

    @abstractmethod
    def due(self, before: datetime, limit: int) -> list[str]:
        """Up to `limit` ids of orders whose earliest waiting pickup was to be collected before
        `before`, earliest first."""


class WorkflowStarter(ABC):
    @abstractmethod
    def start(self, order_id: str, channel: str = "", correlation_id: str = "", rerun: str | None = None) -> bool:
        """Start the order's workflow; False when the service refused a duplicate name (a Standard
        workflow's). Express starts every call: the steps are what make a repeat harmless.
        `channel` and `correlation_id` ride in the input for the steps' log lines; `rerun` names a
        deliberate new execution (the reconciler's), so no service refuses it."""
