"""The events the OMS POSTs to a subscriber, as the OpenAPI document's webhooks: one per type."""

from typing import Any

from core.domain_events import EVENT_DATA, OMITTABLE, EventType
from core.reorder import LowStock

# A webhook per type, not per kind of data: a subscription names types (POST /webhooks `events`),
# and OMS-Event-Type is one. Each body is a $ref to its kind's envelope (OrderEventBody: `type` one
# of the order's types, `data` an OrderEventData {order}), so a generator makes six named types,
# not nineteen copies, and EventBody (one of them, told apart by `type`) is what a receiver of
# every type ("*") parses.
_COMPONENTS = "#/components/schemas/"
# The schema of each name EVENT_DATA puts in `data`: the API's own answers by $ref, never a copy.
_DATA_SCHEMAS: dict[str, dict[str, Any]] = {
    "order": {"$ref": _COMPONENTS + "Order"},
    "shipment": {"$ref": _COMPONENTS + "Shipment"},
    "return": {"$ref": _COMPONENTS + "Return"},
    "refund": {"$ref": _COMPONENTS + "Refund"},
    "import": {"$ref": _COMPONENTS + "ImportReport"},
    "errors_omitted": {
        "type": "integer",
        "minimum": 0,
        "description": "How many of the errors GET /imports/{id} lists the event does not carry (0 when all)",
    },
    "inventory": {"$ref": _COMPONENTS + "LowStock"},
}
_OMITTED = {
    "type": "array",
    "items": {"type": "string", "enum": [".".join(path) for path in OMITTABLE]},
    "description": "Present only on an event too large whole (over 256 KB): the lists left out of `order`, "
    "in the order they are left out. GET /orders/{id} (GET /orders/{id}/refunds) has them; the object the "
    "event is about is always whole",
}
_HEADERS = [
    {
        "name": "OMS-Event-Id",
        "in": "header",
        "required": True,
        "description": "The body's `id`, for routing: delivery is at least once, so drop an id already "
        "seen, taken from the body (which the signature covers; this header is not signed)",
        "schema": {"type": "string", "pattern": "^evt_"},
    },
    {
        "name": "OMS-Signature",
        "in": "header",
        "required": True,
        "description": 't=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" keyed with the '
        "subscription's secret>. Check it on the raw bytes before parsing them, and refuse an old `t`",
        "schema": {"type": "string", "pattern": "^t=[0-9]+,v1=[0-9a-f]{64}$"},
    },
]
_ANSWER = {
    "2XX": {
        "description": "Delivered: any 2xx answer within 10 s (queue the work, do it after). Anything else, "
        "no answer within 10 s included, is retried with exponential backoff for at least 24 hours; then "
        "the delivery is `failed` (GET /webhooks/{id}/deliveries)"
    }
}


def with_webhooks(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with a webhook per EventType and the envelopes its bodies refer to (components)."""
    schemas = document["components"]["schemas"]
    schemas["LowStock"] = LowStock.model_json_schema(ref_template=_COMPONENTS + "{model}")
    kinds: dict[tuple[str, ...], list[EventType]] = {}
    for type_, objects in EVENT_DATA.items():
        kinds.setdefault(objects, []).append(type_)
    body_of: dict[EventType, str] = {}
    for objects, types in kinds.items():
        kind = next((name for name in objects if name != "order"), "order").title()
        schemas[f"{kind}EventData"] = _data(objects)
        schemas[f"{kind}EventBody"] = _envelope(_COMPONENTS + f"{kind}EventData", types)
        body_of |= dict.fromkeys(types, _COMPONENTS + f"{kind}EventBody")
    schemas["EventBody"] = {
        "oneOf": [{"$ref": ref} for ref in dict.fromkeys(body_of.values())],
        "discriminator": {"propertyName": "type", "mapping": {type_.value: ref for type_, ref in body_of.items()}},
        "description": "Any event's body, told apart by `type`: what a subscription to every type receives",
    }
    document["webhooks"] = {type_.value: _webhook(type_, body_of[type_]) for type_ in EventType}
    return document


def _data(objects: tuple[str, ...]) -> dict[str, Any]:
    """The schema of `data` for events carrying `objects`: a component of its own (OrderEventData),
    so a generator names its class for it, not Data, Data1... by where it comes in the document."""
    data: dict[str, Any] = {
        "type": "object",
        "properties": {name: _DATA_SCHEMAS[name] for name in objects},
        "required": list(objects),
        "additionalProperties": False,
    }
    if "order" in objects:
        data["properties"]["omitted"] = _OMITTED
    return data


def _envelope(data: str, types: list[EventType]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The body of a delivery of "
        + ", ".join(f"`{type_.value}`" for type_ in types)
        + " (and an EventBridge event's `detail`)",
        "properties": {
            "id": {
                "type": "string",
                "pattern": "^evt_",
                "description": "The same change always has the same id: a subscriber dedupes by it",
            },
            "type": {"type": "string", "enum": [type_.value for type_ in types]},
            "created_at": {"type": "string", "format": "date-time"},
            "data": {"$ref": data},
        },
        "required": ["id", "type", "created_at", "data"],
        "additionalProperties": False,
    }


def _webhook(type_: EventType, body: str) -> dict[str, Any]:
    event_type = {
        "name": "OMS-Event-Type",
        "in": "header",
        "required": True,
        "description": "The body's `type`, for routing (not signed)",
        "schema": {"type": "string", "const": type_.value},
    }
    return {
        "post": {
            "summary": f"`{type_.value}` to a subscription's url",
            "operationId": "receive_" + type_.value.replace(".", "_"),
            "parameters": [_HEADERS[0], event_type, _HEADERS[1]],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": body}}}},
            "responses": _ANSWER,
            "security": [],  # the receiver checks OMS-Signature; it takes no API key of ours
        }
    }
