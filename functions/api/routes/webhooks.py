"""Webhooks: subscribe, list, read, delete, and each subscription's deliveries (issue 14)."""

from urllib.parse import urlsplit

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router

from core.access import Scope
from core.ids import webhook_id_for
from core.models import Shown
from core.webhooks import MAX_WEBHOOKS, Delivery, IssuedWebhook, NewWebhook, Webhook
from functions.api.access import caller, requires
from functions.api.app import logger
from functions.api.dependencies import container
from functions.api.errors import ApiError
from functions.api.paths import existing
from functions.api.queries import Cursor, Limit
from functions.api.routes.orders import IdempotencyKey
from functions.api.schemas import errors, ok

router = Router()

WebhookIdPath = existing("webhook", r"^whk_[a-z2-7]{24}$", "Webhook id")
DeliveryIdPath = existing("delivery", r"^dlv_[0-9a-f]{14}[a-z2-7]{16}$", "Delivery id")


class WebhookPage(Shown):
    items: list[Webhook]
    next_cursor: str | None = None


class DeliveryPage(Shown):
    items: list[Delivery]
    next_cursor: str | None = None


@router.post(
    "/webhooks",
    summary="Subscribe a URL to events (the signing secret is shown only in this response)",
    description=(
        f"A channel holds at most {MAX_WEBHOOKS} live subscriptions, and the unbound ones together as many (one "
        "subscription takes any set of types): past that it is 409 `too_many_webhooks`; delete one first. With an "
        "`Idempotency-Key`, a retry (same key and body) answers the first subscription, its secret included, "
        "instead of making a second one that would get every event twice; the key's record keeps only the "
        "subscription's id, the secret being read from the subscription itself, so once it is deleted the key "
        "answers 404 `not_found`."
    ),
    responses={**ok(201, IssuedWebhook, "The subscription, with its secret"), **errors(400, 403, 404, 409, 413)},
)
@requires(Scope.WEBHOOKS_WRITE)
def subscribe(request: NewWebhook, idempotency_key: IdempotencyKey = None) -> Response[IssuedWebhook]:
    who = caller(router)
    if who.channel is not None:
        if request.channel not in (None, who.channel):
            raise ApiError(403, "forbidden", f"this API key subscribes to channel {who.channel}'s events only")
        request = request.model_copy(update={"channel": who.channel})
    made: list[IssuedWebhook] = []

    # With an Idempotency-Key the subscription's id comes from it: a retry whose first attempt was
    # written but whose answer (and idempotency record) was lost finds that subscription.
    webhook_id = webhook_id_for(who.key_id, idempotency_key) if idempotency_key is not None else None

    def create() -> dict:
        webhook = container().webhooks.subscribe(request, created_by=who.key_id, webhook_id=webhook_id)
        made.append(webhook)
        # Who sent which events where: the host only (a URL's path or query may hold the receiver's token).
        logger.info(
            "webhook subscribed",
            extra={
                "webhook_id": webhook.id,
                "key_id": who.key_id,
                "host": _host(webhook.url),
                "events": webhook.events,
                "webhook_channel": webhook.channel,
            },
        )
        # What the Idempotency-Key's record keeps: the id, never the secret (a credential kept in
        # the webhooks table alone, not copied to a second table for 24 h).
        return {"id": webhook.id}

    if idempotency_key is None:
        create()
    else:
        from functions.api.idempotency import once

        first = once("POST /webhooks", who.key_id, idempotency_key, request.model_dump(mode="json"), create,
                     router.lambda_context)  # fmt: skip
        if not made:  # a retry: the subscription the key made, read with its secret
            made.append(container().webhooks.issued(first["id"], who.channel))
    return Response(201, content_types.APPLICATION_JSON, made[0])


@router.get(
    "/webhooks",
    summary="List webhook subscriptions (never their secrets)",
    responses={**ok(200, WebhookPage, "A page of subscriptions"), **errors(403)},
)
@requires(Scope.WEBHOOKS_WRITE)
def list_webhooks(limit: Limit = 25, cursor: Cursor = None) -> WebhookPage:
    items, next_cursor = container().webhooks.list(caller(router).channel, limit, cursor)
    return WebhookPage(items=items, next_cursor=next_cursor)


@router.get(
    "/webhooks/<webhook_id>",
    summary="Get a webhook subscription",
    responses={**ok(200, Webhook, "The subscription"), **errors(403, 404)},
)
@requires(Scope.WEBHOOKS_WRITE)
def get_webhook(webhook_id: WebhookIdPath) -> Webhook:
    return container().webhooks.get(webhook_id, caller(router).channel)


@router.delete(
    "/webhooks/<webhook_id>",
    summary="Delete a webhook subscription (nothing more is sent to it)",
    responses={204: {"description": "Deleted"}, **errors(403, 404)},
)
@requires(Scope.WEBHOOKS_WRITE)
# No return annotation: powertools would try to build a response schema from a bare Response.
def delete_webhook(webhook_id: WebhookIdPath):
    who = caller(router)
    webhook = container().webhooks.delete(webhook_id, who.channel)
    # The subscription, and with it who made it, is gone: this line is what an auditor has left.
    logger.info(
        "webhook deleted",
        extra={
            "webhook_id": webhook.id,
            "key_id": who.key_id,
            "created_by": webhook.created_by,
            "host": _host(webhook.url),
            "webhook_channel": webhook.channel,
        },
    )
    return Response(204, content_types.APPLICATION_JSON, "")


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


@router.get(
    "/webhooks/<webhook_id>/deliveries",
    summary="A subscription's deliveries, newest first",
    responses={**ok(200, DeliveryPage, "A page of deliveries"), **errors(403, 404)},
)
@requires(Scope.WEBHOOKS_WRITE)
def list_deliveries(webhook_id: WebhookIdPath, limit: Limit = 25, cursor: Cursor = None) -> DeliveryPage:
    items, next_cursor = container().webhooks.deliveries(webhook_id, caller(router).channel, limit, cursor)
    return DeliveryPage(items=items, next_cursor=next_cursor)


@router.post(
    "/webhooks/<webhook_id>/deliveries/<delivery_id>/retry",
    summary="Send a delivery again now",
    responses={**ok(202, Delivery, "The delivery, queued for an attempt now"), **errors(403, 404, 409)},
)
@requires(Scope.WEBHOOKS_WRITE)
def retry_delivery(webhook_id: WebhookIdPath, delivery_id: DeliveryIdPath) -> Response[Delivery]:
    delivery = container().webhooks.retry(webhook_id, delivery_id, caller(router).channel)
    return Response(202, content_types.APPLICATION_JSON, delivery)
