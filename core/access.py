"""API keys and scopes: who may call what. Secrets are random and kept only as hashes."""

from collections.abc import Collection
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from core.errors import Forbidden
from core.models import Channel, CleanText, Identifier, Shown, VisibleName
from core.secret_hashes import hash_secret as hash_secret  # re-exported: see core.secret_hashes
from core.secret_hashes import new_secret as new_secret


class Scope(StrEnum):
    ORDERS_WRITE = "orders:write"
    ORDERS_READ = "orders:read"
    ORDERS_APPROVE = "orders:approve"
    INVENTORY_WRITE = "inventory:write"
    CATALOG_WRITE = "catalog:write"
    FULFILLMENT_WRITE = "fulfillment:write"
    RETURNS_WRITE = "returns:write"
    REFUNDS_WRITE = "refunds:write"
    REPORTS_READ = "reports:read"
    WEBHOOKS_WRITE = "webhooks:write"
    AUDIT_READ = "audit:read"
    PURCHASING_WRITE = "purchasing:write"
    ADMIN = "admin"


ADMIN_KEY_ID = "key_admin"
# The most locations one key is bound to: the authorizer passes them in its context, which API
# Gateway caches with the policy (a store chain's regional key binds its stores, a 3PL its sites).
MAX_LOCATIONS = 50


class ApiKey(Shown):
    id: str
    # One stored before invisible characters were refused (NewApiKey) shows each as U+FFFD.
    name: Annotated[str, VisibleName]
    scopes: list[Scope]
    channel: str | None = None
    location_ids: list[str] | None = Field(
        default=None, description="The locations the key acts at, and only there; null: every location."
    )
    created_at: datetime
    revoked_at: datetime | None = None
    # Who minted or cut off a credential (an admin key may issue more admin keys): API Gateway's
    # access log names the route, not the key it made or revoked. Null for the bootstrap admin key
    # and for a key issued or revoked before it was recorded.
    created_by: str | None = Field(default=None, description="The id of the API key that issued this one.")
    revoked_by: str | None = Field(default=None, description="The id of the API key that revoked this one.")


class Caller(BaseModel, defer_build=True, frozen=True):
    """Who is calling, as the authorizer established it (frozen: functions.api.access hands one
    out again to the requests its key's same context makes)."""

    key_id: str
    scopes: frozenset[Scope]
    channel: str | None = None
    location_ids: frozenset[str] | None = None  # None: every location


class NewApiKey(BaseModel):
    """The body of POST /api-keys."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), CleanText]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=len(Scope), json_schema_extra={"uniqueItems": True})]
    channel: Channel | None = None
    location_ids: (
        Annotated[
            list[Identifier], Field(min_length=1, max_length=MAX_LOCATIONS, json_schema_extra={"uniqueItems": True})
        ]
        | None
    ) = Field(
        default=None,
        description="Extension: the locations (warehouses, stores) the key acts at, and only there: a stock write, a "
        "parcel's confirmation, a purchase order, a return received, a store's pickup list or a PUT /locations at "
        "another location (or one the network does not have) is 403, and a carrier's tracking report, which names "
        "parcels of any location, is refused whole. Each must exist.",
    )

    @field_validator("scopes")
    @classmethod
    def _distinct(cls, scopes: list[Scope]) -> list[Scope]:
        if len(set(scopes)) != len(scopes):
            raise ValueError("scopes must not repeat")
        return sorted(scopes)

    @field_validator("channel")
    @classmethod
    def _admin_sees_everything(cls, channel: str | None, info: ValidationInfo) -> str | None:
        if channel is not None and Scope.ADMIN in (info.data.get("scopes") or []):
            raise ValueError("an admin key sees every channel, so it cannot be bound to one")
        return channel

    @field_validator("location_ids")
    @classmethod
    def _distinct_locations_not_for_the_admin(
        cls, location_ids: list[str] | None, info: ValidationInfo
    ) -> list[str] | None:
        if location_ids is None:
            return None
        if len(set(location_ids)) != len(location_ids):
            raise ValueError("location_ids must not repeat")
        if Scope.ADMIN in (info.data.get("scopes") or []):
            raise ValueError("an admin key acts at every location, so it cannot be bound to some")
        return location_ids


class IssuedApiKey(ApiKey):
    """The answer to POST /api-keys: the only time the secret `key` is shown."""

    key: str


def allows(caller: Caller, required: Scope) -> bool:
    return Scope.ADMIN in caller.scopes or required in caller.scopes


def refuse_elsewhere(location_ids: Collection[str] | None, location_id: str) -> None:
    """Forbidden (403) unless a key bound to `location_ids` (None: unbound, as the admin) may act at
    `location_id`. Called before anything is read for the action or written."""
    if location_ids is not None and location_id not in location_ids:
        raise Forbidden(f"this API key acts at its own locations only, not at location {location_id}")
