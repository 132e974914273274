"""Events held against the OpenAPI document's webhooks: each body against its type's, $refs resolved."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT = "urn:oms:openapi"


@cache
def openapi_document() -> dict[str, Any]:
    """The document GET /openapi.json serves (its servers entry aside), for tests with no API at hand."""
    from functions.api.routes.meta import _document

    return json.loads(_document("/").body)


def body_schema(document: dict[str, Any], type_: str) -> dict[str, Any]:
    """The schema the document gives the body of a delivery of `type_`."""
    return document["webhooks"][type_]["post"]["requestBody"]["content"]["application/json"]["schema"]


def assert_documented(document: dict[str, Any], event: dict[str, Any]) -> None:
    """`event` (a webhook delivery's body, a bus event's detail) is what the document says a
    delivery of its type is: its $refs into the document's components resolved, formats checked."""
    assert event["type"] in document.get("webhooks", {}), f"no webhook documents {event['type']}"
    registry = Registry().with_resource(DOCUMENT, Resource.from_contents(document, DRAFT202012))
    validator = Draft202012Validator(
        {"$ref": f"{DOCUMENT}#/webhooks/{event['type']}/post/requestBody/content/application~1json/schema"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(event)]
    assert problems == [], (event["type"], problems[:5])
