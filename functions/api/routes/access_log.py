"""The access log of an order: every read and change, with the key that made it (issue 14)."""

from aws_lambda_powertools.event_handler.api_gateway import Router

from core.access import Scope
from core.access_log import AccessEntry
from core.models import Shown
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.paths import existing
from functions.api.queries import Cursor, Limit
from functions.api.schemas import errors, ok

router = Router()

OrderIdPath = existing("order", r"^ord_[a-z2-7]{24}$", "Order id")


class AccessLogPage(Shown):
    items: list[AccessEntry]
    next_cursor: str | None = None


@router.get(
    "/orders/<order_id>/access-log",
    summary="Who read and changed an order, oldest first",
    description="Each read of the order (`get`, with `detail.label_urls` naming the shipments whose label links it "
    "handed out; `history`, `returns` (also `GET /returns/{id}`, with `detail.return_id`; with `detail.label_urls` "
    "naming the returns whose label links it handed out, as for a page of `GET /returns`), `refunds`, "
    "`notifications`, "
    "`access_log`; `list` for each order a page of `GET /orders` answered, with `detail.label_urls`, and `returns` "
    "for the order of the returns a page of `GET /returns` answered, `detail.return_ids` naming them; `simulate` for "
    "each stored order a `POST /sourcing/simulate` planned; `confirm` for each order a `POST /shipments/confirmations` "
    "batch answered without writing on it, with `detail.shipment_ids`) "
    "and each change (its history entry: "
    "`action` the change, `detail` `{change: true, from_status, to_status}`); a change that wrote nothing but "
    "answered the order (a cancel of a cancelled order, a replayed Idempotency-Key) is a read named after it "
    "(`cancel`, `edit`, `hold`, `release`, `ship`, `deliver`, `ready`, `reject`; `return`, `refund` for a replayed "
    "return or refund; `receive` for one of its returns received again with the same receipt, with "
    "`detail.return_id`; `place` for an order placed again under its Idempotency-Key). A change that wrote its "
    "entry and answered label links (an order with a labelled shipment, a return with its label; "
    "`approve_return` for a return approved) is also a read named after it, "
    "`detail.label_urls` naming the shipments or returns whose links it handed out (with `detail.return_id` for "
    "one of its returns changed by the return's id). "
    "Each with `actor` the API key id (or "
    "`workflow` and the other system actors for changes). Reads are queued as they answer and stored within seconds; "
    "they are kept 400 days. Paginated as every list is: a much-read order's log is read a page at a time; a walk "
    "shows the reads made before its first page (each page is a read too: those made since are the next walk's).",
    responses={**ok(200, AccessLogPage, "A page of the order's access log"), **errors(403, 404)},
)
@requires(Scope.AUDIT_READ)
def get_access_log(
    order_id: OrderIdPath,
    limit: Limit = 25,
    cursor: Cursor = None,
) -> AccessLogPage:
    items, next_cursor = container().access_log.page(order_id, caller(router).channel, limit, cursor)
    return AccessLogPage(items=items, next_cursor=next_cursor)
