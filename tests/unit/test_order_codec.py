"""How an order's document and history entries are stored (functions/adapters/order_codec.py): zlib with
a preset dictionary its header names, every older form still read, and the outbox reading the stream's
binary entries."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.adapters import order_codec
from functions.outbox.app import _trace
from tests.unit.world import build_world

STOCK = [("TSHIRT", "wh-east", 10), ("MUG", "wh-west", 3), ("CAP", "wh-east", 4), ("PEN", "wh-west", 9)]


def test_a_dictionary_once_used_never_changes():
    # Items stored with a dictionary need exactly it to be read: add a new one, never edit one.
    digests = {number: hashlib.sha256(d).hexdigest()[:16] for number, d in order_codec.DICTIONARIES.items()}
    assert digests == {1: "0349a53d9f770719"}
    assert order_codec.CURRENT in order_codec.DICTIONARIES
    assert all(number & 0x0F != 8 for number in order_codec.DICTIONARIES)  # never mistaken for a zlib header


def test_an_order_unlike_the_dictionarys_sample_still_stores_in_half_what_zlib_alone_does():
    # Four lines from two warehouses, a customer name, another carrier's words: not the dictionary's shape.
    world = build_world(STOCK)
    order = world.allocated(("TSHIRT", 2), ("MUG", 1), ("CAP", 3), ("PEN", 5))
    document = order.stored_json().encode()
    stored = order_codec.compress(document)
    assert order_codec.decompress(stored) == document
    assert len(stored) < len(zlib.compress(document, 9)) * 0.6
    for entry in world.history(order.id):
        text = entry.model_dump_json(exclude_none=True).encode()
        assert order_codec.decompress(order_codec.compress(text)) == text
        assert len(order_codec.compress(text)) < len(zlib.compress(text, 9)) * 0.8


def test_every_stored_form_reads():
    text = b'{"id":"ord_1","status":"pending"}'
    assert order_codec.stored_json({"S": text.decode()}) == text  # before compression
    assert order_codec.stored_json({"B": zlib.compress(text)}) == text  # zlib alone, before the dictionary
    stored = order_codec.compress(text)
    assert order_codec.stored_json({"B": stored}) == text
    assert order_codec.stored_json({"B": base64.b64encode(stored).decode()}) == text  # as a stream record has it


def test_a_value_stored_with_a_dictionary_this_code_lacks_is_refused_by_name():
    newer = bytes([2]) + order_codec.compress(b'{"id":"ord_1"}')[1:]
    with pytest.raises(order_codec.UnknownDictionary, match="dictionary 02"):
        order_codec.decompress(newer)
    with pytest.raises(order_codec.UnknownDictionary):
        order_codec.decompress(b"")


def test_a_value_cut_short_is_an_error_not_a_shorter_json():
    stored = order_codec.compress(b'{"id":"ord_1","status":"pending","channel":"web"}')
    with pytest.raises(zlib.error):
        order_codec.decompress(stored[:-3])


@pytest.mark.parametrize("encode", [bytes, lambda b: base64.b64encode(b).decode()], ids=["bytes", "base64"])
def test_the_outbox_reads_the_request_id_from_a_compressed_created_entry(encode):
    created = {"at": "2026-12-01T00:00:00Z", "type": "created", "actor": "key_web", "detail": {"request_id": "req-1"}}
    typed = {"history": {"L": [{"B": encode(order_codec.compress(json.dumps(created).encode()))}]}}
    assert _trace({"channel": "web"}, typed) == ("web", "req-1")


def test_the_outbox_reads_an_entry_stored_as_json_and_survives_a_broken_one():
    created = {"type": "created", "actor": "imp_1:2"}
    assert _trace({"channel": "web"}, {"history": {"L": [{"S": json.dumps(created)}]}}) == ("web", "imp_1:2")
    assert _trace({"channel": "web"}, {"history": {"L": [{"B": b"not zlib"}]}}) == ("web", "")
    assert _trace({}, {}) == ("", "")


def test_a_support_engineer_reads_an_item_from_the_aws_cli_decoded(monkeypatch, capsys):
    # `aws dynamodb get-item --output json` shows a binary as base64; old and new forms side by side.
    from functions.adapters.order_codec import main

    entry = {"type": "created", "actor": "key_web"}
    item = {
        "id": {"S": "ord_1"},
        "doc": {"B": base64.b64encode(order_codec.compress(b'{"id":"ord_1","status":"pending"}')).decode()},
        "history": {"L": [{"S": json.dumps(entry)}, {"B": base64.b64encode(order_codec.compress(b"{}")).decode()}]},
    }
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"Item": item})))
    main()
    shown = json.loads(capsys.readouterr().out)["Item"]
    assert shown == {"id": {"S": "ord_1"}, "doc": {"id": "ord_1", "status": "pending"}, "history": [entry, {}]}


def test_a_page_of_a_long_history_reads_decoded_too(monkeypatch, capsys):
    # `aws dynamodb query` of pk ORDERHISTORY#<order id> in the Catalog table: each page's entries.
    from functions.adapters.order_codec import main

    page = {
        "pk": {"S": "ORDERHISTORY#ord_1"},
        "sk": {"S": "0000000000"},
        "entries": {"L": [{"B": base64.b64encode(order_codec.compress(b'{"type":"on_hold"}')).decode()}]},
    }
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"Items": [page]})))
    main()
    (shown,) = json.loads(capsys.readouterr().out)["Items"]
    assert shown["entries"] == [{"type": "on_hold"}]


def test_a_webhook_deliverys_body_reads_decoded_too(monkeypatch, capsys):
    # `aws dynamodb query` of pk WEBHOOK#<id> in the Catalog table: each delivery's body, the event
    # every attempt sends, compressed as an order's document is (an older record's is a string).
    from functions.adapters.order_codec import main

    event = {"id": "evt_1", "type": "order.created", "data": {"order": {"id": "ord_1"}}}
    stored = {
        "pk": {"S": "WEBHOOK#whk_1"},
        "body": {"B": base64.b64encode(order_codec.compress(json.dumps(event).encode())).decode()},
    }
    older = {"pk": {"S": "WEBHOOK#whk_1"}, "body": {"S": json.dumps(event)}}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"Items": [stored, older]})))
    main()
    assert [item["body"] for item in json.loads(capsys.readouterr().out)["Items"]] == [event, event]


def test_the_readmes_one_line_decoder_without_the_repository_reads_a_stored_value():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (expression,) = re.findall(r"`(zlib\.decompressobj\([^`]*\))`", readme)
    document = json.dumps({"id": "ord_1", "status": "pending", "lines": [{"sku": "TSHIRT", "quantity": 2}]}).encode()
    value = order_codec.compress(document)

    assert eval(expression, {"zlib": zlib, "DICTIONARIES": order_codec.DICTIONARIES, "value": value}) == document


def test_the_outbox_names_the_request_that_placed_the_order_though_later_entries_follow_it():
    # A release's or a cancel's record carries the whole history: its first entry is the created one.
    entries = [
        {"type": "created", "actor": "key_web", "detail": {"request_id": "req-1"}},
        {"type": "on_hold", "actor": "review_rules", "detail": {"request_id": "req-2"}},
        {"type": "released", "actor": "key_ops", "detail": {"request_id": "req-3"}},
    ]
    typed = {"history": {"L": [{"B": order_codec.compress(json.dumps(e).encode())} for e in entries]}}
    assert _trace({"channel": "web"}, typed) == ("web", "req-1")


def test_a_created_entry_cut_short_still_starts_the_workflow_without_its_request_id():
    # Its correlation id is for log lines: an entry that does not read must not stop the order's start.
    created = {"type": "created", "actor": "key_web", "detail": {"request_id": "req-1"}}
    cut = order_codec.compress(json.dumps(created).encode())[:-3]
    assert _trace({"channel": "web"}, {"history": {"L": [{"B": cut}]}}) == ("web", "")


# JSON as orders hold it: names, addresses and notes in any script, amounts as strings, nesting.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(JSON_VALUES)
def test_every_stored_form_of_any_document_reads_back_to_the_same_json(value):
    """A customer's name in Cyrillic, a note with an emoji, a field the dictionary never saw: what
    was written reads back byte for byte, compressed (as a client or a stream record has it), as
    zlib alone, or as the JSON string stored before compression."""
    text = json.dumps(value, ensure_ascii=False).encode()
    stored = order_codec.compress(text)
    assert order_codec.decompress(stored) == text
    assert order_codec.stored_json({"B": stored}) == text
    assert order_codec.stored_json({"B": base64.b64encode(stored).decode()}) == text
    assert order_codec.stored_json({"B": zlib.compress(text)}) == text
    assert order_codec.stored_json({"S": text.decode()}) == text
