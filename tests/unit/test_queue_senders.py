"""Import queue senders: who may place orders for which channels, and whose messages are import lines."""

from __future__ import annotations

import re

import pytest

from core.import_service import QueueSenders
from tests.template_iam import TEMPLATE

SPLITTER = "AROASPLITTER"


def test_the_splitter_role_is_known_by_its_unique_id_whatever_its_session():
    senders = QueueSenders.parse(SPLITTER, "")

    assert senders.is_splitter(f"{SPLITTER}:oms-ImportSplitterFunction-abc")
    assert senders.may_place(f"{SPLITTER}:any-session", "any-channel")
    assert not senders.is_splitter("AROAOTHER:oms-ImportSplitterFunction-abc")


def test_a_named_sender_places_orders_for_its_channels_only():
    senders = QueueSenders.parse(SPLITTER, "AROAERP=erp+pos, AIDAUSER=marketplace,AROAERP=b2b")

    assert senders.channels == {"AROAERP": frozenset({"erp", "pos", "b2b"}), "AIDAUSER": frozenset({"marketplace"})}
    assert senders.may_place("AROAERP:session-1", "pos") and senders.may_place("AIDAUSER", "marketplace")
    assert not senders.may_place("AROAERP:session-1", "marketplace")
    assert not senders.is_splitter("AROAERP:session-1")


def test_a_sender_given_any_channel_is_trusted_like_the_splitter_for_a_redrive():
    senders = QueueSenders.parse(SPLITTER, "AROAOPERATOR=*,AROAERP=erp")

    assert senders.writes_imports("AROAOPERATOR:alice") and senders.may_place("AROAOPERATOR:alice", "market")
    assert senders.writes_imports(f"{SPLITTER}:fn")
    assert not senders.writes_imports("AROAERP:x") and not senders.is_splitter("AROAOPERATOR:alice")


def test_a_sender_not_named_places_nothing_and_without_a_splitter_id_nobody_is_the_splitter():
    senders = QueueSenders.parse(None, "AROAERP=erp")

    assert not senders.may_place("AROASTRANGER:x", "erp")
    assert not senders.may_place("", "erp")
    assert not senders.is_splitter("")


@pytest.mark.parametrize("text", ["AROAERP", "AROAERP=", "=erp", "AROAERP:session=erp", "AROAERP=+"])
def test_a_malformed_setting_is_refused_at_start_up(text: str):
    with pytest.raises(ValueError, match="unique id"):
        QueueSenders.parse(SPLITTER, text)


ALLOWED = re.compile(TEMPLATE["Parameters"]["ImportQueueSenderChannels"]["AllowedPattern"])


@pytest.mark.parametrize("text", [
    "", "AROAERP=erp", "AROAERP=erp+pos, AIDAUSER=marketplace,AROAERP=b2b", "AROAOPERATOR=*,AROAERP=erp",
    " AROAERP = erp + pos ", "AIDAUSER=market-place_2",
])  # fmt: skip
def test_the_template_accepts_a_setting_the_worker_reads(text: str):
    assert ALLOWED.fullmatch(text)
    QueueSenders.parse(SPLITTER, text)


@pytest.mark.parametrize("text", ["AROAERP", "AROAERP=", "=erp", "AROAERP:session=erp", "AROAERP=+", "A=erp,B"])
def test_the_template_refuses_a_setting_the_worker_would_not_read(text: str):
    # A value the worker refuses fails every message (they all end in the dead-letter queue):
    # CloudFormation refuses it at deploy time instead.
    assert not ALLOWED.fullmatch(text)
    with pytest.raises(ValueError):
        QueueSenders.parse(SPLITTER, text)
