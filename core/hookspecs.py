"""Plugin hooks of the OMS. Call them with keyword arguments only."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from core import hookspec
from core.errors import InvalidRequest
from core.models import Address, Customer, Location, Order, Product, ReviewRequest, ShipmentLine, StockLevel
from core.money import Money
from core.pricing_types import Discount, DraftLine, PricingDraft, ShippingQuote, TaxRate
from core.return_decisions import ReturnPolicyDecision
from core.sourcing_rules import SourcingRules
from core.workflow_types import CarrierShipment, PaymentResult, RefusedTrackingEvent, SourcingPlan, TrackingUpdate

if TYPE_CHECKING:
    # A parameter's type, never an answer's (call_hook resolves only a spec's answer type): the
    # notifier's module, with the domain events it reads, stays out of a new API container.
    from core.notifications import Notification

    # Likewise: the returns' models stay out of a new API container (the answer's type is apart).
    from core.return_models import ReturnLineInput

# --- Pricing --------------------------------------------------------------------------------


@hookspec(firstresult=True)
def oms_unit_price(product: Product, quantity: int, currency: str, channel: str, customer: Customer) -> Money | None:
    """Price one unit of `product` for this order line.

    :param product: the catalog product, with its list `price`.
    :param quantity: units on the line (for volume pricing).
    :param currency: the order's ISO 4217 currency.
    :param channel: the sales channel placing the order.
    :param customer: the ordering customer (id, email, name).
    :return: the unit price in `currency`, or None to let another plugin answer.

    Stops at first non-None result. When no plugin answers, the line is rejected (422 `no_price`).
    """


@hookspec
def oms_discounts(draft: PricingDraft) -> list[Discount] | None:
    """Grant discounts on an order whose unit prices are known.

    :param draft: the order being priced: lines with unit prices and subtotals, customer,
        address, fulfilment, shipping method and the `promo_codes` the client sent.
    :return: the discounts this plugin grants (possibly empty), or None.

    Every plugin is called and all discounts apply. A promo code that no returned discount names
    in its `code` is rejected (422 `unknown_promo_code`), unless the order being priced was placed
    with it (an edit, a cancel of units): that keeps what the code granted it at capture. So does
    what a plugin's own rule (a discount no promo code names) granted it, unless the plugins apply
    the rule to the order as it is otherwise than to the order as it was sold (a volume rule the
    units left no longer qualify for): then the order gets what the rule gives it today. To tell,
    the hook is called a second time for such an order whose units changed, with a draft of the
    order as it was sold. The core
    caps a line's discount at the line's subtotal (an amount off the order comes off the lines
    with room left, in full while any has some) and rejects negative amounts or another currency,
    a `code` of more than 100 characters, and more than 1000 discounts an order (the order keeps
    each one's grant).
    """


@hookspec(firstresult=True)
def oms_tax_rate(line: DraftLine, address: Address, draft: PricingDraft) -> TaxRate | None:
    """The tax rate for one line shipped to (or picked up at) `address`.

    :param line: the line, with its product (`tax_code`), quantity and subtotal.
    :param address: the address the goods go to: the shipping address, or the pickup location's.
    :param draft: the whole order, for rules that depend on it.
    :return: a TaxRate (0 <= rate <= 1, at most 40 decimal places) or None to let another plugin answer.

    Stops at first non-None result. When no plugin answers, the line is untaxed.
    """


@hookspec
def oms_shipping_quotes(draft: PricingDraft, address: Address) -> list[ShippingQuote] | None:
    """Offer ways to ship the order to `address`.

    :param draft: the order being priced (lines carry products with `weight_grams`).
    :param address: the shipping address.
    :return: the quotes this plugin offers (possibly empty), or None.

    Every plugin is called. The client picks one by `shipping_method`; without one the core takes
    `standard` if offered, else the cheapest quote. Pickup orders are not quoted. A quote's
    `method` has the form clients send (1 to 32 lower-case letters, digits or _): any other is
    the plugin's error.

    The origin is not known here, by design: the order is priced when it is placed, and sourcing
    chooses the location(s) it ships from only after payment is authorized (one order may ship
    from several). A quote that depends on the origin must assume one (e.g. the warehouse nearest
    `address`); the carrier learns the real one when it books (`oms_carrier_create_shipment`'s
    `origin`), and any difference in cost is the shop's, not the customer's.
    """


# --- Payment --------------------------------------------------------------------------------
# A payment plugin answers only for its own `method` and returns None for any other. A gateway
# that is temporarily unavailable raises core.errors.TransientError (the workflow retries);
# any other exception fails the step. Every answer is a core.workflow_types.PaymentResult with a
# `reference`, a decline's too (the gateway's id for the refused request), and the gateway's words
# in `message` (a str: "" when there are none).


@hookspec(firstresult=True)
def oms_payment_authorize(
    method: str, token: str, amount: Money, order_id: str, idempotency_key: str, attempt: int
) -> PaymentResult | None:
    """Authorize `amount` on the payment instrument behind `token`.

    :param method: the order's `payment.method`; answer only for your own.
    :param token: the payment token the client sent (never a card number).
    :param amount: the order's grand total (less an exchange's credit); when an authorization is
        renewed, what the old one had left to capture. Never zero: an order that owes nothing is
        authorized without asking the gateway (many refuse an amount under their minimum).
    :param order_id: the order being paid.
    :param idempotency_key: the same for every retry of this authorization; pass it to the
        gateway so a retry never authorizes twice. An edit writes the authorization it asks for
        on the order first, so one that died after the gateway answered is asked again under the
        same key (by the edit repeated, or later by a cancel, another edit or the last ship,
        which then void it). So does a ship, collect or settlement capture that renews an
        authorization before capturing on it: one older than OMS_AUTHORIZATION_VALID_DAYS, or one
        you refused a capture on, or whose capture was refunded because the order changed (its
        key names the old authorization, and how many renewals of it you declined before: one
        asked after a decline is a new authorization).
        Answer a key you have seen with the authorization made under it (or its decline), never
        a second one, however late. A key another call of it is in flight with (two requests at
        once: Stripe's 409 `idempotency_key_in_use`) has no answer yet: raise TransientError
        (asked again under the key, it gets the other call's answer), never a decline, which
        would be taken for the key's answer. An attempt that failed so under a key you declined
        is taken for that decline.
    :param attempt: 0 for the first try, then 1, 2, ... for the workflow's retries.
    :return: PaymentResult (approved, with the authorization's reference, or declined), or None.
        Approved means the whole `amount`: void a partial authorization and answer declined. An
        answer's `amount`, when given, must be the one asked (for capture and refund too): an
        approval of another amount or currency is the plugin's error and records nothing.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def oms_payment_capture(
    method: str, authorization: str, amount: Money, order_id: str, idempotency_key: str
) -> PaymentResult | None:
    """Capture `amount` (a shipment's share) of an authorization.

    :param method: the order's payment method; answer only for your own.
    :param authorization: the reference the authorization returned.
    :param amount: the amount to capture now (partial captures add up to at most the authorization).
    :param order_id: the order being paid.
    :param idempotency_key: the same for every retry of this capture. The OMS writes the capture it
        asks for on the order first; when the request died before recording the answer, the
        capture is asked again under the same key (by the next ship, or days later by a cancel,
        which then refunds it). Answer a key you have seen with the capture made under it, never
        a second one, however long ago it was; decline only when none was made, and a key you
        declined again with that decline (the OMS takes a decline for the key's answer: a
        request it gave up on a stale refusal is asked again under the same key). A key another
        call of it is in flight with (two requests at once: Stripe's 409
        `idempotency_key_in_use`) has no answer yet: raise TransientError, never a decline. An
        attempt that failed so under a key you declined is taken for that decline.
    :return: PaymentResult, or None.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def oms_payment_void(method: str, authorization: str, order_id: str, idempotency_key: str) -> PaymentResult | None:
    """Release an authorization that will not be captured (an order cancelled before shipping).

    :param method: the order's payment method; answer only for your own.
    :param authorization: the reference the authorization returned.
    :param order_id: the order.
    :param idempotency_key: the same for every retry of this void.
    :return: PaymentResult, or None. `approved` once the authorization holds nothing on the card,
        an authorization released already included (voided under another key, or by a person in
        the gateway's console, as the OMS's runbooks ask; or lapsed): answer the gateway's "already
        cancelled" as approved, with its words in `message`. `declined` only when the hold stays:
        the OMS records the refusal and calls a person (VoidsNotMadeAlarm), and cannot tell the two
        apart from the gateway's words.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def oms_payment_find_authorization(method: str, order_id: str, idempotency_key: str) -> PaymentResult | None:
    """Tell whether the gateway authorized anything under `idempotency_key`, without authorizing.

    :param method: the order's payment method; answer only for your own.
    :param order_id: the order.
    :param idempotency_key: the key of an oms_payment_authorize call the order never recorded an
        answer to: the authorize step can die after the gateway approved and before the order
        records it, and the OMS writes nothing before that call (it costs a write per order).
    :return: PaymentResult approved, with the reference of the authorization made under the key
        (the OMS then voids it through oms_payment_void); declined when none was made (never
        asked, or declined); or None. Never make one here: raise TransientError when the gateway
        cannot say now (the OMS asks again later).

    Stops at first non-None result. Optional: asked when an order that never recorded an
    authorization is cancelled (or edited, which keys the next one anew), for the key the order's
    last attempt used. Without an answer the OMS cannot release what such an attempt may have
    authorized and logs a warning naming the order and the key.
    """


@hookspec(firstresult=True)
def oms_payment_refund(
    method: str, authorization: str, amount: Money, order_id: str, idempotency_key: str
) -> PaymentResult | None:
    """Refund `amount` of what was captured.

    :param method: the order's payment method; answer only for your own.
    :param authorization: the reference the authorization returned: the one the refunded captures
        were made under. An order authorized again (an authorization renewed before a capture)
        refunds captures of each authorization against that one, with one call per authorization
        when a refund gives back captures of two, each under its own key.
    :param amount: the amount to give back; never more than was captured under `authorization`
        and not refunded yet.
    :param order_id: the order.
    :param idempotency_key: the same for every retry of this refund.
    :return: PaymentResult, or None.

    Stops at first non-None result.
    """


# --- Sourcing ---------------------------------------------------------------------------------


@hookspec(firstresult=True)
def oms_source_order(
    order: Order,
    locations: list[Location],
    stock: dict[str, list[StockLevel]],
    destination: Address,
    rules: SourcingRules,
) -> SourcingPlan | None:
    """Decide which location(s) supply each line of an order.

    :param order: the order (lines with `line_id`, `sku`, `quantity`; `fulfillment`).
    :param locations: the locations eligible for it: shipping locations, or the pickup store,
        less those the sourcing rules exclude.
    :param stock: current stock records by sku at those locations; `available` is what orders
        may take (the location's safety stock is already held back from it).
    :param destination: where the goods go (the shipping address or the pickup store's).
    :param rules: the sourcing rules in force (`version`, `prefer`: "nearest" or
        "fewest_shipments", `max_shipments`: at most that many locations, or None). Exclusions
        and safety stock are applied already. A plugin written before this argument existed
        simply does not name it (pluggy passes only the arguments an implementation names).
        For a backorder fill, `order` holds only the units still needed, `locations` only those
        the order does not ship from yet, and `max_shipments` is the room left beside them; so
        too for the rejected parcel of a partly shipped order sourced again (its units alone, at
        locations with no parcel of the order, beside the parcels the order keeps).
    :return: a SourcingPlan covering every unit of every line, or None when this plugin cannot
        source the order (the order then ends cancelled, reason out_of_stock).

    Stops at first non-None result. The core checks the plan (every unit of every line exactly
    once, eligible locations only, at most `max_shipments` of them) and reserves it atomically; a
    lost race for the last units also ends out_of_stock.
    """


# --- Review -----------------------------------------------------------------------------------


@hookspec
def oms_review_order(order: Order) -> list[ReviewRequest] | None:
    """Ask for a person to review a new (or edited) order before its payment is authorized or it is sourced.

    :param order: the order as it will be stored, priced (`totals`, `lines`), `pending`, not yet
        authorized; on an edit, the edited order and the order as it was; a copy.
    :return: the reviews this rule asks for (possibly empty: the order goes on), or None. In a
        `note`, a control character other than a tab or a line break, or a bidi override, is
        replaced by U+FFFD (a person's hold note with one is refused).

    Every plugin is called, at capture (the API and bulk imports alike), and again with the
    edited order (`pending` or `authorized`; a held one as its release would resume it) when an
    order is edited. When any asks, the order is stored `on_hold` with the first request's
    `reason` and `note` (the first 10 requests are in the history entry,
    core.models.review_detail) and waits for `POST /orders/{id}/release`; on an edit, only what
    the rules did not ask for the order as it was holds it (an order on hold already takes the
    request's reason and note), and an edit that lowers the total asks nothing for a reason the
    order as it was was asked for already (its note may name another amount). The built-in rule `review_threshold`
    holds orders whose grand total reaches `OMS_REVIEW_THRESHOLD` (reason `fraud_review`).
    """


# --- Carrier ----------------------------------------------------------------------------------


@hookspec(firstresult=True)
def oms_carrier_create_shipment(
    order: Order, shipment_id: str, booking_key: str, origin: Location, lines: list[ShipmentLine], weight_grams: int
) -> CarrierShipment | None:
    """Book one shipment with a carrier and return its tracking number and label.

    Only parcels that travel are asked: a pickup order's parcel (`fulfillment.type` "pickup") waits
    at its store and never goes to a carrier, so the OMS makes its pick slip itself (carrier `OMS`,
    service "Store pickup", a `PU…` pickup code, a 4x6 PDF: core.pick_slips) and no plugin is asked
    to book it, nor later to cancel it (oms_carrier_cancel_shipment). So `OMS` is no carrier's
    name: an answer naming it fails the step as any invalid answer does.

    :param order: the order (its `shipping_address` is the destination, `shipping_method` the
        service the customer chose); never a pickup order.
    :param shipment_id: the OMS's id for this shipment (from the order, the location and the
        generation: core.ids.shipment_id_for): a parcel made after an edit or a location's reject
        has a new one, but a pending parcel booked again after a cancel of some of its units keeps
        its id, with other contents.
    :param booking_key: the key to ask the carrier idempotently under: the same on every retry,
        and a new one for a parcel booked again after such a change (the first booking's is the
        shipment id). Key idempotency on this, never on `shipment_id`, or the carrier answers the
        earlier booking's label, contents and weight.
    :param origin: the location the parcel leaves from.
    :param lines: the order lines (and quantities) in this parcel.
    :param weight_grams: the parcel's weight from the products' `weight_grams`.
    :return: a CarrierShipment (carrier, service, tracking number, and the label: its document,
        which the OMS stores, or `label_url`, the https link where the carrier hosts it, which the
        OMS keeps and shows as it is, storing no bytes), or None.

    Stops at first non-None result. No answer (or a plugin that raises or answers anything but a
    valid CarrierShipment) fails the step, and the order is parked on hold for a person, its stock
    and authorization kept. Book with
    `core.tracking.shipment_reference(order.id, shipment_id)` as the carrier's reference, so its
    tracking webhooks name the shipment (see oms_carrier_tracking_update).
    """


@hookspec(firstresult=True)
def oms_carrier_cancel_shipment(
    carrier: str | None, tracking_number: str | None, booking_key: str, order_id: str
) -> bool | None:
    """Cancel a booking no parcel will use, so the carrier does not charge for its label.

    :param carrier: the `carrier` your oms_carrier_create_shipment (or _return_label) answered;
        return None for any other. None when the OMS never heard the answer: a CreateShipments
        step killed (timed out) mid-call, then the order parked and given up, may or may not have
        had a booking made under `booking_key`; so may a return label's whose answer was lost.
        Cancel yours under that key if you made one
        (True), answer False if you will not, and None if you made none, so the next plugin is asked.
    :param tracking_number: the booking's tracking number (None with `carrier` None).
    :param booking_key: the key the booking was asked under (oms_carrier_create_shipment's
        `booking_key`, or oms_carrier_return_label's for a return label): a parcel booked again has
        the same shipment id, often the same reference, and a new key, so cancel the booking made
        under this key, never the parcel's newer one.
    :param order_id: the order the booking was for.
    :return: True once the booking is cancelled (or was already, or never cost anything), False
        when the carrier will not cancel it (scanned already, its void window past), or None when
        `carrier` is not yours.

    Stops at first non-None result. The OMS asks when a booking is given up (never for a pickup
    parcel's pick slip, which no carrier booked; a pickup parcel a carrier booked before the OMS made
    its slips is asked about as any other): the order cancelled,
    a pending parcel gone (all its units cancelled, or the order sent back to be sourced by an edit
    or a reject) or booked again after a cancel of some of its units; and for a return label
    (oms_carrier_return_label's `booking_key`) no return uses (a request made again with other
    lines after its answer was lost, or that lost its return's number; an approval that lost to a
    rejection; one maybe made for a return rejected or expired since) or an expired return's own.
    The give-up is written first
    and stands whatever the carrier answers: a plugin that raises is asked again by the reconciler's
    next pass (every five minutes) until it answers, so make the call idempotent. True or False
    settles it (history `carrier_booking_cancelled` or `carrier_booking_not_cancelled`); so does no
    plugin answering (`carrier_booking_not_cancelled`: nobody cancels that carrier's bookings). The
    built-in carrier, asked last, answers True for a booking maybe made (its own cost nothing).
    """


@hookspec(firstresult=True)
def oms_carrier_tracking_update(
    carrier: str, payload: Any, headers: dict[str, str], body: str
) -> list[TrackingUpdate | RefusedTrackingEvent] | None:
    """Read a carrier's tracking webhook, posted to `POST /carriers/{carrier}/tracking`.

    :param carrier: the `{carrier}` of the path: the name your plugin answers for (the built-in
        flat-rate carrier's is `oms-flat-rate`); return None for any other.
    :param payload: the request body, parsed from JSON (an object or an array).
    :param headers: the request headers, names in lower case, without `authorization` and
        `cookie` (the caller's API key and cookies are not the plugin's business).
    :param body: the raw body exactly as received, to check a signature the carrier computed over it.
    :return: the webhook's updates (possibly empty), each naming its shipment by the order and
        shipment ids read back from the booking's reference (core.tracking.parse_shipment_reference,
        None for a string that is no such reference),
        and in the place of an event you will not read (a field missing, a reference or tracking
        number that is not one of the OMS's labels) a RefusedTrackingEvent saying why; or None when
        `carrier` is not yours (404 when no plugin answers). Answer one item per event, in the
        order sent: the webhook's answer gives each item's index in your list as its `position`.

    Stops at first non-None result. The OMS marks each `delivered` shipment delivered (idempotent:
    a repeated webhook changes nothing) and stores no `in_transit` update; a refused event is
    answered under `refused` and changes nothing, and the others are applied (the carrier does not
    send them again for one bad event). Raise core.errors.InvalidRequest for a body your carrier
    would not send at all (422, nothing applied) and core.errors.TransientError when you cannot
    read it now (503: the carrier sends it again).
    """


# The sender's body refused whole: its fault, not the plugin's, so core.hook_calls.call_hook passes
# it on as raised and logs no plugin failure (`plugin raised`, ERROR) for what anyone may post.
oms_carrier_tracking_update.refusals = (InvalidRequest,)


@hookspec(firstresult=True)
def oms_carrier_return_label(
    order: Order,
    return_id: str,
    booking_key: str,
    destination: Location,
    lines: list[ShipmentLine],
    weight_grams: int,
) -> CarrierShipment | None:
    """Book a return parcel from the customer back to `destination` and return its label.

    :param order: the order being returned (its `shipping_address` is where the parcel leaves from).
    :param return_id: the OMS's id for the return (`rma_...`), the one to print: it comes from the
        return's number on its order, so a request whose booking failed and that is made again
        with other lines, or that lost that number to a concurrent request, books under the same
        `return_id` with other contents.
    :param booking_key: the key to ask the carrier idempotently under: the return's id and a hash
        of the parcel (`destination`, `lines`, `weight_grams`), so the same on every retry of the
        same parcel and a new one for other contents (core.returns.return_booking_key). Key
        idempotency on this, never on `return_id`, or the carrier answers the earlier booking's
        label, contents and weight. Added after the hook: a plugin that does not name it is
        called as before.
    :param destination: the location the units go back to: of the ones they shipped from, the one
        nearest the customer (the Return's `return_to`).
    :param lines: the order lines (and quantities) the customer sends back.
    :param weight_grams: the parcel's weight from the products' `weight_grams`.
    :return: a CarrierShipment (carrier, service, tracking number, and the label document or the
        carrier's `label_url`, as for oms_carrier_create_shipment), or None.

    Stops at first non-None result. When no plugin answers, the return is authorized without a
    label (`label_url` null) and the customer ships it back their own way. A booking no return
    uses, and an expired return's label, is cancelled under its key (oms_carrier_cancel_shipment).
    """


@hookspec
def oms_payment_methods() -> list[str] | None:
    """The payment methods this plugin handles (e.g. ["test"]).

    :return: method names, or None.

    Every plugin is called. POST /orders refuses a `payment.method` no plugin names (422
    `unknown_payment_method`), so an order never waits for a payment no one can take. A method
    has the form a client sends (1 to 32 lower-case letters, digits or `_`): the host asks each
    plugin once as it registers, and one naming another (`acme-pay`) is not loaded, reported broken.
    """


# --- Returns ----------------------------------------------------------------------------------


@hookspec(firstresult=True)
def oms_return_policy(
    order: Order, lines: list[ReturnLineInput], returned_before: dict[str, int], now: datetime
) -> ReturnPolicyDecision | None:
    """Decide a return when it is requested: allowed or not, approval, restocking fee, shipping.

    :param order: the order (its shipments carry `shipped_at` and `delivered_at`).
    :param lines: the lines asked for, each with `line_id`, `quantity`, `reason`, `reason_code`.
    :param returned_before: units of each line already on the order's earlier returns (not
        rejected or cancelled; a received one counts what it brought back), so a policy can tell
        when the whole order comes back.
    :param now: the time of the request.
    :return: a ReturnPolicyDecision, or None to let another plugin answer.

    Stops at first non-None result. `allowed=False` refuses the return with 422 and the
    decision's `code` and `message`, its details naming the decision's `field` (the request field
    judged, "lines" by default); `needs_approval` makes it `requested` (a person approves or
    rejects it) instead of `authorized`; `fee` (in the order's currency, not negative) is kept
    back from the refund; `refund_shipping` adds the order's shipping to it (once every unit the
    return asked for has arrived); `refund_shipping_with_whole_order` adds it only to the refund
    of the return whose receipt brings the order's last unit back, when every unit of the order
    arrived on returns decided so (the returns in `returned_before` may never arrive). Either way
    the order's shipping is given back once. When no plugin answers, the return is refused (422
    `return_not_allowed`).
    """


# --- Customer notifications -------------------------------------------------------------------


@hookspec
def oms_notify(notification: Notification) -> list[str] | None:
    """Send a customer notification (an order shipped, is ready for pickup, is delayed, was
    refunded, was cancelled in whole or in part, or waits for stock) by email, SMS or any other way.

    :param notification: `to` (email, name), `subject`, `body` (plain text), `kind`, `order_id`,
        `channel` and `details` (the facts a template may use: carrier, tracking_number, amount,
        currency, location_id, location_name, collect_by; a cancel's customer-facing reason, the
        new grand_total after units cancelled). It never holds a payment token or any secret. A
        `ready_for_pickup` comes again, under a new id, when the release of a hold moved its
        `collect_by` to another minute (the time held does not count against the customer).
    :return: the ways it was sent (e.g. ["email"]), or None when this plugin did not send it. An
        answer of another shape is refused, but the notification is recorded sent (every plugin ran
        to its end), never handed over again.

    Every plugin is called, from the Orders stream consumer, after the OMS has recorded the
    notification (GET /orders/{id}/notifications shows it with the ways it went out). Delivery is
    at least once: a plugin that raises (its provider down) fails no stream record; the
    notification is retried by the reconciler (5 minutes, 15 minutes, then hourly, given up a day
    after the first attempt) and every plugin is called again with the same `notification.id`, so
    a plugin dedupes by it (e.g. as the email provider's idempotency key).
    """
