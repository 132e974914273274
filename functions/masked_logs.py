"""The functions' Logger: every line it writes has its card numbers masked, whatever text carries them.

Text from outside reaches log lines by many ways besides the ones that mask it themselves (a plugin's
words, an import line's error): a plugin's exception and its traceback (in the line `plugin raised`,
or chained under the error a function logs), a client library's error echoing a value, pydantic's
echoing input. Masking the line as it is written covers them all, and the core's own loggers too
(functions/bootstrap.py gives them this handler). Every function builds its Logger here;
tests/unit/test_masked_logs.py holds them to it.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from core.card_numbers import contains_card_number, mask_card_numbers


class CardMaskingFormatter(LambdaPowertoolsFormatter):
    """powertools' JSON line with every card number in it replaced by "[card number]": in the
    message, the keys and values added to it, the exception and the stack trace. A line that holds
    none (nearly all) is written as powertools writes it, after one scan."""

    def serialize(self, log: Any) -> str:
        line = super().serialize(log)
        if not contains_card_number(line):
            return line
        # Masked value by value, not in the line's text: a card written as a JSON number replaced
        # there would leave the line no JSON (`"amount":[card number]`).
        return super().serialize(_masked(json.loads(line)))


def _masked(value: Any) -> Any:
    """A JSON value (as json.loads reads it) with the card numbers in its strings, keys and
    numbers masked; a number that is or holds one becomes the masked text it is written as."""
    if isinstance(value, str):
        return mask_card_numbers(value)
    if isinstance(value, dict):
        return {mask_card_numbers(key): _masked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    if value is None or isinstance(value, bool):
        return value
    written = json.dumps(value)
    return mask_card_numbers(written) if contains_card_number(written) else value


def function_logger(service: str | None = None) -> Logger:
    """A function's Logger (its service's, POWERTOOLS_SERVICE_NAME unless `service` is given),
    writing through CardMaskingFormatter. The first one a process builds for a service sets up the
    handler every later one (and every `Logger(child=True)`) writes through."""
    return Logger(service=service, logger_formatter=CardMaskingFormatter())
