"""The transition table is the one place statuses are related."""

import itertools

from core.status import EDITABLE, TERMINAL, TRANSITIONS, OrderStatus, can_transition


def test_every_status_has_a_row():
    assert set(TRANSITIONS) == set(OrderStatus)


def test_terminal_statuses_lead_nowhere():
    assert {OrderStatus.CANCELLED, OrderStatus.PAYMENT_FAILED, OrderStatus.RETURNED} == TERMINAL


def test_main_path_is_allowed_in_order():
    path = ["pending", "authorized", "allocated", "partially_shipped", "shipped", "delivered"]
    for current, target in itertools.pairwise(path):
        assert can_transition(OrderStatus(current), OrderStatus(target))


def test_nothing_goes_back_to_pending_once_paid():
    assert not any(OrderStatus.PENDING in TRANSITIONS[s] for s in OrderStatus if s != OrderStatus.ON_HOLD)


def test_cancel_is_refused_once_anything_shipped():
    for status in (OrderStatus.PARTIALLY_SHIPPED, OrderStatus.SHIPPED, OrderStatus.DELIVERED):
        assert not can_transition(status, OrderStatus.CANCELLED)


def test_orders_are_editable_only_before_allocation():
    assert OrderStatus.ALLOCATED not in EDITABLE
    assert OrderStatus.PENDING in EDITABLE
