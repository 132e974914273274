"""Domain errors. Each carries a stable snake_case code; the API maps the class to a status code."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


def said(error: Mapping[str, Any]) -> str:
    """What one pydantic validation error tells a person: its message, and where a validator raised
    ValueError, its words alone, without the "Value error, " pydantic puts before them (the error's
    `ctx` may hold the exception as text only, once an adapter has copied the errors)."""
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ") if error.get("type") == "value_error" else message


def field_path(loc: Iterable[Any]) -> str:
    """A validation error's location as a field path: ("lines", 0, "quantity") -> "lines[0].quantity"."""
    text = ""
    for part in loc:
        if part == "[key]":
            # pydantic's mark of a refused dict key, after the key itself: the entry is the field.
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "domain_error"

    def __init__(self, message: str, *, code: str | None = None, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or []


def is_own_error(name: str) -> bool:
    """Whether `name` (a Catch's Error: a Lambda's errorType, or a States.* error) is one of the
    OMS's own errors (DomainError's classes, wherever defined), whose message it writes for the
    person who looks at an order or a return. Another's (botocore's, Lambda's or Step Functions'
    own, a bug's) may name the AWS account, roles and tables."""
    pending: list[type[DomainError]] = [DomainError]
    while pending:
        kind = pending.pop()
        if kind.__name__ == name:
            return True
        pending.extend(kind.__subclasses__())
    return False


def caught_message(cause: str) -> str:
    """The message of a Catch's Cause, the Lambda's error JSON (errorMessage, errorType,
    requestId, stackTrace): its errorMessage alone (a Cause that is no such JSON, as it is),
    at most 500 characters. Never the stack trace, which names the function's files."""
    try:
        return str(json.loads(cause).get("errorMessage", ""))[:500]
    except (ValueError, AttributeError, TypeError):
        return (cause or "")[:500]


class InvalidRequest(DomainError):
    """Input that is well-formed but breaks a business rule (422)."""

    code = "validation_error"


class HandOverTimeRefused(InvalidRequest):
    """A ship's stated hand-over time (`shipped_at`, from a WMS's manifest) the parcel cannot have
    left at: later than now, or before the OMS made the parcel. Nothing was done; its details name
    the field."""

    def __init__(self, message: str):
        super().__init__(message, details=[{"field": "shipped_at", "message": message}])


class UnknownSku(InvalidRequest):
    code = "unknown_sku"


class UnknownShippingMethod(InvalidRequest):
    """No shipping plugin quotes the order's shipping method for it."""

    code = "unknown_shipping_method"


class NoShippingMethod(InvalidRequest):
    """No shipping plugin quotes any method for the order."""

    code = "no_shipping_method"


class NoPrice(InvalidRequest):
    """No pricing plugin prices a product of the order in its currency."""

    code = "no_price"


class UnknownPaymentMethod(InvalidRequest):
    """No payment plugin takes the order's payment method."""

    code = "unknown_payment_method"


class PickupNotOffered(InvalidRequest):
    """The order's pickup location is unknown (a 422 `unknown_location`) or takes no pickup orders
    (a 422 validation_error), on `fulfillment.location_id`."""


class NotFound(DomainError):
    code = "not_found"


class Forbidden(DomainError):
    """The caller's key may not do this here (403): one bound to locations, acting at another."""

    code = "forbidden"


class Conflict(DomainError):
    """The request conflicts with the current state (409)."""

    code = "conflict"


class DuplicateOrder(Conflict):
    code = "duplicate_order"

    def __init__(self, order_id: str):
        super().__init__(
            f"an order with this channel and external_id already exists: {order_id}",
            details=[{"field": "external_id", "message": "already used in this channel", "order_id": order_id}],
        )
        self.order_id = order_id


class InsufficientStock(Conflict):
    code = "insufficient_stock"


class ReservationsFull(DomainError):
    """A stock item (sku x location) holds as many open reservations as it takes (README
    "Allocation never oversells": 10,000, RESERVATIONS_ROOM, within DynamoDB's 400 KB item): that location takes no more
    reservations of that sku until some ship or are released. No shortage and no throttle:
    ReserveStock sources the order from another location, else parks it on hold for a person
    under this name (its class name is the error ParkOrder records), never cancels it."""

    code = "reservations_full"

    def __init__(self, sku: str, location_id: str):
        super().__init__(
            f"the stock item of {sku} at {location_id} holds as many open reservations as it takes (10,000, "
            "within DynamoDB's 400 KB item): ship or release some there, or move stock to another location, "
            "then release the order's hold"
        )
        self.sku = sku
        self.location_id = location_id


class StockLimitReached(Conflict):
    """Units that would take on_hand past MAX_ON_HAND (what a stock take may record): the units
    already on hand refuse them (409), where the same change at a lower count would do."""

    code = "stock_limit_reached"


class StaleVersion(Conflict):
    code = "version_conflict"

    @classmethod
    def unseen(cls, what: str, current: int, seen: int, advice: str = "", *, plural: bool = False) -> StaleVersion:
        """A change decided from version `seen` (its If-Match) of `what`, which is at `current`
        now: 409 naming the current version, as every If-Match route answers it."""
        return cls(
            f"{what} {'are' if plural else 'is'} at version {current}, not {seen}{advice}",
            details=[{"field": "If-Match", "message": f"current version is {current}"}],
        )


class ReservationsChanged(StaleVersion):
    """A write conditional on what reservations held (OrderRepository.update_with_stock) found them
    changed since they were read: nothing was written; read them again and decide again."""


class InvalidTransition(Conflict):
    code = "invalid_transition"


class TrackingNumberConflict(Conflict):
    """A ship of a parcel that shipped under another tracking number: the same ship again is
    idempotent (200), this one is another request, refused (409) rather than answered as if it took.
    `details` names the shipment and the tracking number recorded."""

    code = "tracking_number_conflict"

    def __init__(self, shipment_id: str, recorded: str | None):
        super().__init__(
            f"shipment {shipment_id} shipped already "
            + (f"with tracking number {recorded}" if recorded else "without a tracking number")
            + "; a shipped shipment's tracking number is not changed",
            details=[{
                "field": "tracking_number", "message": f"shipment {shipment_id} shipped with another tracking number",
                "shipment_id": shipment_id, "tracking_number": recorded,
            }],
        )  # fmt: skip


class ParcelNotConfirmed(InvalidTransition):
    """A change that would release or withdraw the stock of a parcel whose fate is unknown: its
    ship died after asking for its capture, and the order is held for a person to confirm whether
    it left (Order.parcels_to_confirm). Its units may be in the carrier's van, so they are not put
    back on sale, nor its shipment changed, until a person releases the hold (the parcel confirmed)
    or cancels the order (409). `details` names each such shipment."""

    code = "parcel_not_confirmed"


class ParcelWithdrawn(InvalidTransition):
    """A confirmation (a ship, a delivery, a carrier's scan) of a parcel a change withdrew from its
    order (an edit, a reject, a stock take: the order went back to be sourced). Answered as any
    invalid transition (409 `invalid_transition`, `details` naming what withdrew it), and told apart
    where the parcel's leaving is news for a person: a carrier's delivery scan of it (core.tracking)."""


class CaptureWithdrawn(InvalidTransition):
    """A ship or collect whose capture a change of the order under way took back (a cancel of
    units settles a capture asked for and not recorded: it withdraws the request, then refunds what
    the gateway captured under it). Nothing was recorded for the parcel; the same confirmation sent
    once that change is done asks for its capture anew, and ships it unless the change took the
    parcel too. Answered as any invalid transition (409 `invalid_transition`); a batch of
    confirmations marks it `retry` (core.confirmations)."""


class PluginError(DomainError):
    """A plugin raised or returned something the core cannot accept. Never the client's fault: a
    dependency of the OMS failed, which the API answers 502 `plugin_error` naming the plugin and
    hook (as a gateway's refusal is 502), with nothing of the plugin's answer kept, so the request
    repeated once the plugin works finishes it."""

    code = "plugin_error"
    # Whether the plugin raised it and its words and traceback are logged already, in the ERROR
    # line `plugin raised` (core.hook_calls, in whichever function called the plugin): a line that
    # reports this error then names it at WARNING without its traceback (which chains the
    # plugin's), so that one failure is one ERROR line. False for an answer the core refused,
    # which no line has logged yet.
    logged = False


class PaymentPluginFailed(PluginError):
    """The payment plugin failed in an operation asked of the gateway (it raised, or answered what
    the core cannot take): no gateway's answer, so nothing was recorded as moved, and what was asked
    stands under its key (a capture requested, a refund pending, a re-authorization requested), to
    be asked again under that key once the plugin works: by the request repeated, or by the
    reconciler's pass that finishes it. Raised by Payments.retried, which records the attempt (kind
    `plugin_error`) first; the API answers it 502 `payment_plugin_error` (a dependency of the OMS
    failed, as a gateway's refusal is 502), never a 500 with the request's state unknown."""

    code = "payment_plugin_error"

    def __init__(
        self, operation: str, message: str, *, details: list[dict[str, Any]] | None = None, logged: bool = False
    ):
        super().__init__(
            f"the payment plugin failed in the {operation}: {message}; nothing was recorded as moved, and the "
            "request stands: repeat it once the plugin works",
            details=[{"operation": operation, **detail} for detail in details or [{}]],
        )
        self.operation = operation
        self.logged = logged  # as the PluginError it reports was


class RefundExceedsCaptured(InvalidRequest):
    code = "refund_exceeds_captured"


class PaymentRefused(DomainError):
    """The payment gateway answered and refused a capture, void or refund (502): the order does
    not record it as done. Retrying will not help (but once, `renewed_when_repeated`: a capture
    refused on an authorization the repeat renews first); someone has to look at the payment."""

    code = "payment_gateway_error"

    def __init__(self, operation: str, message: str, *, details: list[dict[str, Any]] | None = None):
        super().__init__(f"the payment gateway refused the {operation}: {message}", details=details)
        self.operation = operation
        self.gateway_message = message
        # A capture refused on an authorization the action repeated renews first (the refusal spent
        # it: Order.spent_authorizations), so repeating it may succeed once: set by the ship or
        # collect that was refused (core.fulfillment).
        self.renewed_when_repeated = False


class NoPaymentPlugin(PaymentRefused):
    """No payment plugin takes the order's payment method (its plugin was removed, or lost its
    configuration): nothing was asked of the gateway now, and nothing is known of what an earlier
    request under the same key did. A path settling such a request (a capture asked for and never
    recorded, an authorization whose answer was lost) does not take it for the gateway's refusal:
    the request stands for when the plugin is back."""

    def __init__(self, operation: str, method: str):
        super().__init__(operation, f"no payment plugin takes method {method!r}")
        self.method = method


class PluginUnavailable(PluginError):
    """A plugin failed to load, so no hook may run: any of them could have been the one it
    implements. `details` names each broken plugin and its exception's type, never the
    exception's message (it can hold the plugin's configuration): see plugin_manager.shown_reason."""

    code = "plugin_unavailable"


class InvalidCursor(InvalidRequest):
    code = "invalid_cursor"

    def __init__(self) -> None:
        super().__init__(
            "cursor is not one this list returned for the same filters",
            details=[{"field": "cursor", "message": "unknown or tampered cursor"}],
        )


# --- Workflow outcomes. Step Functions matches these by class name (Retry/Catch ErrorEquals). ---


class TransientError(DomainError):
    """Worth retrying: a gateway or carrier is briefly unavailable. Plugins raise it; a plugin's
    reaches its caller with a message naming the plugin, hook and type alone, and `details`
    [{"plugin", "hook"}]: its own words go to the log (core.hook_calls.unavailable)."""

    code = "transient_error"


class CandidatesReadPast(Exception):
    """A scheduled pass went on past candidates whose own work raised (`done.failed`, by id); what
    it did all the same is `done`. The caller reports both, then fails, so the errors alarm calls a
    person. `what`: the message's words before the ids ("3 stalled order(s) not reconciled")."""

    def __init__(self, done: Any, what: str):
        super().__init__(f"{what}: {sorted(done.failed)}")
        self.done = done
        self.failed = done.failed


def dependency_down(error: Exception) -> bool:
    """The errors core itself knows say a dependency is down rather than that what a scheduled
    pass was doing (an order, a return) is bad: a gateway, carrier or Step Functions briefly
    unavailable, the payment plugins not loaded. A pass stops at such an error, and reads past any
    other (functions/adapters/aws_errors.py says the same of AWS's)."""
    return isinstance(error, (TransientError, PluginUnavailable))


class PaymentGatewayUnavailable(TransientError):
    """The payment gateway kept failing transiently within one request (503 with Retry-After):
    nothing was recorded as moved, and repeating the request is safe (the same idempotency key)."""

    code = "payment_gateway_unavailable"


class PaymentDeclined(DomainError):
    code = "payment_declined"


class OutOfStock(DomainError):
    code = "out_of_stock"


class OutOfReach(DomainError):
    """Only the sourcing rules and the network leave an order no location that may supply it
    (core.sourcing.out_of_reach), though the locations they leave out have the units of its
    products that may not wait backordered: no business outcome, so not OutOfStock. Retried (a
    setting put back within the retries lets it go on), then parked on hold for a person under this
    name, its authorization kept, never cancelled: the release sources it under the rules then in
    force."""

    code = "out_of_reach"


class Backordered(DomainError):
    """The order waits `backordered` for stock: a business outcome that ends the execution; the
    backorder allocator (core.backorders) starts the workflow again once every unit is reserved."""

    code = "backordered"


class WorkflowOutOfTime(DomainError):
    """A main step of an Express workflow asked once its execution's retries had run their time
    (the ASL's `retry_for_seconds` from `$$.Execution.StartTime`): never retried, it hands the
    order to ParkOrder (the return to ReturnStuck) while the execution still has the time to, as
    AWS stops an Express execution at five minutes without running any Catch."""

    code = "workflow_out_of_time"


class OrderClosed(DomainError):
    """The order moved on (cancelled, or already past this step): nothing left to do here."""

    code = "order_closed"


class OrderHeld(OrderClosed):
    """The order is on hold: the workflow ends here, and a release starts it again."""

    code = "order_on_hold"


class KeptRefused(InvalidRequest):
    """What an order priced again keeps (its stored address, its customer) today's rules refuse
    (a 422 validation_error naming each field, as a request's): stored before a rule refused it (a
    lone latitude). An exchange's replacement, which keeps the shipped original's, can never be
    placed (core.returns.NOT_PLACEABLE)."""


def refused_as_kept(
    error: ValidationError,
    message: str = "what the order keeps no longer passes today's rules (an edit may send the address corrected)",
) -> KeptRefused:
    """KeptRefused for `error`, raised holding what an order keeps to today's rules."""
    return KeptRefused(
        message,
        details=[{"field": field_path(e.get("loc", ())), "message": said(e)} for e in error.errors()],
    )
