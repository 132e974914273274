"""The local stack's process environment: whatever it changed, restore() puts back, last first."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from infra.local.process import ProcessEnvironment


def test_restore_puts_back_variables_log_levels_and_contexts_last_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMS_TEST_KEPT", "before")
    monkeypatch.delenv("OMS_TEST_NEW", raising=False)
    monkeypatch.setenv("OMS_TEST_REMOVED", "there")
    logger = logging.getLogger("oms.test.process")
    logger.setLevel(logging.INFO)
    undone: list[str] = []

    @contextmanager
    def applied(name: str) -> Iterator[str]:
        yield name
        undone.append(name)

    process = ProcessEnvironment()
    process.set_env({"OMS_TEST_KEPT": "during", "OMS_TEST_NEW": "1"}, remove=("OMS_TEST_REMOVED",))
    assert process.enter(applied("first")) == "first"
    process.set_log_level("oms.test.process", logging.CRITICAL)
    process.enter(applied("second"))
    process.set_env({"OMS_TEST_KEPT": "later"})  # a second change to one name: the first value is what comes back
    process.callback(lambda: undone.append("callback"))

    assert (os.environ["OMS_TEST_KEPT"], os.environ["OMS_TEST_NEW"]) == ("later", "1")
    assert "OMS_TEST_REMOVED" not in os.environ and logger.level == logging.CRITICAL

    process.restore()
    process.restore()  # idempotent

    assert undone == ["callback", "second", "first"]
    assert os.environ["OMS_TEST_KEPT"] == "before" and os.environ["OMS_TEST_REMOVED"] == "there"
    assert "OMS_TEST_NEW" not in os.environ
    assert logger.level == logging.INFO
