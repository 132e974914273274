"""Domain events: what happened to an order, in the past tense. Each history entry is one."""

from __future__ import annotations

from enum import StrEnum


class OrderEvent(StrEnum):
    CREATED = "created"
    EDITED = "edited"
    PAYMENT_AUTHORIZED = "payment_authorized"
    PAYMENT_FAILED = "payment_failed"
    STOCK_RESERVED = "stock_reserved"
    # Authorized but short of stock for backorderable products: waits for units to arrive.
    BACKORDERED = "backordered"
    # A backordered order the sourcing rules in force leave nowhere to take more units (the one
    # location it holds units at excluded under max_shipments, its pickup store excluded) goes back
    # to `authorized` to be sourced under them.
    SOURCED_AGAIN = "sourced_again"
    ALLOCATED = "allocated"
    SHIPMENT_SHIPPED = "shipment_shipped"
    SHIPMENT_DELIVERED = "shipment_delivered"
    # A shipped parcel whose ship named no tracking number (it kept its booking's) took the one its
    # location named later, once (Order.set_tracking_number).
    SHIPMENT_TRACKING_NUMBER_SET = "shipment_tracking_number_set"
    # Such a parcel's number named by a later ship as it is (its label's): confirmed, the order
    # unchanged (no new version); it is not changed after that.
    SHIPMENT_TRACKING_NUMBER_CONFIRMED = "shipment_tracking_number_confirmed"
    # Store and warehouse execution: a location refuses a pending shipment (the order is sourced
    # again without it); a pickup is readied, and cancelled when nobody collects it in time.
    SHIPMENT_REJECTED = "shipment_rejected"
    SHIPMENT_READY_FOR_PICKUP = "shipment_ready_for_pickup"
    PICKUP_EXPIRED = "pickup_expired"
    CANCELLED = "cancelled"
    PAYMENT_VOIDED = "payment_voided"
    PAYMENT_REFUNDED = "payment_refunded"
    # Put on hold (by the workflow after an infrastructure failure, or for review) and released.
    ON_HOLD = "on_hold"
    RELEASED = "released"
    # Past the deadline for its current status (OMS_SLA), found by the jeopardy scan.
    JEOPARDY = "jeopardy"
    # That mark gone with the order still in its status: the deadline lengthened since (OMS_SLA
    # deployed anew), the jeopardy scan found it no longer late (Order.clear_jeopardy).
    JEOPARDY_CLEARED = "jeopardy_cleared"
    # A capture made for a shipment that could no longer ship (the order was cancelled meanwhile),
    # refunded at once; the order never recorded it as captured.
    PAYMENT_CAPTURE_REVERSED = "payment_capture_reversed"
    # A shipment's capture requested (Order.request_capture: no entry of its own) and not recorded
    # yet, taken back from its ship before the order changes under it (refunded if it was made:
    # payment_capture_reversed); and one the gateway refused when asked again, so never made.
    CAPTURE_WITHDRAWN = "capture_withdrawn"
    CAPTURE_NOT_MADE = "capture_not_made"
    # One failed attempt at the gateway each (transient, refused or no_plugin); the order is unchanged.
    PAYMENT_AUTHORIZATION_FAILED = "payment_authorization_failed"
    PAYMENT_CAPTURE_FAILED = "payment_capture_failed"
    PAYMENT_VOID_FAILED = "payment_void_failed"
    PAYMENT_REFUND_FAILED = "payment_refund_failed"
    # A refund written pending before the gateway is asked (what it takes is held), and a refund
    # the gateway refused, closed `failed` (never counted; the attempts are payment_refund_failed).
    REFUND_REQUESTED = "refund_requested"
    REFUND_FAILED = "refund_failed"
    # Units of an allocated or partly shipped order cancelled before they shipped.
    UNITS_CANCELLED = "units_cancelled"
    # A pending parcel those units left was booked again: its new label shows what it now holds.
    SHIPMENT_RELABELLED = "shipment_relabelled"
    # Booking it again failed (the carrier or the label store): the cancel stands, the parcel keeps
    # its old label until the next cancel of units or ship of the order, or the reconciler's next
    # pass, books it.
    LABEL_BOOKING_FAILED = "label_booking_failed"
    # A held or edited order could not give back the stock it no longer needs (the inventory
    # unavailable): the hold or the edit stands, and the order's sourcing (for a held order, once
    # released) or its cancel gives it back.
    SURPLUS_NOT_GIVEN_BACK = "surplus_not_given_back"
    # The refund of what was captured beyond an order's new total (units cancelled after their share
    # was captured) was refused OVER_CAPTURE_REFUSALS times in a row for the same amount: nothing asks
    # it again, and a person gives it back (core.refund_service, alarm OverCapturesNotRefundedAlarm).
    OVER_CAPTURE_NOT_REFUNDED = "over_capture_not_refunded"
    # A carrier reported delivered a parcel not recorded shipped (its ship died after asking for its
    # capture), and the ship the report asked was refused its capture (or the renewal of the
    # authorization it is asked on): the parcel left, its share is not captured, and the order stays
    # with it pending; a person acts on it (DeliveriesNotRecordedAlarm).
    DELIVERY_NOT_RECORDED = "delivery_not_recorded"
    # A carrier scanned a pending parcel delivered before anyone confirmed its ship: the scan is
    # kept (Order.keep_delivery_scan), nothing captured; the ship that confirms it delivers it then.
    DELIVERY_SCAN_KEPT = "delivery_scan_kept"
    # A carrier booking no parcel will use (the order cancelled, its parcel gone or booked again)
    # was cancelled with its carrier; or never will be (the carrier refused, or no plugin cancels
    # its bookings): the detail says why.
    CARRIER_BOOKING_CANCELLED = "carrier_booking_cancelled"
    CARRIER_BOOKING_NOT_CANCELLED = "carrier_booking_not_cancelled"
    # Returns (the return's own record is in the Returns table; the order's history tells its story).
    RETURN_REQUESTED = "return_requested"
    RETURN_AUTHORIZED = "return_authorized"
    RETURN_REJECTED = "return_rejected"
    RETURN_RECEIVED = "return_received"
    # Requested or authorized and never received within OMS_RETURN_EXPIRY_DAYS (the jeopardy scan):
    # its units may be returned again.
    RETURN_CANCELLED = "return_cancelled"
    # The returns workflow stopped after its retries (the return stays received; see its detail).
    RETURN_STUCK = "return_stuck"
    # A return's exchange: its replacement order was placed (on the original order's history).
    EXCHANGE_PLACED = "exchange_placed"
    # Its replacement can never be placed (no stock for a product that may not wait, no price, no
    # shipping, its payment method or pickup store gone, its external_id taken): the return is refunded instead
    # (on the original order's history, with the reason).
    EXCHANGE_NOT_PLACED = "exchange_not_placed"
    # A capture with no shipment: the rest of a total that cancelled units left higher than what
    # the shipments captured (a volume discount lost, say).
    PAYMENT_CAPTURED = "payment_captured"
