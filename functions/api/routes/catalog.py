"""Catalog and network: products and locations."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import BaseModel

from core.access import Scope, refuse_elsewhere
from core.models import IDENTIFIER_PATTERN, Location, LocationInput, Product, ProductInput, Shown
from functions.api.access import ANY_KEY, caller, requires
from functions.api.dependencies import container
from functions.api.paths import existing
from functions.api.queries import Cursor, Limit
from functions.api.schemas import errors, ok

router = Router()

IDENTIFIER = IDENTIFIER_PATTERN
# PUT creates what its path names, so a malformed id there is invalid (422); elsewhere it is unknown.
SkuPath = Annotated[str, Path(pattern=IDENTIFIER, description="Product SKU")]
LocationPath = Annotated[str, Path(pattern=IDENTIFIER, description="Location id")]
KnownSkuPath = existing("product", IDENTIFIER, "Product SKU")
KnownLocationPath = existing("location", IDENTIFIER, "Location id")


class LocationList(Shown):
    items: list[Location]
    next_cursor: str | None = None


def _saved(model: BaseModel, created: bool) -> Response:
    return Response(201 if created else 200, content_types.APPLICATION_JSON, model)


@router.put(
    "/products/<sku>",
    summary="Create or replace a product",
    responses={**ok(200, Product, "Replaced"), **ok(201, Product, "Created"), **errors(400, 403, 413)},
)
@requires(Scope.CATALOG_WRITE)
def put_product(sku: SkuPath, product: ProductInput) -> Response[Product]:
    saved, created = container().catalog.put_product(sku, product)
    return _saved(saved, created)


@router.get(
    "/products/<sku>",
    summary="Get a product",
    responses={**ok(200, Product, "The product"), **errors(403, 404)},
)
@requires(ANY_KEY)
def get_product(sku: KnownSkuPath) -> Product:
    return container().catalog.get_product(sku)


@router.put(
    "/locations/<location_id>",
    summary="Create or replace a location (warehouse or store)",
    description="The network is one DynamoDB item of at most 400 KB (about a thousand locations): a location "
    "it has no room for is 409 `location_network_full`.",
    responses={**ok(200, Location, "Replaced"), **ok(201, Location, "Created"), **errors(400, 403, 409, 413)},
)
@requires(Scope.CATALOG_WRITE)
def put_location(location_id: LocationPath, location: LocationInput) -> Response[Location]:
    # A key bound to locations replaces its own only, and opens none.
    refuse_elsewhere(caller(router).location_ids, location_id)
    saved, created = container().catalog.put_location(location_id, location)
    return _saved(saved, created)


@router.get(
    "/locations",
    summary="List locations, in location_id order",
    responses={**ok(200, LocationList, "A page of locations"), **errors(403)},
)
@requires(ANY_KEY)
def list_locations(limit: Limit = 25, cursor: Cursor = None) -> LocationList:
    items, next_cursor = container().catalog.locations(limit, cursor)
    return LocationList(items=items, next_cursor=next_cursor)
