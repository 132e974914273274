"""Customer notifications: what the OMS told (or would have told) an order's customer (issue 14)."""

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel

from core.access import Scope
from core.notifications import Notification
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.paths import existing
from functions.api.queries import Cursor, Limit
from functions.api.schemas import errors, ok

router = Router()

OrderIdPath = existing("order", r"^ord_[a-z2-7]{24}$", "Order id")


class NotificationPage(BaseModel, defer_build=True):
    items: list[Notification]
    next_cursor: str | None


@router.get(
    "/orders/<order_id>/notifications",
    summary="An order's customer notifications, oldest first",
    description="Each notification the order's changes meant (shipped, ready_for_pickup, delayed, refunded, "
    "cancelled, backordered), as recorded by the built-in notifier: recipient, subject and plain-text body, the "
    "facts a template may use (`details`), and `sent_via`, the ways the notifier plugins sent it (empty when none "
    "sent it). The `id` is the event's the notification tells of.",
    responses={**ok(200, NotificationPage, "A page of notifications"), **errors(403, 404)},
)
@requires(Scope.ORDERS_READ)
def list_notifications(order_id: OrderIdPath, limit: Limit = 25, cursor: Cursor = None) -> NotificationPage:
    items, next_cursor = container().order_notifications.list(order_id, caller(router).channel, limit, cursor)
    return NotificationPage(items=items, next_cursor=next_cursor)
