"""Lambda Invoke of the template's functions, answered by their in-process handlers.

moto's LambdaBackend.invoke looks a name or ARN up here first (infra/local/moto_patches/
lambda_invoke.py); anything else falls through to moto. What reaches it:

- Step Functions Lambda tasks (`"Resource": "<function ARN>"` or `arn:aws:states:::lambda:invoke`):
  moto's ASL interpreter calls Lambda Invoke through boto3, in-process;
- `lambda invoke` by any boto3 client of the stack or over `--endpoint-url`.

A handler's exception becomes what the Lambda runtime reports: `X-Amz-Function-Error: Unhandled`
and `{"errorType": <exception class name>, "errorMessage": ...}`, so a state's Retry/Catch match on
the exception's class name. Handlers run with MOTO_LOCK released (they call moto themselves).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra.local.lambdas import LocalFunction
from infra.local.moto_patches import lock

logger = logging.getLogger("infra.local.lambda")

_LOCAL_RUNTIME = str(Path(__file__).parent)


def function_name_of(name_or_arn: str) -> tuple[str, str | None]:
    """(function name, qualifier) of a name, a partial ARN (123:function:name) or a full ARN."""
    parts = name_or_arn.split(":")
    if name_or_arn.startswith("arn:") and len(parts) >= 7:
        return parts[6], parts[7] if len(parts) > 7 else None
    if len(parts) >= 3 and parts[1] == "function":
        return parts[2], parts[3] if len(parts) > 3 else None
    if len(parts) == 2:
        return parts[0], parts[1]
    return name_or_arn, None


class LambdaService:
    """The stack's functions as moto's Lambda service sees them, by name and by ARN."""

    def __init__(self, functions: Mapping[str, LocalFunction]):
        self.functions = {function.name: function for function in functions.values()}
        self._closed = False

    def lookup(self, name_or_arn: str) -> LocalFunction | None:
        name, qualifier = function_name_of(name_or_arn)
        if qualifier not in (None, "$LATEST"):
            return None  # versions and aliases are not emulated
        return self.functions.get(name)

    # --- Lifecycle ---------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Refuses new invocations (they fail with Lambda.ServiceException) and waits up to
        `timeout` for running ones, so no handler outlives the mock it talks to."""
        self._closed = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(fn.in_flight for fn in self.functions.values()):
            time.sleep(0.02)

    # --- Invoke ------------------------------------------------------------------------------
    def invoke(self, function: LocalFunction, body: Any, headers: Any, response_headers: dict[str, Any]) -> bytes:
        invocation_type = _header(headers, "X-Amz-Invocation-Type") or "RequestResponse"
        if self._closed:
            return _error(response_headers, "Lambda.ServiceException", "the local stack is stopping")
        try:
            event = json.loads(body) if body else {}
        except ValueError as error:
            return _error(response_headers, "Runtime.UnmarshalError", f"payload is not JSON: {error}")
        if invocation_type == "DryRun":
            return b""
        if invocation_type == "Event":
            thread = threading.Thread(
                target=self._run_async, args=(function, event), name=f"oms-local-async-{function.name}", daemon=True
            )
            thread.start()
            return b""
        with lock.released():
            try:
                result = function.invoke(event)
            except Exception as error:
                _log_failure(function, error)
                return _error(response_headers, type(error).__name__, str(error), error)
        try:
            payload = json.dumps(result).encode("utf-8")
        except (TypeError, ValueError) as error:
            return _error(response_headers, "Runtime.MarshalError", f"Unable to marshal response: {error}")
        response_headers["Content-Length"] = str(len(payload))
        return payload

    def _run_async(self, function: LocalFunction, event: Any) -> None:
        try:
            function.invoke(event)
        except Exception as error:
            _log_failure(function, error)


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _error(
    response_headers: dict[str, Any], error_type: str, message: str, error: BaseException | None = None
) -> bytes:
    body: dict[str, Any] = {"errorMessage": message, "errorType": error_type, "requestId": str(uuid.uuid4())}
    if error is not None:  # the handler's frames, as the Lambda runtime reports them (not the dispatch's)
        frames = [frame for frame in traceback.extract_tb(error.__traceback__) if _LOCAL_RUNTIME not in frame.filename]
        body["stackTrace"] = traceback.format_list(frames)
    payload = json.dumps(body).encode("utf-8")
    response_headers["x-amz-function-error"] = "Unhandled"
    response_headers["Content-Length"] = str(len(payload))
    return payload


def _log_failure(function: LocalFunction, error: BaseException) -> None:
    # A Step Functions Catch may expect this error (PaymentDeclined): one line, the traceback on DEBUG.
    logger.warning("%s raised %s: %s", function.name, type(error).__name__, error)
    logger.debug("%s traceback", function.name, exc_info=error)
