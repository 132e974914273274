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
    CANCELLED = "cancelled"
