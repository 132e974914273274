"""Carrier tracking webhooks (core.tracking): the carrier's plugin reads the body, the OMS delivers
what it says was delivered through the order actions, and checks every answer the plugin gives.
On the unit tests' world, with the built-in flat-rate carrier reading the webhooks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core import hookimpl
from core.errors import Conflict, InvalidRequest, NotFound, ParcelNotConfirmed, PluginError, TransientError
from core.holds import HoldRequest, Holds
from core.jeopardy import JeopardyScan, parse_sla
from core.models import LineInput, OrderEdit
from core.services import OrderQueries
from core.status import OrderStatus, ShipmentStatus
from core.tracking import CarrierTracking, parse_shipment_reference, shipment_reference
from core.workflow_types import RefusedField, RefusedTrackingEvent, TrackingUpdate
from plugins.flat_rate_carrier import TRACKING_CARRIER, tracking_number
from plugins.testing.memory import InMemoryLateOrders
from tests.builders import NOW
from tests.unit.world import Clock, World, build_world

S = OrderStatus
SCANNED_AT = "2026-11-23T09:30:00Z"
STOCK = [("MUG", "wh-west", 3), ("CAP", "wh-east", 4)]


@pytest.fixture
def tracking(plugins) -> CarrierTracking:
    """With the built-in plugins (`plugins` of conftest), as the API has them."""
    return CarrierTracking(plugins)


def event(order_id: str, shipment_id: str, status: str = "delivered", **overrides: str) -> dict[str, str]:
    return {
        "reference": shipment_reference(order_id, shipment_id),
        "tracking_number": tracking_number(shipment_id),
        "status": status,
        "at": SCANNED_AT,
        **overrides,
    }


def post(tracking: CarrierTracking, world: World, *events: dict, carrier: str = TRACKING_CARRIER, channel=None):
    """What POST /carriers/{carrier}/tracking does, with a carrier relay's key."""
    return tracking.apply(
        carrier,
        {"events": list(events)},
        {"content-type": "application/json"},
        "",
        deliver=lambda order_id, shipment_id, at: world.actions.deliver_scanned(
            order_id, shipment_id, actor="key_carrier", channel=channel, delivered_at=at
        ),
        find=lambda order_id, shipment_id: OrderQueries(world.orders).get(order_id, channel).shipment(shipment_id),
    )


def shipped_order(world: World):
    """An order in two parcels, the west one shipped."""
    order = world.allocated(("MUG", 1), ("CAP", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, west, None, actor="key_wh")
    return world.order(order.id), west, east


def test_a_delivered_event_delivers_the_shipment_as_the_deliver_action_does(tracking, world):
    order, west, _ = shipped_order(world)

    report = post(tracking, world, event(order.id, west, description="Left with the concierge"))

    (applied,) = report.updates
    assert (applied.order_id, applied.shipment_id, applied.outcome) == (order.id, west, "delivered")
    assert applied.at == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    assert applied.description == "Left with the concierge"
    delivered = world.order(order.id)
    assert [s.status for s in delivered.shipments if s.id == west] == ["delivered"]
    entry = world.history(order.id)[-1]
    assert (entry.type, entry.actor, entry.detail) == ("shipment_delivered", "key_carrier", {"shipment_id": west})


def test_a_delivery_is_recorded_when_the_carrier_says_it_happened_not_when_its_webhook_came(tracking):
    # The webhook comes a day late (the carrier retried it): the parcel was delivered at 09:30.
    clock = [NOW]
    world = build_world(STOCK, clock=lambda: clock[0])
    order, west, _ = shipped_order(world)
    heard = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    clock[0] = heard

    post(tracking, world, event(order.id, west))

    assert world.order(order.id).shipment(west).delivered_at == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    assert world.history(order.id)[-1].at == heard  # the history says when the OMS heard it


def test_a_carriers_time_in_its_own_zone_is_kept_and_shown_in_utc(tracking):
    """API.md: times are RFC 3339 in UTC. A carrier that writes its local time (+05:30, a depot in
    India) names the same moment; the order, the webhook's answer and the events show it in UTC."""
    clock = [NOW]
    world = build_world(STOCK, clock=lambda: clock[0])
    order, west, _ = shipped_order(world)
    clock[0] = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    report = post(tracking, world, event(order.id, west, at="2026-11-23T15:00:00+05:30"))

    shown = world.order(order.id).model_dump(mode="json")
    assert [s["delivered_at"] for s in shown["shipments"] if s["id"] == west] == ["2026-11-23T09:30:00Z"]
    assert report.model_dump(mode="json")["updates"][0]["at"] == "2026-11-23T09:30:00Z"


@pytest.mark.parametrize("scanned", ["2026-11-22T11:00:00Z", "2026-11-25T09:30:00Z"])
def test_a_delivery_time_before_the_ship_or_yet_to_come_is_taken_as_when_the_webhook_came(tracking, scanned):
    clock = [NOW]
    world = build_world(STOCK, clock=lambda: clock[0])
    order, west, _ = shipped_order(world)  # shipped at NOW, 2026-11-22T12:00
    clock[0] = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    post(tracking, world, event(order.id, west, at=scanned))

    assert world.order(order.id).shipment(west).delivered_at == clock[0]


def test_the_last_delivery_delivers_the_order(tracking, world):
    order, west, east = shipped_order(world)
    world.actions.ship(order.id, east, None, actor="key_wh")

    post(tracking, world, event(order.id, west), event(order.id, east))

    assert world.order(order.id).status is S.DELIVERED


def test_a_webhook_sent_again_changes_nothing(tracking, world):
    order, west, _ = shipped_order(world)
    first = post(tracking, world, event(order.id, west))
    after_first = (world.order(order.id), world.history(order.id))

    again = post(tracking, world, event(order.id, west))

    assert again == first
    assert (world.order(order.id), world.history(order.id)) == after_first


def test_an_in_transit_event_is_reported_and_stored_nowhere(tracking, world):
    order, west, _ = shipped_order(world)
    before = (world.order(order.id), world.history(order.id))

    report = post(tracking, world, event(order.id, west, "in_transit", description="Arrived at the hub"))

    assert [u.outcome for u in report.updates] == ["not_recorded"]
    assert (world.order(order.id), world.history(order.id)) == before


def test_a_delivery_of_a_shipment_that_has_not_shipped_is_reported_not_applied_but_kept_for_its_ship(tracking, world):
    order, _, east = shipped_order(world)
    before = world.order(order.id)

    report = post(tracking, world, event(order.id, east))

    assert [u.outcome for u in report.updates] == ["not_shipped"]
    after = world.order(order.id)
    assert (after.status, after.shipment(east), after.payment) == (before.status, before.shipment(east), before.payment)
    assert after.delivery_scan(east) is not None


@pytest.mark.parametrize("status", ["delivered", "in_transit"])
def test_unknown_shipments_and_other_channels_orders_are_reported_unknown(tracking, world, status):
    """Whatever the scan: an in-transit one for a parcel that is not there is no scan not stored."""
    order, west, _ = shipped_order(world)
    before = (world.order(order.id), world.history(order.id))

    report = post(tracking, world, event("ord_" + "a" * 24, west, status), event(order.id, "shp_" + "b" * 24, status))
    other_channel = post(tracking, world, event(order.id, west, status), channel="another-shop")
    own_channel = post(tracking, world, event(order.id, west, "in_transit"), channel=order.channel)

    assert [u.outcome for u in report.updates] == ["unknown_shipment", "unknown_shipment"]
    assert [u.outcome for u in other_channel.updates] == ["unknown_shipment"]
    assert [u.outcome for u in own_channel.updates] == ["not_recorded"]
    assert (world.order(order.id), world.history(order.id)) == before


def test_each_event_is_applied_on_its_own(tracking, world):
    order, west, east = shipped_order(world)

    report = post(tracking, world, event(order.id, east), event(order.id, west, "in_transit"), event(order.id, west))

    assert [u.outcome for u in report.updates] == ["not_shipped", "not_recorded", "delivered"]


def test_a_carrier_no_plugin_answers_for_is_not_found(tracking, world):
    with pytest.raises(NotFound, match="ups"):
        post(tracking, world, carrier="ups")


def test_a_malformed_flat_rate_event_is_refused_alone_and_the_others_are_applied(tracking, world):
    order, west, east = shipped_order(world)
    world.actions.ship(order.id, east, None, actor="key_wh")
    pasted = event(order.id, east, tracking_number=tracking_number(west))  # on the wrong reference

    report = post(tracking, world, event(order.id, west), pasted, event(order.id, west))

    assert [(u.position, u.outcome) for u in report.updates] == [(0, "delivered"), (2, "delivered")]
    (refused,) = report.refused
    assert refused.position == 1
    assert refused.error.model_dump() == {
        "code": "validation_error", "message": "a tracking event's tracking number is not the one of its shipment",
        "details": [{"field": "events[1].tracking_number", "message": f"not the number of {east}"}],
    }  # fmt: skip
    after = world.order(order.id)
    assert (after.shipment(west).status, after.shipment(east).status) == ("delivered", "shipped")


def test_a_webhook_that_is_no_flat_rate_webhook_is_the_senders_error_and_changes_nothing(tracking, world):
    order, west, _ = shipped_order(world)
    before = world.order(order.id)

    with pytest.raises(InvalidRequest) as refused:
        tracking.apply(
            TRACKING_CARRIER, {"events": [event(order.id, west)], "relay": "r7"}, {}, "",
            deliver=lambda *args: world.actions.deliver(*args[:2], actor="key_carrier"), find=lambda *args: None,
        )  # fmt: skip

    assert refused.value.details == [{"field": "relay", "message": "Extra inputs are not permitted"}]
    assert world.order(order.id) == before


def test_a_conflict_while_delivering_propagates_so_the_carrier_retries(tracking, world, monkeypatch):
    order, west, _ = shipped_order(world)

    def busy(*args, **kwargs):
        raise Conflict("order kept changing", code="version_conflict")

    monkeypatch.setattr(world.actions, "deliver", busy)

    with pytest.raises(Conflict):
        post(tracking, world, event(order.id, west))


# --- What the core accepts from a tracking plugin ------------------------------------------------------


class Answers:
    """A tracking plugin for carrier "acme" answering `answer` (raising it when it is an exception)."""

    def __init__(self, answer: object):
        self.answer = answer
        self.calls: list[dict] = []

    @hookimpl(tryfirst=True)
    def oms_carrier_tracking_update(self, carrier, payload, headers, body):
        if carrier != "acme":
            return None
        self.calls.append({"payload": payload, "headers": headers, "body": body})
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def read(plugins, plugin: Answers) -> list[TrackingUpdate]:
    plugins.register(plugin, name="oms-acme")
    return CarrierTracking(plugins).read("acme", {"parcels": []}, {"acme-signature": "s1"}, '{"parcels": []}')


def an_update(**overrides) -> TrackingUpdate:
    fields = {"order_id": "ord_1", "shipment_id": "shp_1", "status": "delivered", "at": datetime.now(UTC)}
    return TrackingUpdate(**{**fields, **overrides})


def test_the_plugin_gets_the_carrier_the_parsed_and_the_raw_body_and_the_headers(plugins):
    plugin = Answers([])

    assert read(plugins, plugin) == []
    assert plugin.calls == [
        {"payload": {"parcels": []}, "headers": {"acme-signature": "s1"}, "body": '{"parcels": []}'}
    ]


def test_updates_are_returned_as_the_plugin_read_them(plugins):
    update = an_update(description="Front door")

    assert read(plugins, Answers((update,))) == [update]


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (RuntimeError("carrier API down"), "RuntimeError"),
        (an_update(), "expected a list"),
        ([{"order_id": "ord_1", "shipment_id": "shp_1", "status": "delivered"}], "expected TrackingUpdate"),
        ([TrackingUpdate.model_construct(order_id="ord_1", shipment_id="shp_1", status="lost", at=datetime.now(UTC))],
         "malformed TrackingUpdate: status"),
        ([TrackingUpdate.model_construct(order_id="ord_1", shipment_id="shp_1", status="delivered",
                                         at=datetime(2026, 1, 1))], "malformed TrackingUpdate: at"),
        ([TrackingUpdate.model_construct(order_id="ord_1", shipment_id="shp_1", status="delivered",
                                         at=SCANNED_AT)], "at is str, expected datetime"),
        ([TrackingUpdate.model_construct(order_id="ord_1", shipment_id="shp_1", status="delivered",
                                         at=datetime.now(UTC), description=0.5)], "description is a float"),
    ],
    ids=["raises", "not-a-list", "dicts", "unknown-status", "naive-time", "time-as-text", "float"],
)  # fmt: skip
def test_a_plugin_that_fails_or_answers_nonsense_is_a_plugin_error_naming_it(plugins, answer, problem):
    with pytest.raises(PluginError, match=problem) as failed:
        read(plugins, Answers(answer))

    assert "plugin oms-acme" in failed.value.message
    assert failed.value.details == [{"plugin": "oms-acme", "hook": "oms_carrier_tracking_update"}]


def test_a_description_is_kept_with_controls_and_bidi_overrides_made_visible(plugins):
    # It reaches the carrier's 200 answer and the operator reading it: refusing it would have the
    # carrier send the webhook again and again, so it is mended as a quote's description is.
    update = TrackingUpdate.model_construct(
        order_id="ord_1", shipment_id="shp_1", status="delivered", at=datetime.now(UTC),
        description="Front door\x1b[2J\u202e\nleft with neighbour",
    )  # fmt: skip

    (read_back,) = read(plugins, Answers([update]))

    assert read_back.description == "Front door\ufffd[2J\ufffd\nleft with neighbour"


def test_a_plugins_refusal_of_one_event_is_kept_in_its_place_with_its_words_made_visible(plugins):
    refusal = RefusedTrackingEvent.model_construct(
        message="bad scan\x1b[2J\u202e", details=[RefusedField.model_construct(field="parcels[0]", message="no ref")]
    )

    read_back = read(plugins, Answers([an_update(), refusal]))

    assert isinstance(read_back[1], RefusedTrackingEvent)
    assert read_back[1].message == "bad scan\ufffd[2J\ufffd"
    assert [(d.field, d.message) for d in read_back[1].details] == [("parcels[0]", "no ref")]


def test_a_malformed_refusal_of_one_event_is_the_plugins_error(plugins):
    refusal = RefusedTrackingEvent.model_construct(message="", details=[])

    with pytest.raises(PluginError, match="malformed RefusedTrackingEvent: message"):
        read(plugins, Answers([refusal]))


@pytest.mark.parametrize("error", [InvalidRequest("bad signature"), TransientError("carrier API busy")])
def test_a_plugin_may_refuse_the_body_or_ask_for_a_retry(plugins, error):
    with pytest.raises(type(error)):
        read(plugins, Answers(error))


# --- References ---------------------------------------------------------------------------------------


def test_a_reference_names_the_order_and_the_shipment_and_reads_back():
    reference = shipment_reference("ord_abc", "shp_def")

    assert reference == "ord_abc/shp_def"
    assert parse_shipment_reference(reference) == ("ord_abc", "shp_def")
    assert parse_shipment_reference(f"  {reference}\n") == ("ord_abc", "shp_def")


@pytest.mark.parametrize("reference", ["", "ord_abc", "ord_abc/", "/shp_def", "ord_abc/shp_def/x"])
def test_a_malformed_reference_reads_as_none(reference):
    assert parse_shipment_reference(reference) is None


# --- A delivered scan that outruns the ship ----------------------------------------------------


def test_a_delivered_scan_of_a_pending_parcel_is_kept_once_and_captures_nothing(tracking):
    clock = [NOW]
    world = build_world(STOCK, clock=lambda: clock[0])
    order, _, east = shipped_order(world)
    clock[0] = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    captured = list(world.spy.captured)

    first = post(tracking, world, event(order.id, east))
    kept = world.snapshot(order.id)
    again = post(tracking, world, event(order.id, east, at="2026-11-23T10:00:00Z"))

    assert [u.outcome for u in first.updates] == [u.outcome for u in again.updates] == ["not_shipped"]
    assert world.snapshot(order.id) == kept  # the second scan changes nothing: the first is kept
    after = world.order(order.id)
    assert after.shipment(east).status is ShipmentStatus.PENDING
    assert world.spy.captured == captured
    entry = world.history(order.id)[-1]
    assert (entry.type, entry.actor, entry.detail) == (
        "delivery_scan_kept",
        "key_carrier",
        {"shipment_id": east, "delivered_at": SCANNED_AT},
    )

    clock[0] = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    shipped = world.actions.ship(order.id, east, None, actor="key_wh")

    assert shipped.status is S.SHIPPED  # the west parcel is on its way still
    parcel = shipped.shipment(east)
    assert parcel.status is ShipmentStatus.DELIVERED
    assert parcel.shipped_at == parcel.delivered_at == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    assert shipped.delivery_scans == []
    assert len(world.spy.captured) == len(captured) + 1  # the location's ship captured, once


def test_a_scan_kept_for_one_parcel_does_not_deliver_another_parcel_of_the_order_that_ships(tracking, world):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    post(tracking, world, event(order.id, east))

    shipped = world.actions.ship(order.id, west, None, actor="key_wh")

    assert shipped.status is S.PARTIALLY_SHIPPED
    assert (shipped.shipment(west).status, shipped.shipment(west).delivered_at) == (ShipmentStatus.SHIPPED, None)
    assert shipped.delivery_scan(east) is not None  # kept for the east parcel's own ship
    assert world.history(order.id)[-1].type == "shipment_shipped"


def test_a_delivered_scan_a_minute_or_two_old_is_kept_at_the_carriers_time(tracking):
    # A webhook comes a little after the scan: only a time ahead of the OMS's clock is taken for now.
    clock = [datetime(2026, 11, 23, 9, 0, tzinfo=UTC)]
    world = build_world(STOCK, clock=lambda: clock[0])
    order, _, east = shipped_order(world)
    clock[0] = datetime(2026, 11, 23, 9, 32, tzinfo=UTC)

    post(tracking, world, event(order.id, east))  # scanned at 09:30

    assert world.order(order.id).delivery_scan(east).at == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize("ahead", [timedelta(minutes=1), timedelta(minutes=5), timedelta(hours=1)])
def test_a_scan_kept_for_its_ship_at_a_time_yet_to_come_is_kept_at_when_the_webhook_came(tracking, ahead):
    # A carrier's clock a little or far ahead of the OMS's: no parcel arrived after the OMS heard it had.
    clock = [datetime(2026, 11, 23, 9, 0, tzinfo=UTC)]
    world = build_world(STOCK, clock=lambda: clock[0])
    order, _, east = shipped_order(world)

    post(tracking, world, event(order.id, east, at=(clock[0] + ahead).isoformat()))

    assert world.order(order.id).delivery_scan(east).at == clock[0]


def test_a_scanned_parcel_is_neither_edited_nor_cancelled_by_a_key_that_cannot_confirm_it(tracking, world):
    order = world.allocated(("MUG", 2))
    (parcel,) = order.shipments
    post(tracking, world, event(order.id, parcel.id))
    current = world.order(order.id)
    edit = OrderEdit(lines=[LineInput(sku="MUG", quantity=1)])

    with pytest.raises(ParcelNotConfirmed) as edited:
        world.actions.edit(order.id, current.version, edit, "key_cs")
    with pytest.raises(ParcelNotConfirmed):
        world.actions.cancel(order.id, "one is enough", "key_cs", lines={"L1": 1}, confirms_parcels=False)
    with pytest.raises(ParcelNotConfirmed):
        world.actions.cancel(order.id, "changed my mind", "key_cs", confirms_parcels=False)

    assert edited.value.details == [
        {"shipment_id": parcel.id, "message": "scanned delivered by its carrier: its ship is to be confirmed"}
    ]
    assert world.order(order.id) == current


def test_a_scan_kept_for_a_parcel_booked_again_does_not_deliver_it(tracking, world):
    """A person (orders:approve) found the parcel never left and cancelled one of its units: it is
    booked again, and the old booking's scan does not deliver the new parcel of the same id."""
    order = world.allocated(("MUG", 2))
    (parcel,) = order.shipments
    post(tracking, world, event(order.id, parcel.id))
    assert world.order(order.id).delivery_scan(parcel.id) is not None

    world.actions.cancel(order.id, "one is enough", "key_ops", lines={"L1": 1}, confirms_parcels=True)
    again = world.order(order.id)
    assert [(s.id, s.lines[0].quantity) for s in again.shipments] == [(parcel.id, 1)]
    shipped = world.actions.ship(order.id, parcel.id, None, actor="key_wh")

    assert shipped.shipment(parcel.id).status is ShipmentStatus.SHIPPED
    assert shipped.delivery_scans == []


@pytest.mark.parametrize("status", ["in_transit", "delivered"])
def test_no_scan_is_kept_for_a_pickup_or_an_in_transit_scan(tracking, status):
    world = build_world([("TSHIRT", "store-sf", 5), ("CAP", "wh-east", 4)])
    pickup = world.allocated(("TSHIRT", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    order = world.allocated(("CAP", 1))
    before = [world.snapshot(o.id) for o in (pickup, order)]

    report = post(
        tracking,
        world,
        event(pickup.id, pickup.shipments[0].id, status),
        event(order.id, order.shipments[0].id, "in_transit"),
    )

    assert [u.outcome for u in report.updates] == [
        "not_shipped" if status == "delivered" else "not_recorded",
        "not_recorded",
    ]
    assert [world.snapshot(o.id) for o in (pickup, order)] == before


@pytest.mark.parametrize("status", ["delivered", "in_transit"])
def test_ids_that_are_no_oms_ids_name_no_shipment_and_are_never_looked_up(plugins, status):
    """As a batch confirmation's malformed id: a control character or a bidi override has no
    business in a database request."""
    asked: list[tuple[str, str]] = []
    updates = [
        TrackingUpdate(order_id=order_id, shipment_id=shipment_id, status=status, at=datetime.now(UTC))
        for order_id, shipment_id in [
            ("ord_\x00\x1b[2J", "shp_" + "a" * 24),
            ("ord_" + "a" * 24, "shp_\u202e" + "a" * 20),
            ("x" * 64, "shp_" + "a" * 24),
            ("ORD_" + "A" * 24, "shp_" + "a" * 24),
        ]
    ]
    plugins.register(Answers(updates), name="oms-acme")

    report = CarrierTracking(plugins).apply(
        "acme", {}, {}, "", deliver=lambda *ids: asked.append(ids[:2]), find=lambda *ids: asked.append(ids)
    )

    assert [u.outcome for u in report.updates] == ["unknown_shipment"] * 4
    assert asked == []


def test_a_hold_on_an_order_whose_parcel_was_scanned_delivered_never_expires_it(tracking):
    """A person's hold stops the location's ship; expired, the hold would cancel the order, putting
    the parcel's units back on sale and releasing the payment for goods the carrier delivered. It
    waits for that person, as a hold on a parcel to confirm does (the scan's late mark finds it)."""
    clock = Clock()
    world = build_world(STOCK, clock=clock)
    order = world.allocated(("MUG", 2))
    (parcel,) = order.shipments
    clock.advance(days=1)
    post(tracking, world, event(order.id, parcel.id))
    Holds(world.orders, clock=clock).hold(order.id, HoldRequest(reason="customer_request"), actor="key_cs")
    clock.advance(days=30)

    done = JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, clock,
        sla=parse_sla(""), hold_expiry=timedelta(days=3),
    ).run()  # fmt: skip

    assert done.expired == []
    held = world.order(order.id)
    assert (held.status, held.payment.status) == (S.ON_HOLD, "authorized")
    assert sum(world.held_for(order.id).values()) == 2 and world.spy.voided == []


def test_units_of_another_parcel_than_the_scanned_one_are_still_cancelled_by_a_storefront(tracking, world):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    post(tracking, world, event(order.id, east))
    mug = next(line.line_id for line in order.lines if line.sku == "MUG")

    cancelled = world.actions.cancel(order.id, "no mug", "key_cs", lines={mug: 1}, confirms_parcels=False)

    assert cancelled.shipment(west).status is ShipmentStatus.CANCELLED
    assert cancelled.shipment(east).status is ShipmentStatus.PENDING
    assert cancelled.delivery_scan(east) is not None
    shipped = world.actions.ship(order.id, east, None, actor="key_wh")
    assert (shipped.status, shipped.shipment(east).status) == (S.DELIVERED, ShipmentStatus.DELIVERED)
    assert shipped.payment.captured == shipped.totals.grand_total
