"""Every line the functions write has its card numbers masked (functions/masked_logs.py), and the
lines that hold none come out exactly as powertools writes them."""

from __future__ import annotations

import ast
import functools
import io
import json
import logging
import sys
from decimal import Decimal
from pathlib import Path

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from core.card_numbers import MASK, contains_card_number
from functions.masked_logs import CardMaskingFormatter

ROOT = Path(__file__).resolve().parents[2]
CARD = "4111 1111 1111 1111"


@functools.cache
def _every_call() -> tuple[tuple[Path, str | None, ast.Call], ...]:
    """(file, name called, call) of every call in functions/, parsed once per test process: four
    lookups of _calls read it (the source does not change while the tests run)."""
    found = []
    for path in sorted((ROOT / "functions").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                found.append((path.relative_to(ROOT), called, node))
    return tuple(found)


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    return [(path, node) for path, called, node in _every_call() if called == name]


def test_every_functions_logger_is_built_by_the_masking_factory_or_is_a_child_of_one():
    # A child writes through its service's handler; any other Logger() could be the first of its
    # service in a process, and its formatter the one every line of the function goes through.
    unmasked = [
        f"{path}:{call.lineno}"
        for path, call in _calls("Logger")
        if str(path) != "functions/masked_logs.py"
        and not any(k.arg == "child" and getattr(k.value, "value", None) is True for k in call.keywords)
    ]
    assert unmasked == []
    assert len(_calls("function_logger")) >= 13  # each function's module, the bootstrap's copy, the authorizer


def test_every_batch_goes_through_batch_response():
    # Its BatchFailed masks the card numbers in the message a batch failed whole ends in.
    assert [str(path) for path, _ in _calls("process_partial_response")] == ["functions/stream_batches.py"]
    assert len(_calls("batch_response")) == 6  # every stream and queue consumer


def test_the_core_and_functions_loggers_write_through_the_masking_formatter():
    import functions.bootstrap  # noqa: F401  (gives "core" and "functions" the service's handler)

    for name in ("core", "functions"):
        # pytest's own capture handlers (caplog's, which a test before may leave on them) aside.
        handlers = [h for h in logging.getLogger(name).handlers if not type(h).__module__.startswith("_pytest")]
        assert handlers and all(isinstance(h.formatter, CardMaskingFormatter) for h in handlers), name


def record(message: str, *args: object, exc_info: object = None, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("core.workflow", logging.INFO, "workflow.py", 10, message, args, exc_info)
    made.created, made.msecs = 1_765_000_000.123, 123.0
    made.__dict__.update(extra)
    return made


# The values a normal order's lines carry: none is a card number, and none may be masked.
ORDINARY = {
    "order_id": "ord_kz5wpvn5t25my2wrcpwjmhpn",
    "shipment_id": "shp_aaaaaaaaaaaaaaaaaaaaaaaa",
    "request_id": "c6af9ac6-7b61-11e6-9a41-93e812345678",
    "correlation_id": "1-67891233-abcdef012345678912345678",
    "external_id": "web-100045",
    "amount": Decimal("1234.56"),
    "total": "99999.99",
    "at": "2026-12-06T07:05:02.123456+00:00",
    "epoch_ms": 1765004702123,
    "usps": "9400 1000 0000 0000 0000 00",
    "usps_grouped": "9205 5000 1234 5678 9012 34",
    "ups": "1Z999AA10123456784",
    "fedex": "123456789012",
    "fedex_ground": "961234567891234567890",
    "oms_tracking": "OMS4111111111111",
    "ean": "4006381333931",
    "phone": "+1 415 555 0100",
    "sku": "TSHIRT-BLK-M",
}


def test_an_ordinary_line_is_written_exactly_as_powertools_writes_it():
    plain = LambdaPowertoolsFormatter(service="oms", sampling_rate=None)
    masking = CardMaskingFormatter(service="oms", sampling_rate=None)
    line = record("order shipped %s", "ord_kz5wpvn5t25my2wrcpwjmhpn", **ORDINARY)

    assert masking.format(line) == plain.format(line)
    assert MASK not in masking.format(line)


def test_a_card_number_anywhere_in_a_line_is_masked_and_the_line_stays_json():
    class Shown:
        def __str__(self) -> str:
            return f"object holding {CARD}"

    try:
        try:
            raise ValueError(f"gateway said: card {CARD} declined")
        except ValueError as cause:
            raise RuntimeError("plugin failed") from cause
    except RuntimeError:
        exc_info = sys.exc_info()
    line = record(
        "refused %s",
        CARD,
        exc_info=exc_info,
        as_int=4111111111111111,
        as_float=4111111111111111.0,
        nested={"cards": [CARD, {"4111-1111-1111-1111": 1}]},
        shown=Shown(),
        **ORDINARY,
    )

    text = CardMaskingFormatter(service="oms").format(line)

    assert not contains_card_number(text) and "4111111111111111" not in text.replace(" ", "").replace("-", "")
    shown = json.loads(text)  # still one JSON object
    assert shown["message"] == f"refused {MASK}"
    assert (shown["as_int"], shown["as_float"], shown["shown"]) == (MASK, f"{MASK}.0", f"object holding {MASK}")
    assert shown["nested"] == {"cards": [MASK, {MASK: 1}]}
    assert f"ValueError: gateway said: card {MASK} declined" in shown["exception"]
    assert {key: shown[key] for key in ORDINARY} == json.loads(json.dumps(ORDINARY, default=str))


def test_a_function_logger_writes_masked_lines_through_its_own_handler():
    from functions.masked_logs import function_logger

    stream = io.StringIO()
    logger = function_logger(service="oms-masked-logs-test")
    logger.registered_handler.stream = stream

    logger.info(f"card {CARD} seen", extra={"order_id": ORDINARY["order_id"]})

    shown = json.loads(stream.getvalue())
    assert (shown["message"], shown["order_id"], shown["service"]) == (
        f"card {MASK} seen",
        ORDINARY["order_id"],
        "oms-masked-logs-test",
    )


def test_a_function_logger_writes_what_a_default_logger_writes():
    from functions.masked_logs import function_logger

    service = "oms-masked-logs-default"
    masked, plain = function_logger(service=service), Logger(service=f"{service}-plain")
    line = record("order placed", **ORDINARY)
    masked_line = json.loads(masked.registered_formatter.format(line))
    plain_line = json.loads(plain.registered_formatter.format(line))

    assert masked_line | {"service": service} == plain_line | {"service": service}
