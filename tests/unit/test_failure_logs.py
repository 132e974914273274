"""A failure a function reports is one ERROR line with one traceback (functions/failure_logs.py):
a plugin that raised already has its ERROR line (`plugin raised`), so the function's names it at WARNING."""

from __future__ import annotations

import logging

import pytest
from aws_lambda_powertools import Logger

from core import hookimpl
from core.errors import PluginError
from core.hook_calls import call_hook
from core.plugin_manager import build_plugin_manager
from functions.failure_logs import failure_logged
from tests.unit.test_hook_calls import HOOK_ARGUMENTS

logger = Logger(service="oms-failure-logs", child=True)


def failure_of(plugin: object) -> PluginError:
    plugins = build_plugin_manager()
    plugins.register(plugin, name="pricing")
    with pytest.raises(PluginError) as failed:
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])
    return failed.value


class Raises:
    @hookimpl
    def oms_unit_price(self):
        raise LookupError("price service has no MUG")


class AnswersText:
    @hookimpl
    def oms_unit_price(self):
        return "1.00"


def reported(caplog: pytest.LogCaptureFixture, failure: BaseException) -> list[logging.LogRecord]:
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    failure_logged(logger, "order not placed", failure, order_id="ord_1")
    return [r for r in caplog.records if r.getMessage() == "order not placed"]


def test_a_plugin_that_raised_is_named_at_warning_without_the_traceback_its_own_line_holds(caplog):
    failure = failure_of(Raises())
    (raised,) = [r for r in caplog.records if r.getMessage() == "plugin raised"]
    assert (raised.levelname, raised.exc_info[1]) == ("ERROR", failure.__cause__)

    (line,) = reported(caplog, failure)

    assert (line.levelname, line.exc_info) == ("WARNING", None)
    assert (line.plugin, line.hook, line.order_id) == ("pricing", "oms_unit_price", "ord_1")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_an_answer_the_core_refused_is_its_one_error_line_naming_the_plugin_with_the_traceback(caplog):
    failure = failure_of(AnswersText())
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

    (line,) = reported(caplog, failure)

    assert (line.levelname, line.exc_info[1]) == ("ERROR", failure)
    assert (line.plugin, line.hook, line.order_id) == ("pricing", "oms_unit_price", "ord_1")


def test_any_other_failure_is_an_error_line_with_its_traceback(caplog):
    try:
        raise KeyError("no merchant account")
    except KeyError as error:
        failure = error

    (line,) = reported(caplog, failure)

    assert (line.levelname, line.exc_info[1]) == ("ERROR", failure)
    assert not hasattr(line, "plugin")
