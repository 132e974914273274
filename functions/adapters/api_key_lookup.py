"""The authorizer's one read: an API key's lookup item by the secret's hash, without the models.

The authorizer runs on nearly every new connection, so its cold start is paid often: this module
imports boto3's client only (given by the caller), never pydantic or the core models.
DynamoApiKeys writes the items this reads; the key layout lives here so both agree."""

from __future__ import annotations

from typing import Any, NamedTuple

# The lookup items' partitions of the Catalog table, one per key: all the authorizer may read there
# (template.yaml, its dynamodb:LeadingKeys condition).
LOOKUP_PK = "APIKEY#"


def lookup_key(secret_hash: str) -> dict[str, Any]:
    return {"pk": {"S": LOOKUP_PK + secret_hash}, "sk": {"S": "APIKEY"}}


class KeyGrant(NamedTuple):
    """What a stored key lets its caller do, as the authorizer passes it on."""

    key_id: str
    scopes: tuple[str, ...]
    channel: str | None
    revoked: bool
    gateway_key: str | None = None  # its own API Gateway key's value (per-key usage plans)
    location_ids: tuple[str, ...] | None = None  # the locations it acts at; None: every location


class ApiKeyLookup:
    def __init__(self, client: Any, table: str):
        self._client = client
        self._table = table

    def by_hash(self, secret_hash: str) -> KeyGrant | None:
        # Consistent: API Gateway caches the answer, so one stale read just after a revocation (or
        # its cache flush) would let the revoked key in for the whole AuthorizerCacheSeconds.
        item = self._client.get_item(TableName=self._table, Key=lookup_key(secret_hash), ConsistentRead=True).get(
            "Item"
        )
        if item is None:
            return None
        return KeyGrant(
            key_id=item["id"]["S"],
            scopes=tuple(sorted(scope["S"] for scope in item["scopes"]["L"])),
            channel=item["channel"]["S"] if "channel" in item else None,
            revoked="revoked_at" in item,
            gateway_key=item["gateway_key"]["S"] if "gateway_key" in item else None,
            location_ids=tuple(sorted(at["S"] for at in item["location_ids"]["L"])) if "location_ids" in item else None,
        )
