"""A payment gateway's references as the OMS shows them: an escaped copy.

A reference (an authorization's, a capture's, a void's, a refund's) is the gateway's own id for an
operation: captures, voids and refunds name it back to the gateway, so it is stored exactly as the
gateway gave it, whatever it holds. What the API answers, the events and webhooks carry, and the
order's history shows is a copy with every control character, bidi control, invisible character
and line or paragraph separator written as a visible escape (`\\u202e`, `\\x1b`, `\\n`), and a
backslash doubled, as core.log_text writes a client's text into a log line: a reference holding a
right-to-left override cannot reorder what an operator reads, and two references that differ only
in such a character still show as different (replacing them with U+FFFD, as a plugin's free text
is, would show them alike). A reference with none of them is shown as it is."""

from __future__ import annotations

from typing import Any

from core.log_text import UNSAFE_IN_REFERENCE as _UNSAFE
from core.log_text import shown_reference
from core.models import HistoryEntry, Order, PaymentRefund, RefundPart

__all__ = [
    "REFERENCE_KEYS",
    "SYSTEM_KEYS",
    "history_shown",
    "references_shown_in",
    "shown_reference",
    "with_references_shown",
]

# The keys of a history entry's detail, at any depth, whose values are a gateway's references.
REFERENCE_KEYS = frozenset({"authorization", "reference", "capture_reference", "refund_reference", "replaces"})


def _shown(reference: str | None) -> str | None:
    return None if reference is None else shown_reference(reference)


def _unsafe(reference: Any) -> bool:
    return isinstance(reference, str) and _UNSAFE.search(reference) is not None


def _part_shown(part: RefundPart) -> RefundPart:
    if not (_unsafe(part.reference) or _unsafe(part.authorization)):
        return part
    return part.model_copy(update={"reference": _shown(part.reference), "authorization": _shown(part.authorization)})


def _refund_shown(refund: PaymentRefund) -> PaymentRefund:
    parts = [_part_shown(part) for part in refund.parts] if refund.parts else refund.parts
    if not (_unsafe(refund.reference) or _unsafe(refund.authorization)) and parts == refund.parts:
        return refund
    return refund.model_copy(
        update={"reference": _shown(refund.reference), "authorization": _shown(refund.authorization), "parts": parts}
    )


def with_references_shown(order: Order) -> Order:
    """`order` as it is shown: `payment.authorization`, and each refund's (and refund part's)
    `reference` and `authorization`, escaped (shown_reference). What is stored, and what is named
    back to the gateway, is untouched; an order whose references need nothing is `order` itself."""
    payment = order.payment
    refunds = [_refund_shown(refund) for refund in payment.refunds]
    if not _unsafe(payment.authorization) and all(a is b for a, b in zip(refunds, payment.refunds, strict=True)):
        return order
    shown = payment.model_copy(update={"authorization": _shown(payment.authorization), "refunds": refunds})
    return order.model_copy(update={"payment": shown})


def references_shown_in(value: Any, key: Any = None) -> Any:
    """`value` (a history entry's detail, a stored document's part) with the strings under
    REFERENCE_KEYS, at any depth, escaped (shown_reference); nothing else touched."""
    if isinstance(value, dict):
        return {k: references_shown_in(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [references_shown_in(v, key) for v in value]
    return shown_reference(value) if key in REFERENCE_KEYS and isinstance(value, str) else value


def _has_unsafe(value: Any, key: Any = None) -> bool:
    if isinstance(value, dict):
        return any(_has_unsafe(v, k) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_unsafe(v, key) for v in value)
    return key in REFERENCE_KEYS and _unsafe(value)


# The keys of a history entry's detail only the system reads, never shown: `request_key`, the
# Idempotency-Key a client sent with the change and its key id (`api:<key id>:<key>`; an order's
# created entry keeps a hash of them and of the body it was placed with), by which a retry under it finds
# the change it made (core/holds.py, core/unit_cancellation.py, CaptureService.placed_under). Any key of
# the order's channel with orders:read reads its history; a client's idempotency keys are its own
# (they may carry its own references, and are no part of what the change did). `request_hash`, the
# hash of what an order's body asked (services.request_hash), by which an import tells the order sent
# again from another under its external id: the system's own, and a hash of its payment token too.
SYSTEM_KEYS = frozenset({"request_key", "request_hash"})


def _detail_shown(detail: dict[str, Any] | None) -> dict[str, Any] | None:
    if detail is None:
        return None
    kept = {key: value for key, value in detail.items() if key not in SYSTEM_KEYS}
    if not kept and len(kept) < len(detail):
        return None  # a detail of the system's keys alone: shown as an entry without them would be
    return references_shown_in(kept) if _has_unsafe(kept) else kept


def history_shown(entries: list[HistoryEntry]) -> list[HistoryEntry]:
    """The order's history as GET /orders/{id}/history shows it: the gateway's references in each
    entry's detail (REFERENCE_KEYS, at any depth) escaped (shown_reference), and what only the
    system reads (SYSTEM_KEYS) left out. The entries the system reads (a void finds the
    authorization it names there, a retry its request_key) are untouched; one that needs nothing
    is shown as it is."""
    return [
        entry.model_copy(update={"detail": _detail_shown(entry.detail)})
        if entry.detail is not None and (_has_unsafe(entry.detail) or not SYSTEM_KEYS.isdisjoint(entry.detail))
        else entry
        for entry in entries
    ]
