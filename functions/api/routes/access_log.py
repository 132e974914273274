"""The access log of an order: every read and change, with the key that made it (issue 14)."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel

from core.access import Scope
from core.access_log import AccessEntry
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.paths import existing
from functions.api.schemas import errors, ok

router = Router()

OrderIdPath = existing("order", r"^ord_[a-z2-7]{24}$", "Order id")


class AccessLogPage(BaseModel):
    items: list[AccessEntry]


@router.get(
    "/orders/<order_id>/access-log",
    summary="Who read and changed an order, oldest first",
    description="Each read of the order (`get`, with `detail.label_urls` naming the shipments whose label links it "
    "handed out; `history`, `returns`, `refunds`, `notifications`, `access_log`) and each change (its history entry: "
    "`action` the change, `detail` `{change: true, from_status, to_status}`), with `actor` the API key id (or "
    "`workflow` and the other system actors for changes). Reads are queued as they answer and stored within seconds; "
    "they are kept 400 days.",
    responses={**ok(200, AccessLogPage, "The order's access log"), **errors(403, 404)},
)
@requires(Scope.AUDIT_READ)
def get_access_log(order_id: OrderIdPath) -> AccessLogPage:
    return AccessLogPage(items=container().access_log.entries(order_id, caller(router).channel))
