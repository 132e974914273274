"""Customers and reports: per-customer aggregates and top products, customers and regions (issue 14)."""

from datetime import date
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError

from core.access import Scope
from core.aggregates import CustomerRow, CustomerView, ProductRow, RegionRow, ReportKind
from core.errors import InvalidRequest
from core.models import IDENTIFIER_PATTERN, Email, Shown
from core.money import MINOR_UNITS
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.errors import ApiError
from functions.api.paths import existing
from functions.api.queries import Cursor, Limit
from functions.api.schemas import errors, ok

router = Router()

# Every id an order's customer.id may be (core.models.Identifier), "/" included (percent-encoded in the path).
CustomerIdPath = existing("customer", IDENTIFIER_PATTERN, "Customer id (the orders' customer.id)")


def _email_in_words(value: Any, handler: ValidatorFunctionWrapHandler) -> str:
    """The address's pattern refusal told in words: a person types this query, and a `+` they typed
    (`kim+shop@example.com`) reaches it as a space, as a query string reads it."""
    try:
        return handler(value)
    except ValidationError as refused:
        if [error["type"] for error in refused.errors()] != ["string_pattern_mismatch"]:
            raise
        if isinstance(value, str) and " " in value.strip():
            raise PydanticCustomError(
                "value_error",
                "not an email address: it holds a space (a + in a query string reads as one: send it as %2B)",
            ) from None
        raise PydanticCustomError("value_error", "not an email address such as ada@example.com") from None


# An address as an order takes it (core.models.Email): one no order can have ("ada", the domain
# forgotten) is refused, never an empty page read as "no such customer".
EmailQuery = Annotated[Email, WrapValidator(_email_in_words), Query(description="The customer's email, any case")]
Currency = Annotated[
    str,
    Query(
        pattern=r"^[A-Z]{3}$", description="ISO 4217 code; required", json_schema_extra={"enum": sorted(MINOR_UNITS)}
    ),
]
# Days are YYYY-MM-DD only: a `date` parameter would also take "0.0" (seconds since 1970).
_DAY = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
From = Annotated[
    str | None,
    Query(
        alias="from",
        pattern=_DAY,
        description="First day, UTC, inclusive (default: 29 days before `to`)",
        json_schema_extra={"format": "date"},
    ),
]
To = Annotated[
    str | None,
    Query(
        alias="to",
        pattern=_DAY,
        description="Last day, UTC, inclusive (default: today)",
        json_schema_extra={"format": "date"},
    ),
]
# A channel as orders name it: one that no order can have ("Web") is refused, never an empty report.
Channel = Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="One channel's orders only")]


class CustomerPage(Shown):
    items: list[CustomerView]
    next_cursor: str | None = None


class TopProducts(BaseModel, defer_build=True):
    items: list[ProductRow]


class TopCustomers(BaseModel, defer_build=True):
    items: list[CustomerRow]


class TopRegions(BaseModel, defer_build=True):
    items: list[RegionRow]


@router.get(
    "/customers/<customer_id>",
    summary="A customer's orders, totals, returns and payment failures (a channel key: its channel's)",
    responses={**ok(200, CustomerView, "The customer"), **errors(403, 404)},
)
@requires(Scope.ORDERS_READ)
def get_customer(customer_id: CustomerIdPath) -> CustomerView:
    return container().aggregates.customer(customer_id, caller(router).channel)


@router.get(
    "/customers",
    summary="Find customers by email",
    responses={**ok(200, CustomerPage, "A page of the customers with orders under that email"), **errors(403)},
)
@requires(Scope.ORDERS_READ)
def find_customers(
    email: EmailQuery,
    limit: Limit = 25,
    cursor: Cursor = None,
) -> CustomerPage:
    items, next_cursor = container().aggregates.customers_by_email(email, caller(router).channel, limit, cursor)
    return CustomerPage(items=items, next_cursor=next_cursor)


def _report_channel(channel: str | None) -> str | None:
    bound = caller(router).channel
    if bound is None:
        return channel
    if channel not in (None, bound):
        raise ApiError(403, "forbidden", f"this API key reads channel {bound}'s reports only")
    return bound


def _day(value: str | None, field: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"{field} is not a day", details=[{"field": field, "message": "not a day (YYYY-MM-DD)"}]
        ) from None


def _report(kind: ReportKind, currency: str, start: str | None, end: str | None, channel: str | None, limit: int):
    return container().aggregates.report(
        kind, currency, start=_day(start, "from"), end=_day(end, "to"), channel=_report_channel(channel), limit=limit
    )


@router.get(
    "/reports/top-products",
    summary="Top products by revenue over days (allocated orders, less cancels and refunded returns)",
    responses={**ok(200, TopProducts, "Products, highest revenue first"), **errors(403)},
)
@requires(Scope.REPORTS_READ)
def top_products(
    currency: Currency, start: From = None, end: To = None, channel: Channel = None, limit: Limit = 10
) -> TopProducts:
    return TopProducts(items=_report(ReportKind.PRODUCTS, currency, start, end, channel, limit))


@router.get(
    "/reports/top-customers",
    summary="Top customers by revenue over days",
    responses={**ok(200, TopCustomers, "Customers, highest revenue first"), **errors(403)},
)
@requires(Scope.REPORTS_READ)
def top_customers(
    currency: Currency, start: From = None, end: To = None, channel: Channel = None, limit: Limit = 10
) -> TopCustomers:
    return TopCustomers(items=_report(ReportKind.CUSTOMERS, currency, start, end, channel, limit))


@router.get(
    "/reports/top-regions",
    summary="Top shipping regions by revenue over days",
    responses={**ok(200, TopRegions, "Regions, highest revenue first"), **errors(403)},
)
@requires(Scope.REPORTS_READ)
def top_regions(
    currency: Currency, start: From = None, end: To = None, channel: Channel = None, limit: Limit = 10
) -> TopRegions:
    return TopRegions(items=_report(ReportKind.REGIONS, currency, start, end, channel, limit))
