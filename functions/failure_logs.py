"""Logs a failure a function reports so that one failure is one ERROR line with one traceback."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from core.errors import PluginError


def failure_logged(logger: Logger, message: str, failure: BaseException, **extra: Any) -> None:
    """Log `message` for `failure`, with `extra`: at ERROR with its traceback, but for a plugin
    that raised. That one has its ERROR line already, `plugin raised` (core.hook_calls: the plugin's
    words and traceback, with the invocation's keys: the request's `correlation_id`, the `order_id`
    it knows), so this line names its plugin and hook at WARNING without the traceback, which would
    chain the plugin's again (PluginError.logged). A PluginError no line logged (an answer the core
    refused) names them too, on its ERROR line."""
    if isinstance(failure, PluginError):
        for detail in failure.details[:1]:
            extra.update({key: value for key, value in detail.items() if key in ("plugin", "hook")})
        if failure.logged:
            logger.warning(message, extra=extra, stacklevel=_CALLER)
            return
    logger.error(message, extra=extra, exc_info=failure, stacklevel=_CALLER)


# The line's `location` is the function that reports the failure, not this one.
_CALLER = 3
