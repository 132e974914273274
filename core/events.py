"""Domain events: what happened to an order, in the past tense. Each history entry is one."""

from __future__ import annotations

from enum import StrEnum


class OrderEvent(StrEnum):
    CREATED = "created"
    EDITED = "edited"
    PAYMENT_AUTHORIZED = "payment_authorized"
    PAYMENT_FAILED = "payment_failed"
    STOCK_RESERVED = "stock_reserved"
    ALLOCATED = "allocated"
    SHIPMENT_SHIPPED = "shipment_shipped"
    SHIPMENT_DELIVERED = "shipment_delivered"
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
    # A capture made for a shipment that could no longer ship (the order was cancelled meanwhile),
    # refunded at once; the order never recorded it as captured.
    PAYMENT_CAPTURE_REVERSED = "payment_capture_reversed"
    # One failed attempt at the gateway each (transient or refused); the order is unchanged.
    PAYMENT_AUTHORIZATION_FAILED = "payment_authorization_failed"
    PAYMENT_CAPTURE_FAILED = "payment_capture_failed"
    PAYMENT_VOID_FAILED = "payment_void_failed"
    PAYMENT_REFUND_FAILED = "payment_refund_failed"
