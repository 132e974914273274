"""The payment gateway's idempotency keys, built here only: a retry must send the same key.

Gateways already hold keys in these shapes, so they never change: an authorization is keyed by
the order version it authorizes (an edit gets a new one), a renewal of one grown old by the
authorization it replaces (and the renewals of it declined before), a capture by its shipment, a
void by the authorization it releases, a refund by its own id (one split over the authorizations
whose captures it gives back, each part by that id and its authorization). A shipment whose
capture was given back (its order changed while it shipped) and that is made again under the same
id adds the number of captures given back before, so its next capture is a new one, not the
refunded one replayed. A capture asked under an authorization that replaced the order's first (a
renewal, an edit: Order.later_authorizations) also names that authorization, so one the gateway refused
under the first (let lapse early by the issuer) is not answered with that refusal again."""

from __future__ import annotations


def authorize(order_id: str, version: int) -> str:
    return f"{order_id}:authorize:v{version}"


def capture(order_id: str, shipment_id: str, reversed_before: int = 0, under: str | None = None) -> str:
    """`under`: the authorization it is asked under, when that one replaced another (None: the
    order's first, keyed as ever)."""
    if under:
        return f"{order_id}:{shipment_id}:capture:{reversed_before}:{under}"
    if reversed_before:
        return f"{order_id}:{shipment_id}:capture:{reversed_before}"
    return f"{order_id}:{shipment_id}:capture"


def capture_reversal(order_id: str, shipment_id: str, reversed_before: int = 0) -> str:
    """The refund of a capture the order could not record (keyed like the capture it gives back)."""
    return refund(order_id, f"{shipment_id}:{reversed_before}" if reversed_before else shipment_id)


def void(authorization: str) -> str:
    return f"{authorization}:void"


def refund(order_id: str, refund_id: str) -> str:
    return f"{order_id}:refund:{refund_id}"


def refund_part(order_id: str, refund_id: str, authorization: str) -> str:
    """One gateway refund of a refund split over the order's authorizations: the one against `authorization`."""
    return f"{refund(order_id, refund_id)}:{authorization}"


def settlement_capture(order_id: str, captured_before: str, under: str | None = None) -> str:
    """A capture with no shipment (the rest of a total that cancelled units left higher), keyed by
    what was captured before it: a repeat of the same settlement asks under the same key. `under`:
    as for `capture`."""
    if under:
        return f"{order_id}:settlement:{captured_before}:capture:{under}"
    return f"{order_id}:settlement:{captured_before}:capture"


def renewal(order_id: str, lapsed: str, declined_before: int = 0) -> str:
    """An authorization asked again because `lapsed`, the order's authorization, grew old enough for
    the gateway to let it lapse (keyed by it: each renewal replaces another), and how many renewals
    of it the gateway declined before (`declined_before`): a gateway answers a key it has seen
    with its first answer, so a renewal asked after a decline (the customer's bank lifted a block)
    is a new one, while one whose answer was lost is asked again under its key."""
    if declined_before:
        return f"{order_id}:authorize:renew:{lapsed}:{declined_before}"
    return f"{order_id}:authorize:renew:{lapsed}"
