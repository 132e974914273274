"""API keys and scopes: who may call what. Secrets are random and kept only as hashes."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from core.models import Channel, CleanText, Shown, VisibleName
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


class ApiKey(Shown):
    id: str
    # One stored before invisible characters were refused (NewApiKey) shows each as U+FFFD.
    name: Annotated[str, VisibleName]
    scopes: list[Scope]
    channel: str | None = None
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


class NewApiKey(BaseModel):
    """The body of POST /api-keys."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), CleanText]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=len(Scope), json_schema_extra={"uniqueItems": True})]
    channel: Channel | None = None

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


class IssuedApiKey(ApiKey):
    """The answer to POST /api-keys: the only time the secret `key` is shown."""

    key: str


def allows(caller: Caller, required: Scope) -> bool:
    return Scope.ADMIN in caller.scopes or required in caller.scopes
